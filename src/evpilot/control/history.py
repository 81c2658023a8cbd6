"""Per-minute history of the site: averages of each series over a clock minute, handed to the store."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from evpilot.control.views import ChargerView, SiteView

NOMINAL_V = 230.0
MINUTE = 60


class HistorySink(Protocol):
    """Where finished minutes go (the store's queued writer)."""

    def add_history(self, t: int, doc: Mapping[str, float]) -> None:
        """Store one minute's averages at clock time `t`."""


def sample(site: SiteView, chargers: Iterable[ChargerView]) -> dict[str, float]:
    """The site's series right now, by name (see docs/native-api.md, `GET /api/history`)."""
    out: dict[str, float] = {"mains_limit": site.config.mains_limit}
    if site.mains is not None:
        for i, a in enumerate(site.mains.currents):
            out[f"mains_l{i + 1}"] = a
        meter = site.mains.meter
        out["grid_w"] = sum(meter.powers) if meter is not None else NOMINAL_V * sum(site.mains.currents)
    if site.config.capacity_limit is not None:
        out["capacity_limit"] = site.config.capacity_limit
    if site.sim is not None:
        out["pv_w"] = site.sim.pv_w
        out["house_w"] = NOMINAL_V * sum(site.sim.house)
        out["battery_w"] = site.sim.battery_w
    elif site.allocation is not None:
        out["house_w"] = NOMINAL_V * sum(site.allocation.base_load)
    for v in chargers:
        out[f"charger:{v.id}:current"] = max(v.currents)
        out[f"charger:{v.id}:signaled"] = v.signaled
        out[f"charger:{v.id}:allocated"] = v.allocated
        out[f"charger:{v.id}:available"] = v.available_current
    return out


class HistoryRecorder:
    """Sums each tick's sample into the current clock minute; a finished minute goes to the sink."""

    def __init__(self, sink: HistorySink) -> None:
        self.sink = sink
        self.minute: int | None = None
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def observe(self, now: float, values: Mapping[str, float]) -> None:
        """Add one sample taken at clock time `now`."""
        minute = int(now // MINUTE) * MINUTE
        if self.minute is not None and minute != self.minute:
            self.finish()
        self.minute = minute
        sums, counts = self._sums, self._counts
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1

    def finish(self) -> None:
        """Hand the current minute's averages to the sink (if it has any)."""
        if self.minute is not None and self._sums:
            doc = {k: round(s / self._counts[k], 3) for k, s in self._sums.items()}
            self.sink.add_history(self.minute, doc)
        self._sums, self._counts = {}, {}
