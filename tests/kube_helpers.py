"""What the watcher tests (test_kube.py, test_peerwatch.py) share: the project's test API
server as a fixture, and polling a condition that a watcher thread makes true."""
from __future__ import annotations

import time

import pytest

from exporter.testapiserver import KubeApiServer


def wait_for(pred, timeout: float = 2.0) -> bool:
    """True as soon as pred() is; pred()'s last answer after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return bool(pred())


@pytest.fixture
def api():
    """A test API server with bookmarks every 0.2 s, stopped afterwards."""
    with KubeApiServer(bookmark_interval=0.2) as server:
        yield server
