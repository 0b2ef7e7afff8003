#!/usr/bin/env bash
# The whole test suite: real kernel, real eBPF, real Prometheus. Run via ./dev test.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
exec "$here/.venv/bin/python" -m pytest "$@"
