"""One synchronous control step: read devices, build the snapshot, compute, apply."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from evpilot.core.balancer import compute
from evpilot.core.charger import Charger, PilotOutput
from evpilot.core.errors import check_range
from evpilot.core.iec61851 import DRAW_THRESHOLD_A
from evpilot.core.site import (
    Allocation,
    BalancerState,
    ChargerAllocation,
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


@dataclass(frozen=True, slots=True)
class Quiet:
    """A quiet charger's last full tick: its key, input, decision and pilot output."""

    key: tuple[object, ...]
    input: ChargerInput
    decision: ChargerAllocation
    output: PilotOutput


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
        # Per quiet charger (`Charger.quiet_key`): what its last full tick saw, decided and wrote.
        self._quiet: dict[str, Quiet] = {}

    def mode_of(self, charger: Charger) -> str:
        """The charger's effective mode (its own, or the site's)."""
        return charger.mode or self.site.mode

    def set_site_cap(self, source: str, amps: float | None, expires_at: float | None = None) -> None:
        """Set or clear an external cap on the chargers' total current per phase."""
        if amps is None:
            self.site_caps.pop(source, None)
            return
        self.site_caps[source] = SiteCap(check_range(source, amps, 0.0, 600.0, " A"), expires_at)

    def snapshot(self, now: float, calm: Mapping[str, Quiet] | None = None) -> Snapshot:
        """Freeze everything `compute` needs (`calm`: quiet chargers whose input is the last one's)."""
        inputs: list[ChargerInput] = []
        append = inputs.append
        site_mode = self.site.mode
        for ch in self.chargers.values():
            if calm:
                q = calm.get(ch.config.id)
                if q is not None:
                    # Only the time of the reading is new (see `Charger.quiet_key`).
                    p = q.input
                    session = ch.session
                    append(
                        ChargerInput(
                            p.config,
                            ch.mode or site_mode,
                            p.demand,
                            p.limit,
                            p.limit_source,
                            ch.currents,
                            session.energy_kwh if session is not None else 0.0,
                            p.phase_mode,
                            p.active_phases,
                            False,
                            ch.reading_at,
                            p.plugged,
                        )
                    )
                    continue
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
        fast = FAST_PATHS
        quiet = self._quiet
        calm: dict[str, Quiet] = {}
        for cid, ch in self.chargers.items():
            reading = pilots[cid].read()
            if fast and quiet:
                q = quiet.get(cid)
                if q is not None and ch.quiet_key() == q.key and ch.observe_quiet(reading):
                    calm[cid] = q
                    continue
            ch.observe(reading)
            if ch.session is not None:
                ch.add_charging_time(dt)
            if ch.leases:
                ch.drop_expired_leases(now)
        snap = self.snapshot(now, calm)
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
        inputs = snap.chargers
        for pos, (cid, ch) in enumerate(self.chargers.items()):
            a = decisions[cid]
            q = calm.get(cid)
            if q is not None and (a is q.decision or a == q.decision):
                pilots[cid].write(ch.apply_quiet(now, lease_s, q.output))
                continue
            out = ch.apply(now, a.current, a.source, a.phases, lease_s)
            pilots[cid].write(out)
            if fast:
                key = ch.quiet_key()
                ci = inputs[pos]
                if key is not None and ci.active_phases == ch.active_phases and ci.config is ch.config:
                    quiet[cid] = Quiet(key, ci, a, out)
                elif quiet:
                    quiet.pop(cid, None)
        return alloc
