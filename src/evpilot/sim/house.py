"""House load with a daily profile and appliance spikes, PV with clouds, a home battery."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from evpilot.core.charger import Phases

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class Spike:
    """An appliance running from `start` for `duration` seconds, drawing `currents`."""

    start: float
    duration: float
    currents: Phases
    name: str = "appliance"


APPLIANCES: tuple[tuple[str, float, Phases], ...] = (
    ("oven", 1200.0, (10.0, 10.0, 10.0)),
    ("kettle", 180.0, (9.0, 0.0, 0.0)),
    ("washing machine", 3600.0, (0.0, 10.0, 0.0)),
    ("heat pump", 1800.0, (5.0, 5.0, 5.0)),
    ("dryer", 2700.0, (0.0, 0.0, 10.0)),
)

# Relative load over the day (hour -> factor); evenings are heaviest.
_PROFILE = (
    0.5, 0.4, 0.4, 0.4, 0.4, 0.5, 0.8, 1.2, 1.1, 0.9, 0.8, 0.8,
    0.9, 0.8, 0.7, 0.7, 0.9, 1.3, 1.8, 1.7, 1.4, 1.1, 0.8, 0.6,
)  # fmt: skip


class House:
    """Per-phase base load with a daily profile and random appliance spikes."""

    __slots__ = ("base", "next_spike_at", "override", "rng", "spike_rate_h", "spikes")

    def __init__(
        self,
        rng: random.Random,
        base: Phases = (1.5, 1.0, 1.2),
        spike_rate_h: float = 0.5,
        first_spike: Spike | None = None,
        start: float = 0.0,
    ) -> None:
        self.rng = rng
        self.base = base
        self.spike_rate_h = spike_rate_h
        self.spikes: list[Spike] = [first_spike] if first_spike else []
        self.override: Phases | None = None
        self.next_spike_at = start + self._gap()

    def _gap(self) -> float:
        if self.spike_rate_h <= 0:
            return math.inf
        return self.rng.expovariate(self.spike_rate_h / 3600.0)

    def currents(self, now: float, tod: float) -> Phases:
        """Per-phase house current (A) at `now` (`tod` = seconds into the local day)."""
        if self.override is not None:
            return self.override
        while now >= self.next_spike_at:
            name, duration, amps = APPLIANCES[self.rng.randrange(len(APPLIANCES))]
            self.spikes.append(Spike(self.next_spike_at, duration, amps, name))
            self.next_spike_at += self._gap()
        hour = int(tod // 3600) % 24
        frac = (tod % 3600) / 3600.0
        factor = _PROFILE[hour] * (1 - frac) + _PROFILE[(hour + 1) % 24] * frac
        base = self.base
        out0, out1, out2 = base[0] * factor, base[1] * factor, base[2] * factor
        expired = False
        for s in self.spikes:
            if s.start + s.duration <= now:
                expired = True
                continue
            if s.start <= now:
                amps = s.currents
                out0 += amps[0]
                out1 += amps[1]
                out2 += amps[2]
        if expired:
            self.spikes = [s for s in self.spikes if s.start + s.duration > now]
        return (out0, out1, out2)


class PV:
    """A PV array: a daily sine-shaped curve between sunrise and sunset, with clouds."""

    __slots__ = ("_cloud", "_cloud_next", "_cloud_t", "kwp", "override", "rng", "sunrise", "sunset")

    def __init__(self, rng: random.Random, kwp: float, sunrise_h: float = 6.5, sunset_h: float = 20.0):
        self.rng = rng
        self.kwp = kwp
        self.sunrise = sunrise_h * 3600.0
        self.sunset = sunset_h * 3600.0
        self.override: float | None = None
        self._cloud = 1.0
        self._cloud_next = 1.0
        self._cloud_t = -math.inf

    def power_w(self, now: float, tod: float) -> float:
        """Generated power (W) at `now`."""
        if self.override is not None:
            return self.override
        if self.kwp <= 0 or not self.sunrise < tod < self.sunset:
            return 0.0
        # Clouds: a new random target every 5 minutes, approached linearly.
        slot = math.floor(now / 300.0)
        if slot != self._cloud_t:
            self._cloud_t = slot
            self._cloud = self._cloud_next
            self._cloud_next = 1.0 if self.rng.random() < 0.6 else 0.3 + 0.6 * self.rng.random()
        frac = (now % 300.0) / 300.0
        cloud = self._cloud * (1 - frac) + self._cloud_next * frac
        x = (tod - self.sunrise) / (self.sunset - self.sunrise)
        return float(self.kwp * 1000.0 * 0.85 * math.sin(math.pi * x) ** 1.5 * cloud)


class HomeBattery:
    """A home battery that tries to hold the grid at zero within its power and capacity."""

    __slots__ = ("capacity_kwh", "max_power_w", "power_w", "soc")

    def __init__(self, capacity_kwh: float, max_power_w: float, soc: float = 50.0) -> None:
        self.capacity_kwh = capacity_kwh
        self.max_power_w = max_power_w
        self.soc = soc
        self.power_w = 0.0

    def respond(self, net_w: float) -> float:
        """Battery power (+ charging) for a site net import of `net_w` without the battery."""
        if net_w < 0 and self.soc < 100.0:
            self.power_w = min(self.max_power_w, -net_w)
        elif net_w > 0 and self.soc > 5.0:
            self.power_w = -min(self.max_power_w, net_w)
        else:
            self.power_w = 0.0
        return self.power_w

    def step(self, dt: float) -> None:
        """Integrate the state of charge over `dt` seconds."""
        self.soc = min(100.0, max(0.0, self.soc + 100.0 * self.power_w * dt / 3.6e6 / self.capacity_kwh))
