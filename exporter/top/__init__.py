"""`podsnoop top`: a live per-pod view of any podsnoop's /metrics, like top(1).

    podsnoop top [--url URL] [--interval S] [--once] [--sort COLUMN] [--namespace NS]

Scrapes /metrics every --interval seconds and shows, per pod, the rates between the last two
scrapes (exporter/top/rates.py). Keys while it runs: < and > move the sort column, r
reverses it, q quits. --once prints one table (two scrapes --interval apart) and exits;
without a terminal the output has no escape codes. An unreachable exporter or a bad URL is
one `podsnoop top: error:` line and exit code 1.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .rates import Scrape, filter_namespaces, parse, pod_rates, sort_rows
from .view import COLUMNS, SORT_KEYS, WIDE_MIN_WIDTH, table

DEFAULT_URL = "http://127.0.0.1:9435/metrics"
PROG = "podsnoop top"


class ScrapeError(Exception):
    pass


def metrics_url(url: str) -> str:
    """http://host:port (no path) means its /metrics."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ScrapeError(f"{url!r} is not an http(s) URL (example: {DEFAULT_URL})")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/metrics")
    return urllib.parse.urlunsplit(parts)


def scrape(url: str, timeout: float = 10.0) -> Scrape:
    t = time.monotonic()
    req = urllib.request.Request(url, headers={"Accept": "text/plain; version=0.0.4"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as e:
        raise ScrapeError(f"cannot read {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise ScrapeError(f"cannot read {url}: {e.reason}") from None
    except (OSError, ValueError) as e:
        raise ScrapeError(f"cannot read {url}: {e}") from None
    try:
        return parse(text, t)
    except (ValueError, KeyError, IndexError) as e:
        raise ScrapeError(f"{url} did not answer with Prometheus metrics: {e}") from None


def positive_seconds(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"{value!r} is outside (0, 3600] seconds")
    return v


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cols = "\n".join(f"  {c.key:<17} {c.header:<13} {c.meaning}" for c in COLUMNS)
    ap = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A live per-pod view of a podsnoop exporter's /metrics: rates between "
                    "two scrapes.",
        epilog=f"columns (--sort KEY):\n{cols}\n\nkeys: < > move the sort column, "
               "r reverses it, q quits")
    ap.add_argument("--url", default=os.environ.get("PODSNOOP_TOP_URL", DEFAULT_URL),
                    help=f"the exporter's /metrics (default {DEFAULT_URL}; env PODSNOOP_TOP_URL)")
    ap.add_argument("--interval", type=positive_seconds, default=2.0,
                    help="seconds between scrapes (default 2)")
    ap.add_argument("--once", action="store_true",
                    help="print one table (two scrapes --interval apart) and exit")
    ap.add_argument("--sort", choices=SORT_KEYS, default="tx_bytes", metavar="COLUMN",
                    help="column to sort by (default tx_bytes; see below)")
    ap.add_argument("--reverse", action="store_true", help="reverse the sort order")
    ap.add_argument("--namespace", action="append", metavar="NS",
                    help="show only pods of this namespace (repeatable)")
    ap.add_argument("--layout", choices=("auto", "wide", "narrow"), default="auto",
                    help="wide: a column per figure; narrow: two figures per cell, fits 80 "
                         f"columns; auto: wide on terminals of {WIDE_MIN_WIDTH}+ columns and "
                         "when not printing to a terminal")
    return ap.parse_args(argv)


class View:
    def __init__(self, args: argparse.Namespace, console: Console, footer=None):
        """footer: a callable returning a renderable shown under the table (or None)."""
        self.args = args
        self.footer = footer
        self.console = console
        self.sort = args.sort
        self.reverse = args.reverse
        self.rows = None
        self.seconds = 0.0
        self.status = "waiting for the second scrape..."

    def narrow(self) -> bool:
        if self.args.layout != "auto":
            return self.args.layout == "narrow"
        return self.console.is_terminal and self.console.width < WIDE_MIN_WIDTH

    def update(self, a: Scrape, b: Scrape) -> None:
        rows, self.seconds = pod_rates(a, b)
        self.rows = filter_namespaces(rows, self.args.namespace)
        self.status = ""

    def header(self, live: bool) -> Text:
        ns = ",".join(self.args.namespace) if self.args.namespace else "all"
        line = (f"podsnoop top  {self.args.url}  interval {self.seconds:.3f} s  "
                f"pods {len(self.rows or [])}\nnamespace {ns}  sort {self.sort}"
                f"{' (reversed)' if self.reverse else ''}")
        if live:
            line += "  keys: < > sort, r reverse, q quit"
        text = Text(line)
        if self.status:
            text.append("\n" + self.status, style="bold red" if self.rows is not None else "")
        return text

    def render(self, live: bool = True):
        parts = [self.header(live)]
        if self.rows is not None:
            rows = sort_rows(self.rows, self.sort, self.reverse)
            parts.append(table(rows, self.sort, self.reverse, self.narrow()))
        if self.footer is not None and (extra := self.footer()) is not None:
            parts.append(extra)
        return Group(*parts)

    def key(self, ch: str) -> bool:
        """Handle a key; False to quit."""
        i = SORT_KEYS.index(self.sort)
        if ch in ("q", "Q", "\x03"):
            return False
        if ch in ("<", ","):
            self.sort = SORT_KEYS[(i - 1) % len(SORT_KEYS)]
        elif ch in (">", "."):
            self.sort = SORT_KEYS[(i + 1) % len(SORT_KEYS)]
        elif ch in ("r", "R"):
            self.reverse = not self.reverse
        return True


@contextlib.contextmanager
def cbreak_stdin():
    """Single key presses from the terminal without echo; yields None without a terminal."""
    if not sys.stdin.isatty():
        yield None
        return
    import termios
    import tty
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_key(fd: int | None, timeout: float) -> str | None:
    if timeout <= 0:
        return None
    if fd is None:
        time.sleep(timeout)
        return None
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 1).decode(errors="replace") if ready else None


def run_once(args, console: Console) -> int:
    view = View(args, console)
    a = scrape(args.url)
    time.sleep(max(0.0, a.t + args.interval - time.monotonic()))
    view.update(a, scrape(args.url))
    console.print(view.render(live=False))
    return 0


def run_live(args, console: Console, footer=None, deadline: float | None = None) -> int:
    """Until q, Ctrl-C or `deadline` (time.monotonic()); `footer` as in View."""
    view = View(args, console, footer)
    prev = scrape(args.url)   # the first scrape must work: a wrong URL ends here

    def over() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    if not console.is_terminal:   # a pipe or a file: one table per interval, no escapes
        next_at = prev.t + args.interval
        while not over():
            time.sleep(max(0.0, next_at - time.monotonic()))
            try:
                cur = scrape(args.url)
            except ScrapeError as e:   # the exporter restarting: say so, try again
                print(f"{PROG}: {e} (retrying)", file=sys.stderr, flush=True)
                next_at = time.monotonic() + args.interval
                continue
            next_at = cur.t + args.interval
            view.update(prev, cur)
            prev = cur
            console.print(view.render(live=False))
            console.print()
        return 0
    next_at = prev.t + args.interval
    with cbreak_stdin() as fd, Live(view.render(), console=console, screen=True,
                                     auto_refresh=False) as live:
        while not over():
            wait = next_at - time.monotonic()
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            ch = wait_key(fd, wait)
            if ch is not None:
                if not view.key(ch):
                    return 0
                live.update(view.render(), refresh=True)
                continue
            if time.monotonic() < next_at:
                continue
            try:
                cur = scrape(args.url)
            except ScrapeError as e:   # keep showing the last figures, try again later
                view.status = f"{e} (retrying)"
                next_at = time.monotonic() + args.interval
                live.update(view.render(), refresh=True)
                continue
            view.update(prev, cur)
            prev, next_at = cur, cur.t + args.interval
            live.update(view.render(), refresh=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        args.url = metrics_url(args.url)
        console = Console(highlight=False, soft_wrap=False,
                          width=None if sys.stdout.isatty() or args.layout == "narrow"
                          else 400)
        return run_once(args, console) if args.once else run_live(args, console)
    except ScrapeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # podsnoop top | head
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        return 0
