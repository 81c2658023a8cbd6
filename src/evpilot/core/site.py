"""The site as data: grid connection, circuit tree, meters and the per-tick snapshot."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from evpilot.core.charger import ChargerConfig, Phases
from evpilot.core.sources import Source
from evpilot.core.units import NOMINAL_VOLTAGE as NOMINAL_VOLTAGE

# §14a EnWG: while the grid operator's relay is open, charging may draw at most 4.2 kW.
GRID_RELAY_W = 4200.0


@dataclass(frozen=True, slots=True)
class CircuitConfig:
    """A sub-distribution with a per-phase fuse, nested under `parent` (None = mains)."""

    name: str
    limit: float
    parent: str | None = None
    # A circuit with its own meter: without a fresh reading its chargers fall back.
    metered: bool = False
    # The fuse upstream when `limit` is a setting below it (Shelly auto_balance's max_current): the
    # meter's readings are judged plausible against this, not the limit (None: the limit is the fuse).
    fuse: float | None = None


@dataclass(frozen=True, slots=True)
class SolarConfig:
    """Solar-mode tuning: START (A, sum of phases), STOP timer (min, 0 = never), IMPORT (A)."""

    start_current: float = 6.0
    stop_min: float = 10.0
    max_import: float = 0.0
    start_grace_s: float = 40.0


@dataclass(frozen=True, slots=True)
class PhaseSwitchConfig:
    """Timers of the automatic 1/3-phase switch."""

    down_hold_s: float = 30.0
    up_hold_s: float = 60.0
    min_interval_s: float = 300.0
    margin: float = 1.0
    detect_single_phase_s: float = 60.0
    max_per_session: int = 4


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """Static limits and tuning of one site."""

    mains_limit: float = 25.0
    capacity_limit: float | None = None
    cap_stop_s: float = 0.0
    mode: str = "smart"
    circuits: tuple[CircuitConfig, ...] = ()
    meter_timeout_s: float = 11.0
    fallback_current: float = 6.0
    exclude_self_current: bool = True
    battery_timeout_s: float = 11.0
    solar: SolarConfig = field(default_factory=SolarConfig)
    phase_switch: PhaseSwitchConfig = field(default_factory=PhaseSwitchConfig)
    increase_interval_s: float = 5.0
    ramp_step: float = 4.0
    shortage_pause_s: float = 60.0
    ev_headroom: float = 2.0
    increase_deadband: float = 0.5
    min_run_s: float = 300.0
    # A rise below `increase_deadband` waits this long after the charger's last raise, then goes out.
    deadband_hold_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Reading:
    """A per-phase current reading (A, + import) taken at `taken_at`."""

    currents: Phases
    taken_at: float


@dataclass(frozen=True, slots=True)
class ChargerInput:
    """What `compute` needs to know about one charger this tick."""

    config: ChargerConfig
    mode: str
    demand: int
    limit: float
    limit_source: Source
    measured: Phases
    session_kwh: float = 0.0
    phase_mode: str = "not_present"
    active_phases: int = 3
    charging: bool = False
    # When `measured` was taken (None: not tracked); older than the meter timeout = stale.
    measured_at: float | None = None
    plugged: bool = True
    # The lowest current signaled to the charger from `measured_at` until now: a reading older than
    # the mains reading is never subtracted beyond it (the car cannot still draw more than that).
    limit_low: float = math.inf
    # A current the charger's device may keep drawing whatever it is told (it refused or has not
    # taken a lower limit yet, or lost its link while an earlier lease runs): 0 when it follows.
    held: float = 0.0
    # The highest current signaled to the charger from `measured_at` until now: a reading older than
    # the mains reading may show less than the car has risen to since (only ever used to wait, never
    # subtracted).
    limit_high: float = 0.0


@dataclass(frozen=True, slots=True)
class ChargerMemo:
    """Per-charger controller memory carried from one tick to the next."""

    current: float = 0.0
    phases: int = 3
    last_raise: float = -1e18
    paused_until: float = -1e18
    solar_started: float | None = None
    solar_short_since: float | None = None
    # Phases of MIN a solar start was admitted on (1 while the car's phase count was unknown).
    solar_phases: int | None = None
    phase_down_since: float | None = None
    phase_up_since: float | None = None
    last_switch: float = -1e18
    one_phase_since: float | None = None
    single_phase_car: bool = False
    ev_limited: bool = False
    running_since: float = -1e18
    # The car's phase count once seen charging (1 or 3); None until then.
    car_phases: int | None = None
    switches: int = 0
    # When the charger last went from drawing to 0 A (a shortage turn counts from here).
    stopped_at: float = -1e18


@dataclass(frozen=True, slots=True)
class DrawFloor:
    """The least a charger drew on each mains phase in its current window (from `since`) and the one before.

    A circuit meter may lag its chargers; the smaller of the two is a floor for what the charger drew
    at any time during at least the last window.
    """

    low: Phases
    low_prev: Phases
    since: float


@dataclass(frozen=True, slots=True)
class BalancerState:
    """Controller memory of the whole site."""

    chargers: Mapping[str, ChargerMemo] = field(default_factory=dict)
    capacity_over_since: float | None = None
    # `taken_at` of a mains reading above the trip factor, waiting for a second one to confirm it.
    trip_at: float | None = None
    # Per charger below a metered circuit: the least it drew lately (see `DrawFloor`).
    draw_floors: Mapping[str, DrawFloor] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SiteLimit:
    """An external cap on the chargers' total per-phase current, with its source."""

    amps: float
    source: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything `compute` decides from, frozen at one moment."""

    site: SiteConfig
    chargers: tuple[ChargerInput, ...]
    mains: Reading | None = None
    circuit_meters: Mapping[str, Reading] = field(default_factory=dict)
    battery_current: float | None = None
    battery_at: float | None = None
    grid_relay_open: bool = False
    site_limits: tuple[SiteLimit, ...] = ()
    state: BalancerState = field(default_factory=BalancerState)


@dataclass(frozen=True, slots=True)
class ChargerAllocation:
    """The decision for one charger: current per phase, phase count and the binding source."""

    current: float
    phases: int
    source: Source


@dataclass(frozen=True, slots=True)
class Allocation:
    """The result of one `compute`: per-charger decisions, site figures and the next state."""

    chargers: Mapping[str, ChargerAllocation]
    state: BalancerState
    mains_fresh: bool
    fallback: bool
    base_load: Phases
    available: Phases
    solar_surplus: float | None = None
    # Readings refused at the edge of the core this tick (`mains`, `circuit:<name>`, `charger:<id>`,
    # `battery`).
    rejected: tuple[str, ...] = ()
