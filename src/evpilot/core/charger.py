"""One charge point: pilot control, the current chain, flags, limits and its session."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from evpilot.core import commands as rules
from evpilot.core import events as ev
from evpilot.core import sources as src_
from evpilot.core.commands import MODES as MODES
from evpilot.core.commands import PHASE_MODES as PHASE_MODES
from evpilot.core.iec61851 import (
    DRAW_THRESHOLD_A,
    STOP_DEADLINE_S,
    PilotState,
    contactor_may_close,
    duty_for_current,
    pilot_state,
    quantize_current,
)
from evpilot.core.profiles import ConnectorCap
from evpilot.core.session import LimitReached, Session, SessionRecord, StopReason, cap_reached
from evpilot.core.sources import Source
from evpilot.core.units import NOMINAL_VOLTAGE, PhaseMap, PhaseRotation, phase_map
from evpilot.core.units import ZERO3 as ZERO3
from evpilot.core.units import Phases as Phases
from evpilot.core.values import positional

# The signaled current's changes kept at most (a quiet charger's few; older ones are merged).
SIGNAL_LOG_MAX = 64
# An increase of the signaled current is allowed at most this often (IEC 61851 pacing).
INCREASE_INTERVAL_S = 5.0
CABLE_LIMITS = (13.0, 20.0, 32.0, 63.0)
# Charging power must stay under the under-power limit this long before the session is stopped,
# so that a car ramping up or balancing its cells is not cut off at once.
UNDER_POWER_S = 60.0


class WorkState(StrEnum):
    """The Shelly Top AC work states."""

    FREE = "charger_free"
    INSERT = "charger_insert"
    WAIT = "charger_wait"
    CHARGING = "charger_charging"
    PAUSE = "charger_pause"
    END = "charger_end"
    FAULT = "charger_fault"


class ErrorFlag(StrEnum):
    """Fault and warning flags a charger can raise."""

    PILOT_FAULT = "pilot_fault"
    DIODE_SHORT = "diode_short"
    RCM_TRIGGERED = "rcm_triggered"
    TEMPERATURE_HIGH = "temperature_high"
    EV_NOT_STOPPING = "ev_not_stopping"


# Flags that stop charging until cleared (temperature recovers by itself at RESUME).
FAULT_FLAGS = frozenset(
    {ErrorFlag.PILOT_FAULT, ErrorFlag.DIODE_SHORT, ErrorFlag.RCM_TRIGGERED, ErrorFlag.EV_NOT_STOPPING}
)
# Module-level aliases: looking an enum member up on its class is slow, and these run every tick.
_TEMPERATURE_HIGH = ErrorFlag.TEMPERATURE_HIGH
_BLOCKING_FLAGS = FAULT_FLAGS | {_TEMPERATURE_HIGH}
_PLUGGED_LETTERS = ("B", "C", "D")
_PILOT_E = PilotState.E
_PILOT_F = PilotState.F
_WORK_FAULT = WorkState.FAULT
_WORK_FREE = WorkState.FREE
_WORK_CHARGING = WorkState.CHARGING
# Duty cycle per signaled current: a pure conversion of a 0.1 A-quantized value (a few hundred at most).
_DUTY: dict[float, float] = {}


@dataclass(frozen=True, slots=True)
class ChargerConfig:
    """Static description of a charge point (validated by the config layer)."""

    id: str
    name: str = ""
    max_current: float = 32.0
    min_current: float = 6.0
    phases: int = 3
    phase: int = 1
    phase_rotation: PhaseRotation = PhaseRotation.L1L2L3
    circuit: str | None = None
    priority: int = 0
    safe_current: float = 6.0
    max_temp: float = 65.0
    resume_temp: float = 55.0
    auto_charge: bool = True
    require_auth: bool = False
    mode: str | None = None
    contactor2: str = "not_present"
    fixed_cable: bool = True

    @property
    def phase_map(self) -> PhaseMap:
        """Where this charger's L1..L3 land on the mains (`phase` if 1-phase, else `phase_rotation`)."""
        first = self.phase - 1 if self.phases == 1 else self.phase_rotation.first
        return phase_map(self.phases, first)


