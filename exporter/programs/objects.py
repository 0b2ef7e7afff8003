"""User programs compiled ahead, as ebpf_exporter ships them: `<name>.bpf.o` beside its
`<name>.yaml`, loaded unchanged with libbpf (exporter/bpfobject.py load_linked), no bcc.

libbpf relocates the object to the running kernel (CO-RE) and attaches every program by
its section name (tp_btf/, raw_tp/, tracepoint/, uprobe/, usdt/, kprobe/, fentry/...), as
ebpf_exporter does; what the kernel cannot attach (no kprobes, no BPF trampolines for
fentry/fexit) fails that program's load with one line saying so. The spec's `kaddrs` are
set, as in ebpf_exporter, as `const volatile u64 kaddr_<symbol>` from /proc/kallsyms.

This module only turns the load's refusals into the manager's ProgramError (reason and
fix); the maps are read by the same collector as bcc programs'.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CollectorUnavailable
from .errors import ProgramError

KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
TRAMPOLINE_SECTIONS = ("fentry/", "fexit/", "fmod_ret/", "lsm/", "freplace/")
KPROBE_SECTIONS = ("kprobe/", "kretprobe/", "kprobe.multi/", "kretprobe.multi/", "ksyscall/",
                   "kretsyscall/")
# Sections ebpf_exporter attaches with handlers of its own, which libbpf cannot attach.
OWN_HANDLER_SECTIONS = ("perf_event", "xdp")


def kernel_addresses(program: str, symbols) -> dict[str, int]:
    """kaddr_<symbol> -> the symbol's address, from /proc/kallsyms (the first one listed,
    as ebpf_exporter takes it)."""
    want, found = set(symbols), {}
    try:
        with open("/proc/kallsyms", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in want and parts[2] not in found:
                    found[parts[2]] = int(parts[0], 16)
    except OSError as e:
        raise ProgramError(program, "spec", f"program {program}: kaddrs: cannot read "
                           f"/proc/kallsyms ({e.strerror})", "run podsnoop as root") from None
    missing = sorted(want - set(found))
    if missing:
        raise ProgramError(program, "spec", f"program {program}: kaddrs: {missing[0]} is not "
                           "in /proc/kallsyms", "name a symbol this kernel has")
    if not all(found.values()):
        raise ProgramError(program, "spec", f"program {program}: kaddrs: /proc/kallsyms shows "
                           "no addresses", "run podsnoop with CAP_SYSLOG (or root) and "
                           "kernel.kptr_restrict below 2")
    return {f"kaddr_{s}": a for s, a in found.items()}


def _hint(section: str) -> str:
    """What to change when the kernel will not load or attach a program of this section."""
    if section.startswith(TRAMPOLINE_SECTIONS):
        return ("this kernel may have no BPF trampolines (fentry/fexit): attach to a "
                "tracepoint instead (tp_btf/ or raw_tp/)")
    if section.startswith(KPROBE_SECTIONS) and not KPROBE_PMU.exists():
        return ("this kernel has no kprobes (CONFIG_KPROBES off): attach to a tracepoint "
                "instead (tp_btf/, raw_tp/ or tracepoint/)")
    if section.startswith(OWN_HANDLER_SECTIONS):
        return ("podsnoop attaches what libbpf attaches by section name (tp_btf, raw_tp, "
                "tracepoint, uprobe, usdt, kprobe, fentry): not this section")
    if section.startswith(("uprobe", "uretprobe", "usdt")):
        return "check that the binary exists on the node and has the symbol or probe"
    return "check the program's section name and that this kernel has the attach point"


def load(spec, data: bytes):
    """The loaded and attached object (bpfobject.LinkedObject), or ProgramError."""
    from .. import bpfobject
    name, source = spec.name, spec.file
    rodata = kernel_addresses(name, spec.kaddrs) if spec.kaddrs else None
    try:
        return bpfobject.load_linked(data, name, source, rodata=rodata)
    except CollectorUnavailable as e:
        msg = e.message
        if e.reason == "object invalid":
            raise ProgramError(name, "object", f"program {name}: {msg}", "build it with "
                               "clang -g -O2 -target bpf (ebpf_exporter's examples/Makefile "
                               "does) and copy the .bpf.o unchanged") from None
        if e.reason == "constant missing":
            raise ProgramError(name, "object", f"program {name}: kaddrs: {msg}",
                               "declare const volatile u64 kaddr_<symbol> = 0; for each of "
                               "kaddrs in the C") from None
        if e.reason == "map refused":
            raise ProgramError(name, "maps", f"program {name}: {msg}",
                               "use a map type and size this kernel supports") from None
        section = getattr(e, "section", "")
        if e.reason == "attach failed":
            raise ProgramError(name, "attach", f"program {name}: {msg}", _hint(section)) \
                from None
        if e.reason in ("verifier refused", "program refused"):
            fix = (_hint(section) if e.reason == "program refused" else
                   "run with --log-level debug for the verifier's whole log; check map "
                   "lookups for NULL, bound loops and reads")
            raise ProgramError(name, "verifier", f"program {name}: {msg}", fix) from None
        raise ProgramError(name, "object", f"program {name}: {msg}",
                           f"check that libbpf can load {source} (bpftool prog loadall)") \
            from None

