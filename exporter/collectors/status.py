"""Which built-in collectors count, and why one that this kernel cannot run is off.

A collector whose program the kernel cannot load or verify (a feature an older kernel
lacks, a verifier rejection) is turned off on its own when its flag is at the default: the
others keep serving, /readyz stays 200 and lists it, and one warning line says what is
missing and which flag silences it (app.py). podsnoop_collector_up{collector} is 1 or 0 for
every enabled collector; podsnoop_collector_disabled{collector, reason} is 1 for each one
that is off, with a short reason from a small fixed set (names.DISABLED_REASONS, or
"kernel<X.Y: <feature>"), so its cardinality is bounded by the collectors.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily

from .. import names
from ..errors import CollectorUnavailable, PodsnoopError

log = logging.getLogger("podsnoop")


@dataclass(frozen=True)
class Disabled:
    reason: str
    message: str
    fix: str


class CollectorStatus:
    def __init__(self):
        self.up: dict[str, bool] = {}
        self.disabled: dict[str, Disabled] = {}

    def running(self, collector: str) -> None:
        self.up[collector] = True

    def disable(self, collector: str, flag: str | None, error: CollectorUnavailable) -> None:
        self.up[collector] = False
        self.disabled[collector] = Disabled(error.reason, error.message, error.fix)
        silence = f"{flag} off silences this" if flag else "it has no flag to turn it off"
        log.warning("%s collector off: %s (%s)", collector, error.message, silence)

    def require_one(self) -> None:
        """Serving with every collector off would only hide the problem: the first one's
        error ends the start instead."""
        if self.up and not any(self.up.values()):
            first = next(iter(self.disabled.values()))
            raise PodsnoopError(first.message, first.fix)

    def problem(self) -> str | None:
        """For /readyz: None when every enabled collector counts."""
        if not self.disabled:
            return None
        return "off: " + ", ".join(f"{c} ({d.reason})" for c, d in sorted(self.disabled.items()))

    def describe(self):
        return self.collect()

    def collect(self):
        up = GaugeMetricFamily(names.COLLECTOR_UP, "1 if the collector counts, 0 if this "
                               "kernel cannot run it (see podsnoop_collector_disabled).",
                               labels=["collector"])
        for collector, running in sorted(self.up.items()):
            up.add_metric([collector], 1 if running else 0)
        off = GaugeMetricFamily(names.COLLECTOR_DISABLED, "1 for a collector that is off "
                                "because this kernel cannot run it, with why.",
                                labels=["collector", "reason"])
        for collector, d in sorted(self.disabled.items()):
            off.add_metric([collector, d.reason], 1)
        yield up
        yield off