def mains_draw(config: ChargerConfig, currents: Phases) -> Phases:
    """A charger's L1..L3 currents placed on the mains phases."""
    return config.phase_map.to_mains(currents)


@dataclass(frozen=True, slots=True)
class DeviceTransactions:
    """A charger's own transactions (an OCPP wallbox's): how many started and ended, whether one runs,
    and how the last one ended (its reason, and its energy from meter start to meter stop if known)."""

    started: int = 0
    ended: int = 0
    running: bool = False
    end_reason: StopReason = StopReason.USER
    end_energy_kwh: float | None = None


@dataclass(frozen=True, slots=True)
class PilotReading:
    """What the pilot hardware and the EV meter report at one moment."""

    taken_at: float
    letter: str
    currents: Phases = ZERO3
    voltages: Phases = (230.0, 230.0, 230.0)
    energy_kwh: float | None = None
    temperature: float = 25.0
    rcm_fault: bool = False
    diode_fault: bool = False
    cable_limit: float | None = None
    # When the currents were measured, where a separate meter or a link read them earlier than
    # `taken_at` (None: at `taken_at`); the balancer's stale rule looks at this time.
    measured_at: float | None = None
    # A current the device may keep drawing whatever it is signaled: a setpoint-level charger that
    # refused (or has not yet taken) a lower limit, or lost its link while an earlier lease runs.
    held: float = 0.0
    # A charger that runs its own transactions reports them (None: it does not): evpilot's session
    # ends with the device's transaction, and a new one starts with the device's next transaction.
    transactions: DeviceTransactions | None = None


@dataclass(frozen=True, slots=True)
class PilotOutput:
    """What the charger tells its hardware: PWM duty, contactor and phase count."""

    duty: float
    signaled: float
    contactor: bool
    phases: int
    fallback_at: float
    safe_current: float


# Built for every driven charger on every tick: filled slot by slot (`core.values.positional`).
_pilot_output = positional(PilotOutput)


@dataclass(slots=True)
class Lease:
    """A limit that lapses at `expires_at` (None = never); with `watts`, a power cap at the phases in use."""

    value: float
    expires_at: float | None
    watts: float | None = None


