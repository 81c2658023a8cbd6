"""One synchronous control step: read devices, build the snapshot, compute, apply."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from evpilot.core.balancer import compute
from evpilot.core.charger import Charger
from evpilot.core.errors import check_range
from evpilot.core.iec61851 import DRAW_THRESHOLD_A
from evpilot.core.site import (
    Allocation,
    BalancerState,
    ChargerInput,
    Reading,
    SiteConfig,
    SiteLimit,
    Snapshot,
)
from evpilot.core.validity import reuse_idle, steady_idle
from evpilot.devices.apifed import ApiFedBattery
from evpilot.devices.base import MeterSource, PilotHardware

# Exactly equivalent shortcuts (steady idle site); tests switch them off to compare.
FAST_PATHS = True


@dataclass(slots=True)
class SiteCap:
    """An external site-wide cap (A per phase on all chargers together), maybe leased."""

    amps: float
    expires_at: float | None


class Engine:
    """Owns the chargers' domain objects and runs `compute` once per step."""

    def __init__(
        self,
        site: SiteConfig,
        chargers: Mapping[str, Charger],
        pilots: Mapping[str, PilotHardware],
        mains: MeterSource | None,
        lease_s: float = 5.0,
    ) -> None:
        self.site = site
        self.chargers = dict(chargers)
        self.pilots = dict(pilots)
        self.mains = mains
        self.circuit_meters: dict[str, MeterSource] = {}
        self.battery = ApiFedBattery()
        self.grid_relay_open = False
        self.site_caps: dict[str, SiteCap] = {}
        self.lease_s = lease_s
        self.state = BalancerState()
        # Readings the core refused as implausible, by source (`mains`, `charger:<id>`, ...).
        self.rejected: Counter[str] = Counter()
        self.last: Allocation | None = None
        self.last_mains: Reading | None = None
        self.last_tick: float | None = None
        self.before_step: Callable[[float], None] | None = None
        # The allocator; benchmarks swap in baselines here, everything else uses the real one.
        self.compute: Callable[[Snapshot, float], Allocation] = compute
        # The snapshot and allocation of a steady idle site (`core.validity`), reused while it lasts.
        self._steady: tuple[Snapshot, Allocation] | None = None

    def mode_of(self, charger: Charger) -> str:
        """The charger's effective mode (its own, or the site's)."""
        return charger.mode or self.site.mode

    def set_site_cap(self, source: str, amps: float | None, expires_at: float | None = None) -> None:
        """Set or clear an external cap on the chargers' total current per phase."""
        if amps is None:
            self.site_caps.pop(source, None)
            return
        self.site_caps[source] = SiteCap(check_range(source, amps, 0.0, 600.0, " A"), expires_at)

    def snapshot(self, now: float) -> Snapshot:
        """Freeze everything `compute` needs."""
        inputs: list[ChargerInput] = []
        append = inputs.append
        site_mode = self.site.mode
        for ch in self.chargers.values():
            limit, source = ch.own_limit(now)
            currents = ch.currents
            session = ch.session
            # Positional, in field order (config, mode, demand, limit, limit_source, measured,
            # session_kwh, phase_mode, active_phases, charging, measured_at, plugged).
            append(
                ChargerInput(
                    ch.config,
                    ch.mode or site_mode,
                    ch.demand(),
                    limit,
                    source,
                    currents,
                    session.energy_kwh if session is not None else 0.0,
                    ch.phase_mode,
                    ch.active_phases,
                    ch.contactor and max(currents) > DRAW_THRESHOLD_A,
                    ch.reading_at,
                    ch.plugged,
                )
            )
        mains = self.mains.latest() if self.mains is not None else None
        self.last_mains = mains
        circuits = {}
        for name, meter in self.circuit_meters.items():
            reading = meter.latest()
            if reading is not None:
                circuits[name] = reading
        limits: tuple[SiteLimit, ...] = ()
        if self.site_caps:
            caps = self.site_caps
            lapsed = [k for k, v in caps.items() if v.expires_at is not None and now >= v.expires_at]
            for name in lapsed:
                del self.site_caps[name]
            limits = tuple(SiteLimit(c.amps, name) for name, c in self.site_caps.items())
        return Snapshot(
            site=self.site,
            chargers=tuple(inputs),
            mains=mains,
            circuit_meters=circuits,
            battery_current=self.battery.current,
            battery_at=self.battery.at,
            grid_relay_open=self.grid_relay_open,
            site_limits=limits,
            state=self.state,
        )

    def step(self, now: float) -> Allocation:
        """Read every pilot, decide, and write every pilot."""
        dt = 0.0 if self.last_tick is None else max(0.0, now - self.last_tick)
        self.last_tick = now
        if self.before_step is not None:
            self.before_step(now)
        pilots = self.pilots
        for cid, ch in self.chargers.items():
            ch.observe(pilots[cid].read())
            if ch.session is not None:
                ch.add_charging_time(dt)
            if ch.leases:
                ch.drop_expired_leases(now)
        snap = self.snapshot(now)
        alloc = None
        steady = self._steady
        if steady is not None and FAST_PATHS and self.compute is compute:
            alloc = reuse_idle(steady[0], steady[1], snap, now)
        if alloc is None:
            alloc = self.compute(snap, now)
            self._steady = (snap, alloc) if self.compute is compute and steady_idle(snap, alloc) else None
        self.state = alloc.state
        self.last = alloc
        if alloc.rejected:
            self.rejected.update(alloc.rejected)
        decisions = alloc.chargers
        lease_s = self.lease_s
        for cid, ch in self.chargers.items():
            a = decisions[cid]
            pilots[cid].write(ch.apply(now, a.current, a.source, a.phases, lease_s))
        return alloc
