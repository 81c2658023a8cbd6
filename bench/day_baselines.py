"""Baseline allocators for the day benchmark, pluggable into `Engine.compute`.

- `StaticSplit`: every charger fixed at limit/N (per node and phase, the tightest), whatever the
  house, the PV or the other chargers do; what a fixed installer setting gives.
- `SlowController`: every 30 s it reads the mains meter and adjusts exactly one charger (round
  robin) to use the headroom it sees; the others hold their setpoints in between.

Both keep `snapshot.state` unchanged (they do not use evpilot's balancer memory) and never
switch phases.
"""

from __future__ import annotations

from collections.abc import Sequence

from evpilot.core import sources
from evpilot.core.balancer import circuit_paths as balancer_paths
from evpilot.core.charger import ChargerConfig, Phases
from evpilot.core.site import (
    Allocation,
    ChargerAllocation,
    ChargerInput,
    SiteConfig,
    Snapshot,
)

SOLAR_MODES = ("solar", "min+solar")


def fixed_phases(ci: ChargerInput) -> int:
    """Phase count a baseline drives a charger at (no automatic switching)."""
    if ci.config.phases == 1:
        return 1
    if ci.phase_mode == "always_1p" or (ci.phase_mode == "solar_1p" and ci.mode == "solar"):
        return 1
    return 3


def circuit_paths(site: SiteConfig) -> dict[str, tuple[str, ...]]:
    """For each circuit, its chain of circuit names up to the mains (mains excluded)."""
    return balancer_paths(site.circuits)


def config_phases(cfg: ChargerConfig) -> tuple[int, ...]:
    """Mains phase indices a charger is wired to use."""
    if cfg.phases == 1:
        return (cfg.phase - 1,)
    if cfg.contactor2 == "always_1p":
        return (0,)
    return (0, 1, 2)


def static_split(site: SiteConfig, chargers: Sequence[ChargerConfig]) -> dict[str, float]:
    """Each charger's fixed current: the tightest node limit / chargers on that node and phase."""
    paths = circuit_paths(site)
    limits = {c.name: c.limit for c in site.circuits}
    limits[""] = site.mains_limit
    count: dict[tuple[str, int], int] = {}
    total_phases = 0
    nodes_of: dict[str, tuple[str, ...]] = {}
    for cfg in chargers:
        nodes = ("", *(paths.get(cfg.circuit, ()) if cfg.circuit else ()))
        nodes_of[cfg.id] = nodes
        ph = config_phases(cfg)
        total_phases += len(ph)
        for node in nodes:
            for p in ph:
                count[(node, p)] = count.get((node, p), 0) + 1
    out: dict[str, float] = {}
    for cfg in chargers:
        value = cfg.max_current
        for node in nodes_of[cfg.id]:
            for p in config_phases(cfg):
                value = min(value, limits[node] / count[(node, p)])
        if site.capacity_limit is not None and total_phases:
            value = min(value, site.capacity_limit / total_phases)
        # The pilot cannot signal less than MIN: a split below it charges nothing at all.
        out[cfg.id] = value if value >= cfg.min_current else 0.0
    return out


def _allocation(snapshot: Snapshot, currents: dict[str, float], source: str) -> Allocation:
    chargers = {
        ci.config.id: ChargerAllocation(
            round(currents.get(ci.config.id, 0.0), 2) if ci.demand > 0 and ci.mode != "off" else 0.0,
            fixed_phases(ci),
            # A baseline's own reason (`static`, `slow`), outside the core's kinds.
            sources.named(sources.SourceKind.NONE, source),
        )
        for ci in snapshot.chargers
    }
    zero: Phases = (0.0, 0.0, 0.0)
    return Allocation(chargers, snapshot.state, snapshot.mains is not None, False, zero, zero)


class StaticSplit:
    """Allocator: each charger at its fixed share of the limits, nothing measured."""

    def __init__(self, site: SiteConfig, chargers: Sequence[ChargerConfig]) -> None:
        self.currents = static_split(site, chargers)

    def __call__(self, snapshot: Snapshot, now: float) -> Allocation:
        """The same allocation every tick."""
        return _allocation(snapshot, self.currents, "static")


class SlowController:
    """Allocator: one charger re-targeted per `period_s` tick, from the mains meter."""

    def __init__(self, site: SiteConfig, period_s: float = 30.0) -> None:
        self.site = site
        self.period_s = period_s
        self.paths = circuit_paths(site)
        self.limits = {c.name: c.limit for c in site.circuits}
        self.setpoints: dict[str, float] = {}
        self.next_tick: float | None = None
        self.last_pick: str | None = None

    def __call__(self, snapshot: Snapshot, now: float) -> Allocation:
        """Hold every setpoint, except one charger at each tick."""
        for ci in snapshot.chargers:
            if ci.demand == 0 or ci.mode == "off":
                self.setpoints[ci.config.id] = 0.0
        if self.next_tick is None or now >= self.next_tick:
            self.next_tick = now + self.period_s
            self._tick(snapshot, now)
        return _allocation(snapshot, self.setpoints, "slow")

    def _tick(self, snapshot: Snapshot, now: float) -> None:
        mains = snapshot.mains
        if mains is None or now - mains.taken_at > self.site.meter_timeout_s:
            return
        active = sorted(
            (ci for ci in snapshot.chargers if ci.demand > 0 and ci.mode != "off"), key=lambda c: c.config.id
        )
        if not active:
            return
        ids = [ci.config.id for ci in active]
        pos = 0
        if self.last_pick is not None:
            later = [k for k, cid in enumerate(ids) if cid > self.last_pick]
            pos = later[0] if later else 0
        ci = active[pos]
        self.last_pick = ci.config.id
        self.setpoints[ci.config.id] = self._target(snapshot, ci, mains.currents)

    def _target(self, snapshot: Snapshot, ci: ChargerInput, mains: Phases) -> float:
        site = self.site
        draws: dict[str, Phases] = {}
        for other in snapshot.chargers:
            m = other.measured
            if other.config.phases == 1:
                d = [0.0, 0.0, 0.0]
                d[other.config.phase - 1] = m[0]
                draws[other.config.id] = (d[0], d[1], d[2])
            else:
                draws[other.config.id] = m
        phases = (ci.config.phase - 1,) if fixed_phases(ci) == 1 else (0, 1, 2)
        if ci.config.phases == 3 and fixed_phases(ci) == 1:
            phases = (0,)
        head = min(site.mains_limit - mains[p] for p in phases)
        if ci.config.circuit is not None:
            for node in self.paths.get(ci.config.circuit, ()):
                under = [
                    o.config.id
                    for o in snapshot.chargers
                    if o.config.circuit is not None and node in self.paths.get(o.config.circuit, ())
                ]
                for p in phases:
                    load = sum(draws[cid][p] for cid in under)
                    head = min(head, self.limits[node] - load)
        n = float(len(phases))
        if site.capacity_limit is not None:
            head = min(head, (site.capacity_limit - sum(mains)) / n)
        if ci.mode == "solar":
            head = min(head, (-sum(mains) + site.solar.max_import) / n)
        target = min(max(ci.measured) + head, ci.limit)
        return target if target >= ci.config.min_current else 0.0
