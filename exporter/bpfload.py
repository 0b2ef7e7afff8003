"""Where podsnoop's BPF objects and sources are, the privilege and tracefs checks, and the
bcc compile of user programs in bcc C (exporter/programs/).

podsnoop's own programs are precompiled (bpf/<name>.bpf.o, OBJECT_DIR); only user
programs are compiled at start, with bcc, against the node's kernel headers. Every way
that can fail on a real node (not root, bcc missing, no headers, no tracefs) is reported as
one PodsnoopError with the fix, instead of a clang or ctypes traceback.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import tempfile
from pathlib import Path

from . import names
from .errors import CollectorUnavailable, PodsnoopError

log = logging.getLogger(__name__)



def _bpf_dir() -> Path:
    """PODSNOOP_BPF_DIR if set; else exporter/bpf in an installed wheel (pyproject maps the
    checkout's bpf/ there); else bpf/ beside the package in a source checkout."""
    if os.environ.get("PODSNOOP_BPF_DIR"):
        return Path(os.environ["PODSNOOP_BPF_DIR"])
    here = Path(__file__).resolve().parent
    installed = here / "bpf"
    return installed if (installed / "podfilter.h").is_file() else here.parent / "bpf"


BPF_DIR = _bpf_dir()


def _object_dir() -> Path:
    """Where the precompiled objects (<name>.bpf.o) are: PODSNOOP_BPF_OBJECT_DIR if set;
    else beside the sources in an installed wheel (exporter/bpf); else bpf/.output, where
    bpf/Makefile builds them in a checkout."""
    if os.environ.get("PODSNOOP_BPF_OBJECT_DIR"):
        return Path(os.environ["PODSNOOP_BPF_OBJECT_DIR"])
    installed = Path(__file__).resolve().parent / "bpf"
    return installed if (installed / "net.bpf.o").is_file() else \
        Path(__file__).resolve().parent.parent / "bpf" / ".output"


OBJECT_DIR = _object_dir()
TRACEFS = "/sys/kernel/tracing"
CAP_SYS_ADMIN, CAP_BPF = 21, 39


def _effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    caps = _effective_caps()
    if caps >> CAP_BPF & 1 or caps >> CAP_SYS_ADMIN & 1:
        return
    if os.geteuid() != 0:
        raise PodsnoopError(
            "podsnoop needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) to load eBPF programs",
            "run it as root, e.g. sudo podsnoop, or grant those capabilities")
    # root in a container whose capability list leaves out BPF (and SYS_ADMIN)
    raise PodsnoopError(
        "podsnoop runs as root but without CAP_BPF (or CAP_SYS_ADMIN): it cannot load eBPF programs",
        "add the BPF, PERFMON and NET_ADMIN capabilities to the container's securityContext "
        "(as deploy/daemonset.yaml does), or use deploy/privileged")


def import_bcc():
    try:
        import bcc  # Debian's python3-bpfcc, linked into the venv
        bcc.BPF  # an empty or foreign "bcc" directory imports as a namespace package
    except (ImportError, AttributeError) as e:
        raise PodsnoopError(
            f"the bcc Python module is not importable ({e})",
            "apt-get install python3-bpfcc, then ./dev setup to link it into the venv "
            "(never pip install bcc: that PyPI package is unrelated)") from None
    except OSError as e:  # libbcc.so missing or broken
        raise PodsnoopError(f"libbcc could not be loaded ({e})",
                            "apt-get install --reinstall libbpfcc python3-bpfcc") from None
    return bcc


def check_kernel_headers() -> None:
    release = os.uname().release
    build = Path("/lib/modules") / release / "build"
    override = os.environ.get("BCC_KERNEL_SOURCE")  # bcc's own way to point elsewhere
    if (build / "include").is_dir() or Path("/sys/kernel/kheaders.tar.xz").exists() or (
            override and Path(override, "include").is_dir()):
        return
    # The image's own headers (deploy/Dockerfile sets the variable), used only where the
    # node has none: its own headers, or the kernel's kheaders, match it exactly.
    bundled = os.environ.get("PODSNOOP_BUNDLED_KERNEL_HEADERS")
    if not override and bundled and Path(bundled, "include").is_dir():
        os.environ["BCC_KERNEL_SOURCE"] = bundled  # read by libbcc at each compile
        log.warning("kernel headers for %s not found at %s: using the headers bundled in "
                    "the image at %s", release, build, bundled)
        return
    raise PodsnoopError(
        f"kernel headers for {release} not found at {build} (bcc compiles the BPF programs "
        "against them)",
        f"install linux-headers-{release}, or on Debian linux-headers-cloud-amd64 and link "
        f"{build} to /usr/src/linux-headers-<version>-cloud-amd64 (./dev setup does this)")


def ensure_tracefs() -> None:
    """bcc attaches tracepoints through tracefs; mount it if it is not."""
    if Path(TRACEFS, "events").is_dir():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = os.strerror(ctypes.get_errno())
        raise PodsnoopError(f"tracefs is not mounted at {TRACEFS} and mounting it failed ({err})",
                            f"mount -t tracefs tracefs {TRACEFS} (in a pod: mount the host's "
                            f"{TRACEFS} into the container)")


def tracepoint_fields(category: str, event: str) -> set[str]:
    """Field names of a tracepoint's record (fields get added across kernel versions);
    empty if tracefs does not have it."""
    try:
        text = Path(TRACEFS, "events", category, event, "format").read_text()
    except OSError:
        return set()
    return set(re.findall(r"field:[^;]*?(\w+)(?:\[\d*\])?;", text))


def defines(mode: str = "node", **extra: int) -> list[str]:
    """-D flags shared by all programs: protocol and direction numbers from names.py, and
    which direction each TC hook is in this mode (node or sidecar)."""
    flags = [f"-DPROTO_{p.upper()}={i}" for i, p in enumerate(names.PROTOCOLS)]
    flags += [f"-DDIR_RECEIVE={names.DIR_RECEIVE}", f"-DDIR_TRANSMIT={names.DIR_TRANSMIT}"]
    ingress, egress = names.HOOK_DIRECTIONS["sidecar" if mode == "sidecar" else "node"]
    flags += [f"-DINGRESS_DIR={ingress}", f"-DEGRESS_DIR={egress}"]
    flags += [f"-D{k}={v}" for k, v in sorted(extra.items())]
    return flags


def source_path(program: str) -> Path:
    path = BPF_DIR / f"{program}.c"
    if not path.is_file():
        raise PodsnoopError(f"BPF source {path} is missing",
                            "reinstall podsnoop or set PODSNOOP_BPF_DIR to the bpf/ directory")
    return path


@contextlib.contextmanager
def _captured_stderr():
    """clang writes to fd 2 from C++; capture it so a failure becomes one clean message."""
    with tempfile.TemporaryFile() as buf:
        saved = os.dup(2)
        os.dup2(buf.fileno(), 2)
        output: list[str] = []
        try:
            yield output
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            output.append(buf.read().decode(errors="replace"))


def verifier_cause(log_text: str) -> str:
    """The verifier's own reason, from its log (as bcc or libbpf pass it on): the last line
    before the "processed N insns" summary (the trace above it is the how, not the why)."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith("processed ") and "insns" in line and i > 0:
            return lines[i - 1]
    return lines[-1] if lines else "no verifier log"


def _raise_if_refused(failure: Exception, log_text: str, source: str) -> None:
    """bcc's "Failed to load BPF program X" with the verifier's log on stderr: say so."""
    refused = re.search(r"Failed to load BPF program b?'?([\w.]+)'?", str(failure))
    if refused:
        raise verifier_refusal(refused.group(1), source, log_text)


def verifier_refusal(program: str, source: str, log_text: str) -> CollectorUnavailable:
    """The one line for a program the verifier refused (its whole log at debug level)."""
    log.debug("verifier log of %s/%s:\n%s", source, program, log_text)
    return CollectorUnavailable(
        f"the kernel's verifier refused {program} of {source}: {verifier_cause(log_text)}",
        "run with --log-level debug for the verifier's whole log; report it as a podsnoop "
        "bug with `uname -r`", reason="verifier refused")


def map_refusal(map_name: str, source: str, error: str) -> CollectorUnavailable:
    """The one line for a map the kernel would not create."""
    return CollectorUnavailable(
        f"the kernel refused the BPF map {map_name} of {source}: {error.strip()}",
        "report it as a podsnoop bug with `uname -r`", reason="map refused")


def compile_program(program: str, cflags: list[str]):
    """Compile and load bpf/<program>.c with bcc. Failures become one line that says who
    refused: clang (its first error: headers), the kernel's map creation, or the kernel's
    verifier (its reason), each a CollectorUnavailable with a short reason."""
    bcc = import_bcc()
    path = source_path(program)
    with _captured_stderr() as err:
        try:
            return bcc.BPF(src_file=str(path).encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception on compile/load failure
            failure = e
    text = "".join(err)
    _raise_if_refused(failure, text, path.name)
    bad_map = re.search(r"could not open bpf map: (\w+), error: (.*)", text)
    if bad_map:
        raise map_refusal(bad_map.group(1), path.name, bad_map.group(2))
    first = next((ln for ln in text.splitlines() if re.search(r"error|fatal", ln, re.I)),
                 str(failure))
    if "kernel headers" in text or "Unable to find kernel" in text:
        check_kernel_headers()
    raise CollectorUnavailable(f"compiling {path.name} failed: {first.strip()}",
                               "check that the kernel headers match the running kernel",
                               reason="compile failed")


def program_fds(bpf, source: str) -> dict[str, int]:
    """"<source>/<function>" -> fd of every program a compiled source has loaded (the TC,
    tracepoint and cgroup programs alike), for the run-time statistics."""
    return {f"{source}/{name.decode() if isinstance(name, bytes) else name}": fn.fd
            for name, fn in bpf.funcs.items()}
