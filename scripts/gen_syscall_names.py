#!/usr/bin/env python3
"""Generate exporter/syscall_names.py from the Debian kernel headers in /usr/src.

Why generated: syscall numbers differ per architecture and a hand-typed table drifts. The
sources are the kernel's own headers, installed by ./dev setup (linux-headers-cloud-amd64):

- x86_64: the generated uapi header of the arch package,
  linux-headers-<ver>-cloud-amd64/arch/x86/include/generated/uapi/asm/unistd_64.h
  (the 6.1 packages ship no arch/x86/entry/syscalls/syscall_64.tbl).
- arm64: linux-headers-<ver>-common/include/uapi/asm-generic/unistd.h, the table arm64 uses
  up to 6.10, evaluated with the __ARCH_WANT_* macros that
  arch/arm64/include/uapi/asm/unistd.h defines and __BITS_PER_LONG == 64. The header's
  conditionals are simple (#if/#ifdef/#ifndef/#else/#endif over defined() and ==/!=), so a
  tiny evaluator below handles them; anything else is an error, never a silent guess.

The output names only the kernel series (e.g. 6.1), not the Debian ABI number, so a point
release of the same series reproduces the file byte for byte.

Usage: gen_syscall_names.py [--src /usr/src] [--output exporter/syscall_names.py] [--check]
"""
from __future__ import annotations

import argparse
import ast
import glob
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO, "exporter", "syscall_names.py")
X86_64_HEADER = "arch/x86/include/generated/uapi/asm/unistd_64.h"
GENERIC_HEADER = "include/uapi/asm-generic/unistd.h"
ARM64_HEADER = "arch/arm64/include/uapi/asm/unistd.h"
# Macros that look like syscalls but are table bookkeeping.
NOT_SYSCALLS = {"syscalls", "arch_specific_syscall"}


class GenError(Exception):
    """The headers are missing or not in a shape this generator understands."""


def _version_key(path: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", os.path.basename(path))]


def find_headers(src: str = "/usr/src") -> tuple[str, str, str]:
    """Return (common dir, cloud-amd64 dir, kernel series) of the newest installed headers."""
    commons = sorted(glob.glob(os.path.join(src, "linux-headers-*-common")), key=_version_key)
    arches = sorted(glob.glob(os.path.join(src, "linux-headers-*-cloud-amd64")), key=_version_key)
    if not commons or not arches:
        raise GenError(
            f"Debian kernel headers not found under {src} (need linux-headers-*-common and "
            "linux-headers-*-cloud-amd64): run ./dev setup, or "
            "apt-get install linux-headers-cloud-amd64")
    m = re.match(r"linux-headers-(\d+\.\d+)", os.path.basename(arches[-1]))
    if not m:
        raise GenError(f"cannot read a kernel version from {arches[-1]}")
    return commons[-1], arches[-1], m.group(1)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise GenError(f"missing header {path}: run ./dev setup") from None


def parse_x86_64(text: str) -> dict[int, str]:
    """`#define __NR_<name> <nr>` lines of the generated unistd_64.h."""
    table = {}
    for name, nr in re.findall(r"^#define __NR_(\w+)\s+(\d+)\s*$", text, re.M):
        if name not in NOT_SYSCALLS:
            table[int(nr)] = name
    if len(table) < 300:
        raise GenError(f"only {len(table)} x86_64 syscalls parsed: unexpected header format")
    return table


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return text.replace("\\\n", " ")


def _eval_condition(expr: str, macros: dict[str, str]) -> bool:
    """Evaluate a preprocessor #if expression made of defined(), ==, !=, !, &&, ||, numbers."""
    expr = re.sub(r"\bdefined\s*\(\s*(\w+)\s*\)|\bdefined\s+(\w+)",
                  lambda m: "1" if (m.group(1) or m.group(2)) in macros else "0", expr)
    expr = re.sub(r"[A-Za-z_]\w*", lambda m: macros.get(m.group(0), "0") or "0", expr)
    expr = expr.replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"!(?!=)", " not ", expr)
    tree = ast.parse(expr.strip(), mode="eval")
    allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare,
               ast.Eq, ast.NotEq, ast.Constant)
    for node in ast.walk(tree):
        if not isinstance(node, allowed) or (
                isinstance(node, ast.Constant) and not isinstance(node.value, int)):
            raise GenError(f"unsupported #if expression: {expr!r}")
    return bool(eval(compile(tree, "<#if>", "eval"), {"__builtins__": {}}))


