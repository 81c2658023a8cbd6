"""Adapters that expose the simulator's meters as drivers."""

from __future__ import annotations

from evpilot.core.site import Reading
from evpilot.sim.site import SimSite


class SimMainsMeter:
    """The simulated site's mains meter as a MeterSource."""

    def __init__(self, site: SimSite) -> None:
        self.site = site
        self.enabled = True
        self._last: Reading | None = None

    def latest(self) -> Reading | None:
        """The simulator's mains currents now; while switched off, the last one it sent."""
        if self.enabled:
            # `site.mains_meter().as_reading()` without the powers and counters it would drop.
            m = self.site.mains_currents
            self._last = Reading((round(m[0], 3), round(m[1], 3), round(m[2], 3)), self.site.now)
        return self._last
