"""podsnoop: per-pod network and per-container syscall statistics from eBPF, for Prometheus."""

__version__ = "0.1.0"
