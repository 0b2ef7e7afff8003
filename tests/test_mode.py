"""Mode and identity: what sidecar mode learns from the downward API, and its errors."""
from __future__ import annotations

import pytest

from exporter.errors import PodsnoopError
from exporter.mode import detect_mode, parse_labels_file, pod_identity
from test_cli import assert_clean_failure, podsnoop

ENV = ("POD_UID", "POD_NAME", "POD_NAMESPACE", "NODE_NAME")


@pytest.fixture
def no_downward_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_labels_file_is_parsed_with_quotes_and_escapes():
    text = 'app.kubernetes.io/name="checkout"\nteam="pay\\"ments"\nempty=""\n'
    assert parse_labels_file(text) == {"app.kubernetes.io/name": "checkout",
                                       "team": 'pay"ments', "empty": ""}


def test_identity_from_downward_volume_files_and_env_wins(tmp_path, no_downward_env,
                                                          monkeypatch):
    (tmp_path / "uid").write_text("ABC-123\n")
    (tmp_path / "name").write_text("cart-1")
    (tmp_path / "namespace").write_text("shop")
    (tmp_path / "labels").write_text('app="cart"\n')
    ident = pod_identity(str(tmp_path))
    assert (ident.uid, ident.namespace, ident.name, ident.labels) == \
        ("abc-123", "shop", "cart-1", {"app": "cart"})
    monkeypatch.setenv("POD_NAME", "cart-2")
    assert pod_identity(str(tmp_path)).name == "cart-2"


def test_identity_without_uid_is_a_clear_error(tmp_path, no_downward_env):
    with pytest.raises(PodsnoopError) as e:
        pod_identity(str(tmp_path))
    assert "POD_UID" in e.value.message and "downward API" in e.value.fix


def test_detection_without_a_visible_host_init_follows_pod_uid(no_downward_env, monkeypatch):
    import exporter.mode as mode
    monkeypatch.setattr(mode, "_ns_ino", lambda pid, ns: None if pid == "1" else 7)
    assert detect_mode()[0] == "node"
    monkeypatch.setenv("POD_UID", "abc")
    assert detect_mode()[0] == "sidecar"


def test_detection_in_the_host_pid_namespace_compares_network_namespaces(monkeypatch):
    import exporter.mode as mode
    ns = {("self", "pid"): mode.INIT_PID_NS_INO, ("self", "net"): 10, ("1", "net"): 10}
    monkeypatch.setattr(mode, "_ns_ino", lambda pid, kind: ns[(pid, kind)])
    monkeypatch.setenv("POD_UID", "abc")  # the namespaces decide, not the env
    assert detect_mode()[0] == "node"
    ns[("self", "net")] = 11
    assert detect_mode()[0] == "sidecar"


def test_sidecar_mode_without_identity_exits_cleanly(tmp_path):
    env = {name: "" for name in ENV}
    r = podsnoop("--mode", "sidecar", "--pod-info-dir", str(tmp_path), "--kube", "off",
                 "--listen", "127.0.0.1:0", env=env)
    assert_clean_failure(r, 1, "podsnoop: error: sidecar mode needs its pod's UID",
                         "podsnoop: fix:")


def test_bad_mode_is_a_usage_error():
    assert_clean_failure(podsnoop("--mode", "pod"), 2, "--mode")
    assert_clean_failure(podsnoop(env={"PODSNOOP_MODE": "pod"}), 2, "PODSNOOP_MODE")
