"""The read model: frozen views of every charger and of the site, built once per tick.

A view is what every face shows: the native API, its WebSocket and the device facades all render
from these values instead of reading the live `Charger` and `Engine` objects. Views hold absolute
times (session start, lease expiry, reading time), never ages, so time passing alone is no change;
renderers take `now` for the ages they show. A charger's view is rebuilt only when its change key
differs from the last one: the key holds the values as the faces show them (measured currents to
0.01 A, voltages and temperature to 0.1, energy to 1 Wh, power to 1 W), so measurement noise below
what any face shows is not a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from evpilot.config import MainsMeter
from evpilot.core.charger import Charger, ChargerConfig, ErrorFlag, WorkState
from evpilot.core.iec61851 import DRAW_THRESHOLD_A, PilotState
from evpilot.core.profiles import Limit
from evpilot.core.session import LimitReached
from evpilot.core.site import CircuitConfig, SiteConfig
from evpilot.core.sources import Source
from evpilot.core.units import Phases

_CHARGING = WorkState.CHARGING
_PLUGGED = ("B", "C", "D")
_NO_ERRORS: frozenset[ErrorFlag] = frozenset()


@dataclass(frozen=True, slots=True)
class LeaseView:
    """A leased limit on one charger: amps (a power lease's amps at the phases in use), expiry."""

    source: str
    amps: float
    expires_at: float | None
    watts: float | None


@dataclass(frozen=True, slots=True)
class SessionView:
    """The open session of a charger."""

    id: str
    started_at: float
    energy_kwh: float
    charging_s: float
    peak_power_w: float
    id_tag: str | None

    def duration_s(self, now: float) -> float:
        """Seconds since the session started."""
        return max(0.0, now - self.started_at)


@dataclass(frozen=True, slots=True)
class ChargerView:
    """One charger as the faces show it."""

    id: str
    config: ChargerConfig
    # The pilot letter the hardware reports (A to F), before faults and PWM make it a pilot state.
    letter: str
    pilot: PilotState
    work_state: WorkState
    plugged: bool
    enabled: bool
    available: bool
    authorized: bool
    auto_charge: bool
    start_requested: bool
    paused: bool
    # Everything but the allocation allows charging now.
    permitted: bool
    mode: str
    mode_setting: str | None
    active_phases: int
    phase_mode: str
    contactor: bool
    allocated: float
    available_current: float
    commanded: float
    signaled: float
    limit_source: Source
    available_source: Source
    currents: Phases
    voltages: Phases
    power_w: float
    temperature: float
    meter_kwh: float | None
    cable_limit: float | None
    user_limit: float | None
    override: float | None
    leases: tuple[LeaseView, ...]
    energy_cap_kwh: float | None
    time_cap_min: float | None
    under_power_w: float | None
    limit_reached: LimitReached | None
    errors: frozenset[ErrorFlag]
    session: SessionView | None
    lifetime_kwh: float
    # Since when a solar charger has been short of sun (its solar stop timer runs), else None.
    solar_short_since: float | None
    # The OCPP charging profile limit in force (amps, source, absolute time of its next change).
    profile: Limit | None = None

    @property
    def charging(self) -> bool:
        """Current flows through the closed contactor."""
        return self.work_state is _CHARGING

    @property
    def drawing(self) -> tuple[bool, bool, bool]:
        """Per phase L1..L3: the car draws current there."""
        c = self.currents
        return (c[0] > DRAW_THRESHOLD_A, c[1] > DRAW_THRESHOLD_A, c[2] > DRAW_THRESHOLD_A)

    def lease(self, source: str) -> LeaseView | None:
        """The lease set by `source`, if any."""
        return next((lease for lease in self.leases if lease.source == source), None)


# Every attribute of a Charger that a view shows or derives a shown value from.
_RAW = attrgetter(
    "config",
    "letter",
    "enabled",
    "available",
    "authorized",
    "auto_charge",
    "start_requested",
    "paused",
    "mode",
    "active_phases",
    "phase_mode",
    "contactor",
    "allocated",
    "available_current",
    "commanded",
    "signaled",
    "allocation_source",
    "available_source",
    "currents",
    "power_w",
    "meter_kwh",
    "cable_limit",
    "user_limit",
    "override",
    "energy_cap_kwh",
    "time_cap_min",
    "under_power_w",
    "limit_reached",
    "lifetime_kwh",
)


def charger_raw(
    ch: Charger,
    site_mode: str,
    solar_short_since: float | None,
    pilot: PilotState,
    work: WorkState,
    shown: dict[Any, Any] | None = None,
) -> tuple[Any, ...]:
    """What a charger's view is made of: equal means its key cannot have moved.

    Exact values, except voltages and temperature (as shown); cheaper than `charger_key`, so it is
    checked first. `shown`: voltages and temperatures already rounded, by value, for a caller that
    goes over many chargers at once (chargers on one supply read the same voltages).
    """
    s = ch.session
    v = ch.voltages
    t = ch.temperature
    # Voltages and temperature drift by tiny steps at every reading: compared as shown.
    if shown is None:
        shown_v: Any = (round(v[0], 1), round(v[1], 1), round(v[2], 1))
        shown_t: Any = round(t, 1)
    else:
        shown_v = shown.get(v)
        if shown_v is None:
            shown_v = shown[v] = (round(v[0], 1), round(v[1], 1), round(v[2], 1))
        shown_t = shown.get(t)
        if shown_t is None:
            shown_t = shown[t] = round(t, 1)
    return (
        _RAW(ch),
        shown_v,
        shown_t,
        pilot,
        work,
        site_mode,
        solar_short_since,
        None if s is None else (s.id, s.energy_kwh, s.charging_s, s.peak_power_w, s.id_tag),
        frozenset(ch.errors) if ch.errors else _NO_ERRORS,
        tuple((k, v.value, v.expires_at, v.watts) for k, v in ch.leases.items()) if ch.leases else (),
        None if ch.profile_cap is None else ch.profile_cap.last,
    )


def charger_key(
    ch: Charger,
    site_mode: str,
    solar_short_since: float | None,
    pilot: PilotState | None = None,
    work: WorkState | None = None,
) -> tuple[Any, ...]:
    """What makes a charger's view change, at the precision the faces show.

    `pilot` and `work`: the charger's pilot and work state when the caller knows them (right after
    a step they are the ones the charger last reported); found from the charger otherwise.
    """
    s = ch.session
    c = ch.currents
    v = ch.voltages
    return (
        ch.config,
        ch.pilot if pilot is None else pilot,
        ch.work_state() if work is None else work,
        ch.enabled,
        ch.available,
        ch.authorized,
        ch.auto_charge,
        ch.start_requested,
        ch.paused,
        ch.mode or site_mode,
        ch.mode,
        ch.active_phases,
        ch.phase_mode,
        ch.contactor,
        ch.allocated,
        ch.available_current,
        ch.commanded,
        ch.signaled,
        ch.allocation_source,
        ch.available_source,
        (round(c[0], 2), round(c[1], 2), round(c[2], 2)) if c[0] or c[1] or c[2] else c,
        (round(v[0], 1), round(v[1], 1), round(v[2], 1)),
        round(ch.power_w) if ch.power_w else 0,
        round(ch.temperature, 1),
        None if ch.meter_kwh is None else round(ch.meter_kwh, 3),
        ch.cable_limit,
        ch.user_limit,
        ch.override,
        tuple((k, v.value, v.expires_at, v.watts) for k, v in ch.leases.items()) if ch.leases else (),
        ch.energy_cap_kwh,
        ch.time_cap_min,
        ch.under_power_w,
        ch.limit_reached,
        frozenset(ch.errors) if ch.errors else _NO_ERRORS,
        None if s is None else (s.id, round(s.energy_kwh, 3), round(s.charging_s), s.id_tag),
        round(ch.lifetime_kwh, 3),
        ch.letter,
        solar_short_since,
        None if ch.profile_cap is None else ch.profile_cap.last,
    )


def charger_view(ch: Charger, key: tuple[Any, ...]) -> ChargerView:
    """The view of `ch` (its values now; `key` from `charger_key` supplies the derived ones)."""
    s = ch.session
    session = None
    if s is not None:
        session = SessionView(s.id, s.started_at, s.energy_kwh, s.charging_s, s.peak_power_w, s.id_tag)
    leases = tuple(LeaseView(k, v.value, v.expires_at, v.watts) for k, v in ch.leases.items())
    return ChargerView(
        ch.config.id,
        ch.config,
        key[36],
        key[1],
        key[2],
        key[36] in _PLUGGED,
        ch.enabled,
        ch.available,
        ch.authorized,
        ch.auto_charge,
        ch.start_requested,
        ch.paused,
        ch.permitted(),
        key[9],
        ch.mode,
        ch.active_phases,
        ch.phase_mode,
        ch.contactor,
        ch.allocated,
        ch.available_current,
        ch.commanded,
        ch.signaled,
        ch.allocation_source,
        ch.available_source,
        ch.currents,
        ch.voltages,
        ch.power_w,
        ch.temperature,
        ch.meter_kwh,
        ch.cable_limit,
        ch.user_limit,
        ch.override,
        leases,
        ch.energy_cap_kwh,
        ch.time_cap_min,
        ch.under_power_w,
        ch.limit_reached,
        key[33],
        session,
        ch.lifetime_kwh,
        key[37],
        key[38],
    )


@dataclass(frozen=True, slots=True)
class MainsMeterView:
    """The simulated mains meter's full report (only while it is the site's mains meter)."""

    voltages: Phases
    powers: Phases
    import_kwh: float
    export_kwh: float
    frequency: float


@dataclass(frozen=True, slots=True)
class MainsView:
    """The latest mains reading the engine used."""

    currents: Phases
    taken_at: float
    fresh: bool
    meter: MainsMeterView | None


@dataclass(frozen=True, slots=True)
class SiteCapView:
    """An external cap on all chargers together (A per phase), maybe leased."""

    source: str
    amps: float
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class OverloadView:
    """The overload figures of one node (`mains`, `circuit:<name>`)."""

    node: str
    events: int
    longest_s: float
    over_now: bool
    stalled: int


@dataclass(frozen=True, slots=True)
class SimView:
    """The simulator's state (only while it runs)."""

    time: float
    time_of_day_h: float
    pv_w: float
    house: Phases
    battery_w: float
    ambient_c: float
    frequency: float


@dataclass(frozen=True, slots=True)
class AllocationView:
    """The last `compute`'s site figures."""

    base_load: Phases
    available: Phases
    solar_surplus: float | None
    fallback: bool
    mains_fresh: bool


@dataclass(frozen=True, slots=True)
class SiteView:
    """The site as the faces show it."""

    config: SiteConfig
    # The config's `site.mains_meter`: `sim`, `api`, `none` or a meter driver's settings.
    mains_meter: MainsMeter
    mains: MainsView | None
    allocation: AllocationView | None
    rejected: tuple[tuple[str, int], ...]
    grid_relay_open: bool
    caps: tuple[SiteCapView, ...]
    battery_current: float | None
    battery_at: float | None
    overloads: tuple[OverloadView, ...]
    chargers: tuple[str, ...]
    sim: SimView | None

    @property
    def mode(self) -> str:
        """The site's default mode."""
        return self.config.mode

    @property
    def fallback(self) -> bool:
        """A stale reading holds chargers at their fallback current."""
        return self.allocation is not None and self.allocation.fallback

    def circuit(self, name: str | None) -> CircuitConfig | None:
        """The circuit called `name`, if any."""
        return next((c for c in self.config.circuits if c.name == name), None)

    @property
    def frequency(self) -> float:
        """The grid frequency (Hz): the simulator's, else nominal."""
        return self.sim.frequency if self.sim is not None else 50.0


# ---- the native API's documents, rendered from views -------------------------------------------


def charger_doc(v: ChargerView, now: float) -> dict[str, Any]:
    """The native API's full view of one charger (`GET /api/chargers/{id}`, `charger` frames)."""
    s = v.session
    session = None
    if s is not None:
        session = {
            "id": s.id,
            "started_at": round(s.started_at, 3),
            "duration_s": round(s.duration_s(now)),
            "charging_s": round(s.charging_s),
            "energy_kwh": round(s.energy_kwh, 3),
            "peak_power_w": round(s.peak_power_w, 1),
            "id_tag": s.id_tag,
        }
    cfg = v.config
    a, u = v.currents, v.voltages
    return {
        "id": v.id,
        "name": cfg.name,
        "state": v.pilot.value,
        "work_state": v.work_state.value,
        "plugged": v.plugged,
        "charging": v.work_state is _CHARGING,
        "enabled": v.enabled,
        "available": v.available,
        "authorized": v.authorized,
        "auto_charge": v.auto_charge,
        "start_requested": v.start_requested,
        "mode": v.mode,
        "mode_setting": v.mode_setting,
        "phases": v.active_phases,
        "phase_mode": v.phase_mode,
        "current": {
            "allocated": round(v.allocated, 1),
            "available": round(v.available_current, 1),
            "commanded": round(v.commanded, 1),
            "signaled": round(v.signaled, 1),
        },
        "limit_source": v.limit_source.text,
        "available_source": v.available_source.text,
        "amperage": [round(a[0], 2), round(a[1], 2), round(a[2], 2)],
        "voltage": [round(u[0], 1), round(u[1], 1), round(u[2], 1)],
        "power_w": round(v.power_w, 1),
        "temperature": round(v.temperature, 1),
        "limits": {
            "max_current": cfg.max_current,
            "min_current": cfg.min_current,
            "cable": v.cable_limit,
            "user": v.user_limit,
            "override": v.override,
            # Empty for most chargers: built only when there is something in them.
            "leases": {
                lease.source: {
                    "amps": lease.amps,
                    "expires_in_s": None if lease.expires_at is None else round(lease.expires_at - now, 1),
                }
                for lease in v.leases
            }
            if v.leases
            else {},
            "profiles": {} if v.profile is None else _profiles(v.profile, now),
        },
        "caps": {"energy_kwh": v.energy_cap_kwh, "time_min": v.time_cap_min},
        "limit_reached": None if v.limit_reached is None else v.limit_reached.value,
        "errors": sorted([e.value for e in v.errors]) if v.errors else [],
        "session": session,
        "lifetime_kwh": round(v.lifetime_kwh, 3),
    }


def _profiles(limit: Limit | None, now: float) -> dict[str, Any]:
    if limit is None:
        return {}
    nxt = limit.next_change
    return {
        limit.source: {
            "amps": round(limit.amps, 1),
            "next_change_in_s": None if nxt is None else round(nxt - now, 1),
        }
    }


def charging_doc(v: ChargerView, site: SiteView) -> dict[str, Any]:
    """Seed 002's `/api/v1/charging` fields for one charger."""
    return {
        "voltage": [round(x, 2) for x in v.voltages],
        "amperage": [round(a, 2) for a in v.currents],
        "allocatedAmperage": round(v.allocated, 1),
        "commandedAmperage": round(v.commanded, 1),
        "availableAmperage": round(v.available_current, 1),
        "signaledAmperage": round(v.signaled, 1),
        "frequency": round(site.frequency, 3),
        "energyImported": round(v.meter_kwh or 0.0, 3),
        "lastActivePower": round(v.power_w, 1),
    }


def site_doc(v: SiteView, now: float) -> dict[str, Any]:
    """The native API's view of the site (`GET /api/site`, `site` frames)."""
    mains: dict[str, Any] | None = None
    if v.mains is not None:
        m = v.mains
        mains = {
            "currents": [round(a, 2) for a in m.currents],
            "age_s": round(now - m.taken_at, 1),
            "fresh": m.fresh,
        }
        if m.meter is not None:
            mains.update(
                voltages=[round(x, 1) for x in m.meter.voltages],
                powers=[round(p, 1) for p in m.meter.powers],
                import_kwh=round(m.meter.import_kwh, 3),
                export_kwh=round(m.meter.export_kwh, 3),
                frequency=round(m.meter.frequency, 3),
            )
    alloc = v.allocation
    cfg = v.config
    doc: dict[str, Any] = {
        "mode": cfg.mode,
        "mains_limit": cfg.mains_limit,
        "capacity_limit": cfg.capacity_limit,
        "mains": mains,
        "base_load": [round(a, 2) for a in alloc.base_load] if alloc else None,
        "available": [round(a, 2) for a in alloc.available] if alloc else None,
        "solar_surplus": None
        if alloc is None or alloc.solar_surplus is None
        else round(alloc.solar_surplus, 2),
        "fallback": alloc.fallback if alloc else False,
        "rejected_readings": dict(v.rejected),
        "grid_relay_open": v.grid_relay_open,
        "site_limits": {
            cap.source: {
                "amps": cap.amps,
                "expires_in_s": None if cap.expires_at is None else round(cap.expires_at - now, 1),
            }
            for cap in v.caps
        },
        "battery_current": v.battery_current,
        "overloads": {
            o.node: {
                "events": o.events,
                "longest_s": round(o.longest_s, 1),
                "over_now": o.over_now,
                "stalled": o.stalled,
            }
            for o in v.overloads
        },
        "chargers": sorted(v.chargers),
    }
    if v.sim is not None:
        s = v.sim
        doc["sim"] = {
            "time": round(s.time, 1),
            "time_of_day_h": round(s.time_of_day_h, 3),
            "pv_w": round(s.pv_w, 1),
            "house": [round(a, 2) for a in s.house],
            "battery_w": round(s.battery_w, 1),
            "ambient_c": s.ambient_c,
        }
    return doc
