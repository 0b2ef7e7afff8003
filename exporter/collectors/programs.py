"""podsnoop_bpf_program_run_seconds_total / _runs_total{program}: the in-kernel cost of
every program podsnoop loaded, from the kernel's own statistics (exporter/bpfstats.py), so
what podsnoop costs the node's workloads is visible on the node itself. The kernel counts
only while its statistics are on (sampled windows by default, exporter/bpfstats.py):
podsnoop_bpf_stats_on_seconds_total says for how long, and run seconds per on-second is
the programs' share of a CPU."""
from __future__ import annotations

import os

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import names
from ..bpfstats import run_stats


class ProgramCostCollector:
    def __init__(self, programs: dict[str, int], stats):
        self.programs = programs  # program name -> fd
        self.stats = stats        # bpfstats.StatsSampler

    def _families(self):
        return (CounterMetricFamily(names.BPF_PROGRAM_RUN_SECONDS,
                                    "Time podsnoop's BPF programs ran in the kernel (the "
                                    "kernel's run-time statistics).", labels=["program"]),
                CounterMetricFamily(names.BPF_PROGRAM_RUNS,
                                    "Runs of podsnoop's BPF programs.", labels=["program"]),
                GaugeMetricFamily(names.BPF_STATS_ENABLED,
                                  "1 while the kernel keeps run-time statistics of BPF "
                                  "programs (0: podsnoop lacks CAP_SYS_ADMIN to turn them "
                                  "on and they are off node-wide)."),
                GaugeMetricFamily(names.NODE_CPUS, "CPUs of the node, to express the "
                                  "programs' time as a share of it."),
                CounterMetricFamily(names.BPF_STATS_ON_SECONDS,
                                    "Seconds the kernel's run-time statistics were on "
                                    "(--bpf-stats sampled: short windows): the programs' "
                                    "run seconds and runs are counted only then."))

    def describe(self):
        return self._families()

    def collect(self):
        seconds, runs, enabled, cpus, on_seconds = self._families()
        on = self.stats.enabled
        enabled.add_metric([], int(on))
        cpus.add_metric([], os.cpu_count() or 1)
        if on:
            for name, fd in sorted(self.programs.items()):
                ns, count = run_stats(fd)
                seconds.add_metric([name], ns / 1e9)
                runs.add_metric([name], count)
            on_seconds.add_metric([], self.stats.on_seconds())
            yield seconds
            yield runs
            yield on_seconds
        yield enabled
        yield cpus