def preprocess_defines(text: str, macros: dict[str, str]) -> dict[str, str]:
    """Run the #if/#define/#undef logic of a header; return all macros defined at the end."""
    macros = dict(macros)
    stack: list[tuple[bool, bool]] = []  # (this branch active, parent active)
    active = True
    for raw in _strip_comments(text).splitlines():
        line = raw.strip()
        if not line.startswith("#"):
            continue
        m = re.match(r"#\s*(\w+)\s*(.*)$", line)
        directive, rest = m.group(1), m.group(2).strip()
        if directive in ("if", "ifdef", "ifndef"):
            if directive == "if":
                cond = _eval_condition(rest, macros) if active else False
            else:
                cond = (rest in macros) == (directive == "ifdef")
            stack.append((active and cond, active))
            active = active and cond
        elif directive == "else":
            was, parent = stack.pop()
            stack.append((parent and not was, parent))
            active = parent and not was
        elif directive == "endif":
            stack.pop()
            active = stack[-1][0] if stack else True
        elif directive in ("elif",):
            raise GenError("#elif is not supported by this generator")
        elif not active or directive == "include":
            continue
        elif directive == "define":
            dm = re.match(r"(\w+)(\([^)]*\))?\s*(.*)$", rest)
            if not dm.group(2):  # function-like macros (__SYSCALL etc.) are irrelevant here
                macros[dm.group(1)] = dm.group(3).strip()
        elif directive == "undef":
            macros.pop(rest, None)
    if stack:
        raise GenError("unbalanced #if/#endif")
    return macros


def parse_arm64(generic: str, arm64: str) -> dict[int, str]:
    """asm-generic/unistd.h as arm64 includes it (64-bit, not compat)."""
    wants = {name: "" for name in re.findall(r"^#define (__ARCH_WANT_\w+)", arm64, re.M)}
    if "#include <asm-generic/unistd.h>" not in arm64 or not wants:
        raise GenError("arm64 unistd.h no longer includes asm-generic/unistd.h: the 6.11+ "
                       "layout (scripts/syscall.tbl) needs a new parser")
    macros = preprocess_defines(generic, {"__BITS_PER_LONG": "64", **wants})
    table = {}
    for macro, value in macros.items():
        if not macro.startswith("__NR_") or macro[5:] in NOT_SYSCALLS:
            continue
        for _ in range(4):  # __NR_fcntl -> __NR3264_fcntl -> 25
            if value.isdigit():
                break
            value = macros.get(value, "")
        if not value.isdigit():
            raise GenError(f"cannot resolve {macro}")
        table[int(value)] = macro[5:]
    if len(table) < 250:
        raise GenError(f"only {len(table)} arm64 syscalls parsed: unexpected header format")
    return table


def _table_source(name: str, table: dict[int, str]) -> list[str]:
    lines = [f"_{name} = {{"]
    lines += [f"    {nr}: {table[nr]!r}," for nr in sorted(table)]
    lines.append("}")
    return lines


def render(src: str = "/usr/src") -> str:
    """The full text of exporter/syscall_names.py."""
    common, arch, series = find_headers(src)
    x86 = parse_x86_64(_read(os.path.join(arch, X86_64_HEADER)))
    arm = parse_arm64(_read(os.path.join(common, GENERIC_HEADER)),
                      _read(os.path.join(common, ARM64_HEADER)))
    head = f'''"""Syscall numbers <-> names for x86_64 and arm64 (Linux {series} headers).

GENERATED by scripts/gen_syscall_names.py: do not edit by hand; re-run the script instead.
Sources: Debian's linux-headers-{series}.*, i.e.
  x86_64: linux-headers-*-cloud-amd64/{X86_64_HEADER}
  arm64:  linux-headers-*-common/{GENERIC_HEADER},
          with the __ARCH_WANT_* macros of {ARM64_HEADER}
          and __BITS_PER_LONG == 64 (checked identical to `cpp -dM` of the same headers)
Syscalls added after Linux {series} are not named here and show up as "nr_<number>".
"""
from __future__ import annotations

import platform

'''
    body = _table_source("X86_64", x86) + [""] + _table_source("ARM64", arm)
    tail = '''
_TABLES = {"x86_64": _X86_64, "arm64": _ARM64}
_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}
_NUMBERS = {arch: {name: nr for nr, name in t.items()} for arch, t in _TABLES.items()}


def _arch(arch: str | None) -> str:
    """Normalise an arch name (default: this machine); unknown arches have no table."""
    arch = (arch or platform.machine()).lower()
    return _ALIASES.get(arch, arch)


def syscall_name(nr: int, arch: str | None = None) -> str:
    """Name of syscall `nr`; "nr_<nr>" when unknown, so a label is never empty."""
    return _TABLES.get(_arch(arch), {}).get(nr, f"nr_{nr}")


def syscall_number(name: str, arch: str | None = None) -> int | None:
    """Number of syscall `name` (also accepts the "nr_<n>" form); None when unknown."""
    nr = _NUMBERS.get(_arch(arch), {}).get(name)
    if nr is None and name.startswith("nr_") and name[3:].isdigit():
        return int(name[3:])
    return nr
'''
    return head + "\n".join(body) + "\n" + tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="/usr/src", help="where the linux-headers-* dirs are")
    ap.add_argument("--output", default=DEFAULT_OUTPUT)
    ap.add_argument("--check", action="store_true", help="exit 1 if the output is stale")
    args = ap.parse_args(argv)
    try:
        text = render(args.src)
    except GenError as e:
        print(f"gen_syscall_names: {e}", file=sys.stderr)
        return 2
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"gen_syscall_names: {args.output} is stale; re-run without --check",
                  file=sys.stderr)
            return 1
        return 0
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
