"""The `podsnoop` command: parse flags, run, and turn known failures into one clear line."""
from __future__ import annotations

import asyncio
import logging
import sys

from . import config
from .errors import PodsnoopError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["top"]:  # `podsnoop top ...`: the live per-pod view (exporter/top/)
        from .top import main as top_main
        return top_main(argv[1:])
    cfg = config.parse(argv)
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .memory import limit_malloc_arenas
    limit_malloc_arenas()  # before the first thread
    try:
        from . import app  # imports pyroute2/aiohttp; kept after flag parsing for fast --help
        return asyncio.run(app.run(cfg))
    except PodsnoopError as e:
        print(f"podsnoop: error: {e.message}", file=sys.stderr)
        if e.fix:
            print(f"podsnoop: fix: {e.fix}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