@dataclass(slots=True)
class Charger:
    """A charge point's live state; every method takes `now` and does no I/O."""

    config: ChargerConfig
    enabled: bool = True
    available: bool = True
    authorized: bool = True
    auto_charge: bool = True
    start_requested: bool = False
    # An explicit stop pauses the session even with auto_charge on, until a start or unplug.
    paused: bool = False
    user_limit: float | None = None
    override: float | None = None
    leases: dict[str, Lease] = field(default_factory=dict)
    # OCPP charging profiles set by a backend: a schedule cap with source `ocpp:<purpose>`.
    profile_cap: ConnectorCap | None = None
    energy_cap_kwh: float | None = None
    time_cap_min: float | None = None
    under_power_w: float | None = None
    under_power_since: float | None = None
    mode: str | None = None
    phase_mode: str = "not_present"
    # observed
    letter: str = "A"
    currents: Phases = ZERO3
    voltages: Phases = (230.0, 230.0, 230.0)
    temperature: float = 25.0
    cable_limit: float | None = None
    reading_at: float = 0.0
    meter_kwh: float | None = None
    power_w: float = 0.0
    # chain
    allocated: float = 0.0
    allocation_source: Source = src_.NONE
    allocation_expires: float = 0.0
    active_phases: int = 3
    target_phases: int = 3
    available_current: float = 0.0
    available_source: Source = src_.MAX
    commanded: float = 0.0
    signaled: float = 0.0
    last_increase_at: float = -1e18
    contactor: bool = False
    # The signaled current's changes (time, new value), oldest first (see `lowest_signaled`).
    signal_log: list[tuple[float, float]] = field(default_factory=list)
    # A current the device may keep drawing whatever it is signaled (`PilotReading.held`).
    held: float = 0.0
    # The device's transactions as last reported (`PilotReading.transactions`).
    device_tx: DeviceTransactions | None = None
    stop_requested_at: float | None = None
    errors: set[ErrorFlag] = field(default_factory=set)
    limit_reached: LimitReached | None = None
    ev_done: bool = False
    has_charged: bool = False
    # energy
    session: Session | None = None
    lifetime_kwh: float = 0.0
    session_seq: int = 0
    pending_tag: str | None = None
    # How the pending or running authorization was given (AuthMethod value), for the session record.
    pending_method: str | None = None
    # Set by the runtime per run: keeps session ids unique when a sped-up clock repeats times.
    run_tag: str = ""
    # Emitted events, oldest first; whoever runs the charger drains them.
    events: list[ev.ChargerEvent] = field(default_factory=list)
    # What the last events said, to emit a change once: the error flags, the pilot and work state.
    reported_errors: frozenset[ErrorFlag] = frozenset()
    reported_pilot: PilotState = PilotState.A
    reported_work: WorkState = WorkState.FREE

    @classmethod
    def create(cls, config: ChargerConfig, lifetime_kwh: float = 0.0) -> Charger:
        """A fresh charger for `config`, with a persisted lifetime counter."""
        return cls(
            config=config,
            auto_charge=config.auto_charge,
            authorized=not config.require_auth,
            mode=config.mode,
            phase_mode=config.contactor2,
            active_phases=config.phases,
            target_phases=config.phases,
            lifetime_kwh=lifetime_kwh,
        )

    # ---- commands -------------------------------------------------------------------------

    def set_enabled(self, value: bool) -> None:
        """Allow or forbid charging."""
        self.enabled = bool(value)

    def set_available(self, value: bool) -> None:
        """Put the charge point in or out of service."""
        self.available = bool(value)

    def set_authorized(self, value: bool, id_tag: str | None = None, method: str | None = None) -> None:
        """Grant or revoke authorization for the connected EV; `method` is how (card, remote, api)."""
        self.authorized = bool(value)
        if value and id_tag is not None and self.session is not None:
            self.session.id_tag = id_tag
        self.pending_tag = id_tag
        self.pending_method = (method or "api") if value else None
        if value and self.session is not None and (method is not None or id_tag is not None):
            self.session.auth_method = self.pending_method

    def set_auto_charge(self, value: bool) -> None:
        """Start on plug-in (True) or wait for an explicit start (False)."""
        self.auto_charge = bool(value)

    def request_start(self, now: float) -> None:
        """Explicit start (start_charging = true)."""
        self.start_requested = True
        self.paused = False

    def request_stop(self, now: float) -> None:
        """Explicit stop (start_charging = false): pauses the session."""
        self.start_requested = False
        self.paused = True

    def set_user_limit(self, amps: float | None) -> None:
        """User current limit, 6 A to MAX in 0.1 A steps; None removes it."""
        self.user_limit = rules.user_limit(amps, self.config)

    def set_override(self, amps: float | None) -> None:
        """Override current (0 = off, else 6 A to MAX)."""
        self.override = rules.override(amps, self.config)

    def set_lease(self, source: str, amps: float | None, expires_at: float | None) -> None:
        """A leased external cap in A (0 stops charging); None hands control back."""
        value = rules.lease_amps(source, amps)
        if value is None:
            self.leases.pop(source, None)
            return
        self.leases[source] = Lease(value, expires_at)

    def set_power_lease(self, source: str, watts: float | None, expires_at: float | None) -> None:
        """A leased power cap in W, turned into A with the phases in use at every tick; None hands back."""
        value = rules.lease_watts(source, watts)
        if value is None:
            self.leases.pop(source, None)
            return
        self.leases[source] = Lease(self._power_amps(value), expires_at, value)

    def _power_amps(self, watts: float) -> float:
        return min(80.0, watts / (NOMINAL_VOLTAGE * self.active_phases))

    def set_energy_cap(self, kwh: float | None) -> None:
        """Session energy cap, 0-1000 kWh (None or 0 = none)."""
        self.energy_cap_kwh = rules.energy_cap(kwh)
        if self.limit_reached == LimitReached.ENERGY:
            self.limit_reached = None

    def set_time_cap(self, minutes: float | None) -> None:
        """Session duration cap, 0-1440 min (None or 0 = none)."""
        self.time_cap_min = rules.time_cap(minutes)
        if self.limit_reached == LimitReached.TIME:
            self.limit_reached = None

    def set_under_power_limit(self, watts: float | None) -> None:
        """Stop the session once charging power stays below `watts` (0-100,000 W; None or 0 = off)."""
        self.under_power_w = rules.under_power(watts)
        self.under_power_since = None
        if self.limit_reached == LimitReached.UNDER_POWER:
            self.limit_reached = None

    def reset_lifetime(self) -> None:
        """Zero the lifetime energy counter."""
        self.lifetime_kwh = 0.0

    def set_mode(self, mode: str | None) -> None:
        """Charging mode (off, normal, smart, solar, min+solar); None follows the site."""
        self.mode = rules.mode(mode)

    def set_phase_mode(self, mode: str) -> None:
        """Second-contactor mode (not_present, always_1p, always_3p, solar_1p, auto)."""
        self.phase_mode = rules.phase_mode(mode, self.config)

    def reset_faults(self) -> None:
        """Clear latched faults (the hardware re-raises any that persist)."""
        self.errors -= FAULT_FLAGS

    # ---- derived ----------------------------------------------------------------------------

    @property
    def plugged(self) -> bool:
        """A vehicle is connected."""
        return self.letter in _PLUGGED_LETTERS

    @property
    def faulted(self) -> bool:
        """A latched fault stops charging."""
        return not self.errors.isdisjoint(FAULT_FLAGS)

    def permitted(self) -> bool:
        """Everything but the allocation allows charging now."""
        return (
            self.letter in _PLUGGED_LETTERS
            and self.enabled
            and self.available
            and self.authorized
            and (self.auto_charge or self.start_requested)
            and not self.paused
            and self.errors.isdisjoint(_BLOCKING_FLAGS)
            and self.limit_reached is None
        )

    def demand(self) -> int:
        """0 = needs nothing, 1 = offer MIN (car connected, not requesting), 2 = wants current."""
        if not self.permitted():
            return 0
        if self.letter in ("C", "D"):
            return 2
        return 0 if self.ev_done else 1

    def own_limit(self, now: float) -> tuple[float, Source]:
        """The lowest of this charger's own caps and the source that binds."""
        best, source = self.config.max_current, src_.MAX
        if self.cable_limit is not None and self.cable_limit < best:
            best, source = self.cable_limit, src_.CABLE
        if self.user_limit is not None and self.user_limit < best:
            best, source = self.user_limit, src_.USER
        if self.override is not None and self.override < best:
            best, source = self.override, src_.OVERRIDE
        if self.leases:
            for name, lease in self.leases.items():
                if lease.expires_at is not None and now >= lease.expires_at:
                    continue
                if lease.watts is not None:
                    # The phases in use, not the configured ones: a 3-phase charger on 1 phase may
                    # draw three times the current for the same power.
                    lease.value = self._power_amps(lease.watts)
                if lease.value < best:
                    best, source = lease.value, src_.lease(name)
        if self.profile_cap is not None:
            scheduled = self.profile_cap.limit_at(now, self.active_phases)
            if scheduled is not None and scheduled.amps < best:
                best, source = max(0.0, scheduled.amps), src_.parse(scheduled.source)
        if _TEMPERATURE_HIGH in self.errors:
            best, source = 0.0, src_.TEMPERATURE
        return best, source

    def drop_expired_leases(self, now: float) -> list[str]:
        """Remove lapsed leases; returns their names."""
        if not self.leases:
            return []
        gone = [k for k, v in self.leases.items() if v.expires_at is not None and now >= v.expires_at]
        for name in gone:
            del self.leases[name]
        return gone

    @property
    def pilot(self) -> PilotState:
        """The current control pilot state."""
        letter = self.letter
        if letter == "E":
            return _PILOT_E
        if letter == "F" or not self.errors.isdisjoint(FAULT_FLAGS):
            return _PILOT_F
        return pilot_state(letter, self.signaled > 0)

    def work_state(self) -> WorkState:
        """The Shelly-style work state."""
        if self.faulted or self.letter in ("E", "F"):
            return WorkState.FAULT
        if not self.plugged:
            return WorkState.FREE
        if self.contactor and max(self.currents) > DRAW_THRESHOLD_A:
            return WorkState.CHARGING
        if self.limit_reached is not None or self.ev_done:
            return WorkState.END
        if self.session is None:
            return WorkState.INSERT
        if not self.permitted():
            return WorkState.PAUSE
        return WorkState.WAIT

    # ---- cycle ------------------------------------------------------------------------------

    def observe(self, reading: PilotReading) -> None:
        """Take in a pilot/meter reading: plug events, energy, temperature and faults."""
        now = reading.taken_at
        prev = self.letter
        self.letter = reading.letter
        self.currents = reading.currents
        self.voltages = reading.voltages
        self.temperature = reading.temperature
        self.cable_limit = None if self.config.fixed_cable else reading.cable_limit
        measured_at = reading.measured_at
        self.reading_at = now if measured_at is None else measured_at
        self.held = reading.held
        amps, volts = reading.currents, reading.voltages
        # Same order of operations as sum() over the three products.
        self.power_w = amps[0] * volts[0] + amps[1] * volts[1] + amps[2] * volts[2]
        if reading.energy_kwh is not None:
            if self.meter_kwh is not None and reading.energy_kwh > self.meter_kwh:
                self._add_energy(reading.energy_kwh - self.meter_kwh)
            self.meter_kwh = reading.energy_kwh
        if self.session is not None:
            self.session.peak_power_w = max(self.session.peak_power_w, self.power_w)
        tx = reading.transactions
        if tx is not None and tx != self.device_tx:
            self._follow_transactions(now, tx)

        if reading.letter == "E":
            self.errors.add(ErrorFlag.PILOT_FAULT)
        if reading.diode_fault:
            self.errors.add(ErrorFlag.DIODE_SHORT)
        if reading.rcm_fault:
            self.errors.add(ErrorFlag.RCM_TRIGGERED)
        if reading.temperature >= self.config.max_temp:
            self.errors.add(_TEMPERATURE_HIGH)
        elif reading.temperature <= self.config.resume_temp:
            self.errors.discard(_TEMPERATURE_HIGH)
        if self.errors != self.reported_errors:
            self._report_faults(now)

        was_plugged = prev in _PLUGGED_LETTERS
        plugged = reading.letter in _PLUGGED_LETTERS
        if was_plugged and not plugged:
            lost = reading.letter in ("E", "F")
            self._end_session(now, StopReason.FAULT if lost else StopReason.EV_DISCONNECTED)
            self.start_requested = False
            self.paused = False
            self.limit_reached = None
            self.ev_done = False
            self.has_charged = False
            self.authorized = not self.config.require_auth
            self.events.append(ev.Unplugged(self.config.id, now))
        elif not was_plugged and plugged:
            self.events.append(ev.Plugged(self.config.id, now))
        # A healthy empty socket (after unplug, or after a pilot fault went away) clears faults.
        if reading.letter == "A" and prev != "A" and not reading.rcm_fault and not reading.diode_fault:
            self.errors -= FAULT_FLAGS
        if self.letter in ("C", "D"):
            if self.contactor and max(self.currents) > DRAW_THRESHOLD_A:
                self.has_charged = True
            self.ev_done = False
        elif self.letter == "B" and self.has_charged and self.signaled > 0:
            self.ev_done = True

        if plugged and self.session is None and self.permitted():
            self._start_session(now)
        # `cap_reached` finds nothing without a cap, and `_check_under_power` only clears without a limit.
        if (
            self.session is not None
            and self.limit_reached is None
            and (self.energy_cap_kwh or self.time_cap_min)
        ):
            reached = cap_reached(self.session, now, self.energy_cap_kwh, self.time_cap_min)
            if reached is not None:
                self.limit_reached = reached
                self.events.append(ev.LimitReached(self.config.id, now, reached))
        if self.under_power_w is None:
            self.under_power_since = None
        else:
            self._check_under_power(now)
        if self.errors != self.reported_errors:
            self._report_faults(now)

    def _follow_transactions(self, now: float, tx: DeviceTransactions) -> None:
        """The device ended or started a transaction: evpilot's session follows it."""
        seen = self.device_tx or DeviceTransactions()
        self.device_tx = tx
        if tx.ended > seen.ended:
            session = self.session
            if session is not None:
                if tx.end_energy_kwh is not None and tx.end_energy_kwh >= 0.0:
                    # Meter stop minus meter start: also what the charger drew while evpilot was away.
                    extra = tx.end_energy_kwh - session.energy_kwh
                    if extra > 0.0:
                        self.lifetime_kwh += extra
                    session.energy_kwh = tx.end_energy_kwh
                self._end_session(now, tx.end_reason)
            if not tx.running:
                # Plugged in after a stop at the device or a remote stop: no new session until the
                # device starts a transaction again (or the car is unplugged).
                self.start_requested = False
                self.paused = True
        if tx.running and tx.started > seen.started:
            self.paused = False
            self.start_requested = True

    def _report_faults(self, now: float) -> None:
        before, after = self.reported_errors, frozenset(self.errors)
        cid = self.config.id
        # Sorted: one order for the flags that change together.
        for flag in sorted(after - before):
            self.events.append(ev.FaultRaised(cid, now, flag))
        for flag in sorted(before - after):
            self.events.append(ev.FaultCleared(cid, now, flag))
        self.reported_errors = after

    def _check_under_power(self, now: float) -> None:
        low = (
            self.under_power_w is not None
            and self.session is not None
            and self.contactor
            and self.letter in ("C", "D")
            and self.power_w < self.under_power_w
        )
        if not low:
            self.under_power_since = None
            return
        if self.under_power_since is None:
            self.under_power_since = now
        elif now - self.under_power_since >= UNDER_POWER_S and self.limit_reached is None:
            self.limit_reached = LimitReached.UNDER_POWER
            self.events.append(ev.LimitReached(self.config.id, now, LimitReached.UNDER_POWER))

    def apply(self, now: float, allocated: float, source: Source, phases: int, lease_s: float) -> PilotOutput:
        """Run the current chain for a new allocation and decide PWM and contactor."""
        self.allocated = allocated
        self.allocation_source = source
        self.allocation_expires = now + lease_s
        self.target_phases = phases
        return self._drive(now)

    def fallback(self, now: float) -> PilotOutput:
        """The allocation lease lapsed: drive at the configured safe current."""
        self.allocated = min(self.allocated, self.config.safe_current)
        self.allocation_source = src_.LAPSED
        return self._drive(now)

    def advance(self, now: float) -> PilotOutput:
        """Re-evaluate without a new allocation (falls back once the lease lapsed)."""
        if now >= self.allocation_expires:
            return self.fallback(now)
        return self._drive(now)

    def _drive(self, now: float) -> PilotOutput:
        limit, limit_source = self.own_limit(now)
        self.available_current = quantize_current(limit)
        self.available_source = limit_source
        commanded = 0.0
        switching = self.target_phases != self.active_phases
        if switching and not self.contactor:
            # Safe phase switch: only with the contactor open (the EV has stopped drawing).
            self.active_phases = self.target_phases
            switching = False
        if self.permitted() and not switching:
            commanded = quantize_current(min(self.allocated, self.available_current))
        self.commanded = commanded
        if commanded < self.signaled:
            self.signaled = commanded
            self._log_signal(now, commanded)
        elif commanded > self.signaled and now - self.last_increase_at >= INCREASE_INTERVAL_S:
            self.signaled = commanded
            self.last_increase_at = now
            self._log_signal(now, commanded)

        # `self.pilot`, inline (this runs for every charger on every tick).
        letter = self.letter
        if letter == "E":
            state = _PILOT_E
        elif letter == "F" or not self.errors.isdisjoint(FAULT_FLAGS):
            state = _PILOT_F
        else:
            state = pilot_state(letter, self.signaled > 0)
        if state is _PILOT_F or letter not in _PLUGGED_LETTERS:
            if self.contactor or self.stop_requested_at is not None:
                self._open(now)
        elif contactor_may_close(state):
            if not self.contactor:
                self.events.append(ev.ContactorChanged(self.config.id, now, True))
            self.contactor = True
            self.stop_requested_at = None
        elif self.contactor:
            if self.stop_requested_at is None:
                self.stop_requested_at = now
            if not max(self.currents) > DRAW_THRESHOLD_A or self.letter == "B":
                self._open(now)
            elif now - self.stop_requested_at >= STOP_DEADLINE_S:
                self.errors.add(ErrorFlag.EV_NOT_STOPPING)
                state = _PILOT_F
                self._report_faults(now)  # the cause before its effect
                self._open(now)
        signaled = self.signaled
        duty = _DUTY.get(signaled)
        if duty is None:
            duty = _DUTY[signaled] = duty_for_current(signaled)
        # Positional: duty, signaled, contactor, phases, fallback_at, safe_current.
        contactor, phases = self.contactor, self.active_phases
        expires, safe = self.allocation_expires, self.config.safe_current
        if self.errors != self.reported_errors:
            self._report_faults(now)
        # `self.work_state()`, its common cases inline (from the pilot state just found).
        if state is _PILOT_F or state is _PILOT_E:
            work = _WORK_FAULT
        elif letter not in _PLUGGED_LETTERS:
            work = _WORK_FREE
        elif contactor and max(self.currents) > DRAW_THRESHOLD_A:
            work = _WORK_CHARGING
        else:
            work = self.work_state()
        if state is not self.reported_pilot or work is not self.reported_work:
            self._report_state(now, state, work)
        return _pilot_output(duty, signaled, contactor, phases, expires, safe)

    def _log_signal(self, now: float, value: float) -> None:
        log = self.signal_log
        log.append((now, value))
        if len(log) > SIGNAL_LOG_MAX:
            # Merged into the older one's time with the lower value: the window can only widen.
            (t0, v0), (_, v1) = log[0], log[1]
            log[0:2] = [(t0, min(v0, v1))]

    def lowest_signaled(self, since: float) -> float:
        """The lowest current signaled at any moment from `since` until now (the one in force at
        `since` included): all a car can draw now if its charger follows what it is told."""
        log = self.signal_log
        low = self.signaled
        k = len(log) - 1
        if k < 0 or log[k][0] <= since:
            return low
        while k > 0 and log[k][0] > since:
            k -= 1
            if log[k][1] < low:
                low = log[k][1]
        if log[k][0] > since:
            # Before the first change kept: 0 A at the start, or a time already dropped.
            return 0.0
        # What came before the one in force at `since` is no longer needed.
        del log[:k]
        return low

    def highest_signaled(self, since: float) -> float:
        """The highest current signaled at any moment from `since` until now (the one in force at
        `since` included): what a car may have risen to since a reading that shows less."""
        log = self.signal_log
        high = self.signaled
        for t, v in reversed(log):
            if v > high:
                high = v
            if t <= since:
                break
        return high

    # ---- quiet ticks ----------------------------------------------------------------------

    def quiet_key(self) -> tuple[object, ...] | None:
        """What this charger's next tick depends on while it is quiet, or None when it is not.

        Quiet: nothing drawn, signaled or commanded, contactor open and no stop pending, no phase
        switch, fault, lease, OCPP profile, cap or under-power timer. Then a tick whose reading
        `observe_quiet` accepts and whose allocation is the last one changes only the measurements and
        the lease (see `apply_quiet`), as long as this key stays equal.
        """
        c = self.currents
        if (
            self.contactor
            or self.signaled != 0.0
            or self.commanded != 0.0
            or c[0] != 0.0
            or c[1] != 0.0
            or c[2] != 0.0
            or self.stop_requested_at is not None
            or self.held != 0.0
            or self.target_phases != self.active_phases
            or self.errors
            or self.reported_errors
            or self.leases
            # A profile's limit changes with time and with the backend's messages: never take it as read.
            or self.profile_cap is not None
            or self.energy_cap_kwh
            or self.time_cap_min
            or self.under_power_w is not None
            or self.under_power_since is not None
        ):
            return None
        return (
            self.config,
            self.letter,
            self.enabled,
            self.available,
            self.authorized,
            self.auto_charge,
            self.start_requested,
            self.paused,
            self.user_limit,
            self.override,
            self.mode,
            self.phase_mode,
            self.limit_reached,
            self.ev_done,
            self.has_charged,
            self.session,
            self.cable_limit,
            self.meter_kwh,
            self.allocated,
            self.allocation_source,
            self.active_phases,
            self.reported_pilot,
            self.reported_work,
        )

    def observe_quiet(self, reading: PilotReading) -> bool:
        """`observe` for a quiet charger (`quiet_key`) when the reading changes only measurements.

        Same letter, nothing drawn, no fault, the energy counter and cable as before and the
        temperature below MAX: then `observe` would only take in voltages, temperature and time,
        and this does just that (True). Otherwise it does nothing and returns False.
        """
        c = reading.currents
        if (
            reading.letter != self.letter
            or c[0] != 0.0
            or c[1] != 0.0
            or c[2] != 0.0
            or reading.rcm_fault
            or reading.diode_fault
            or reading.held != 0.0
            or reading.transactions != self.device_tx
            or reading.energy_kwh != self.meter_kwh
            or reading.temperature >= self.config.max_temp
            or (None if self.config.fixed_cable else reading.cable_limit) != self.cable_limit
        ):
            return False
        self.currents = c
        self.voltages = v = reading.voltages
        self.temperature = reading.temperature
        self.reading_at = reading.taken_at
        self.power_w = c[0] * v[0] + c[1] * v[1] + c[2] * v[2]
        if self.session is not None:
            self.session.peak_power_w = max(self.session.peak_power_w, self.power_w)
        return True

    def apply_quiet(self, expires: float, output: PilotOutput) -> PilotOutput:
        """`apply` on a quiet charger of the allocation it had: only the lease moves on, to `expires`
        (`now` + lease). `output` is the last output with that expiry (equal outputs may be shared)."""
        self.allocation_expires = expires
        return output

    def _report_state(self, now: float, pilot: PilotState, work: WorkState) -> None:
        self.events.append(
            ev.StateChanged(self.config.id, now, pilot, work, self.reported_pilot, self.reported_work)
        )
        self.reported_pilot, self.reported_work = pilot, work

    def _open(self, now: float) -> None:
        if self.contactor:
            self.events.append(ev.ContactorChanged(self.config.id, now, False))
        self.contactor = False
        self.stop_requested_at = None

    def _add_energy(self, kwh: float) -> None:
        self.lifetime_kwh += kwh
        if self.session is not None:
            self.session.energy_kwh += kwh

    def add_charging_time(self, seconds: float) -> None:
        """Account time spent with the contactor closed and current flowing."""
        if self.session is not None and self.contactor and max(self.currents) > DRAW_THRESHOLD_A:
            self.session.charging_s += seconds

    def _start_session(self, now: float) -> None:
        self.session_seq += 1
        tag = self.pending_tag
        self.session = Session(
            id=f"{self.config.id}-{int(now * 1000)}-{self.session_seq}{self.run_tag}",
            charger_id=self.config.id,
            started_at=now,
            id_tag=tag,
            auth_method=self.pending_method if self.config.require_auth else self.pending_method or "free",
        )
        self.events.append(ev.SessionStarted(self.config.id, now, self.session.id, tag))

    def _end_session(self, now: float, reason: StopReason) -> None:
        if self.session is None:
            return
        self.session.ended_at = now
        reason_text = reason.value
        if reason == StopReason.EV_DISCONNECTED and self.limit_reached is not None:
            reason_text = f"{self.limit_reached.value}_limit"
        self.session.stop_reason = reason_text
        self.events.append(ev.SessionEnded(self.config.id, now, SessionRecord.of(self.session)))
        self.session = None

    def close(self, now: float, reason: StopReason = StopReason.SHUTDOWN) -> None:
        """End the session (shutdown)."""
        self._end_session(now, reason)
