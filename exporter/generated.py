"""Write generated files, or with --check say which committed ones are stale.

Shared by the generators of dashboards/ and alerts/: the committed output must always be
what the generator makes (the tests run --check).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


def write_or_check(outputs: Callable[[], dict[str, str]], description: str,
                   argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if a committed file differs")
    args = ap.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if old == text:
            continue
        stale.append(path)
        if not args.check:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
    for path in stale:
        print(("stale: " if args.check else "wrote ") + os.path.relpath(path), file=sys.stderr)
    return 1 if args.check and stale else 0
