"""The Charger: plug and session, flags, limits, caps, pacing, contactor, faults, counters."""

from __future__ import annotations

from typing import TypeVar

import pytest

from evpilot.core import events as ev
from evpilot.core.charger import (
    INCREASE_INTERVAL_S,
    Charger,
    ChargerConfig,
    ErrorFlag,
    PilotOutput,
    PilotReading,
    WorkState,
)
from evpilot.core.errors import CommandError
from evpilot.core.iec61851 import NO_PWM_DUTY, STOP_DEADLINE_S, PilotState, duty_for_current
from evpilot.core.session import LimitReached, SessionRecord

T0 = 1_000_000.0
LEASE_S = 5.0
E = TypeVar("E", bound=ev.ChargerEvent)


class Rig:
    """A charger driven tick by tick with a fake EV: reads, then applies an allocation."""

    def __init__(self, config: ChargerConfig | None = None, lifetime: float = 0.0) -> None:
        self.ch = Charger.create(config or ChargerConfig(id="cp"), lifetime)
        self.now = T0
        self.letter = "A"
        self.amps = 0.0
        self.kwh = 0.0
        self.temp = 25.0
        self.rcm = False
        self.diode = False
        self.cable: float | None = None
        self.allocated = 32.0
        self.out: PilotOutput | None = None

    def tick(self, dt: float = 1.0, follow: bool = False) -> PilotOutput:
        """Advance `dt`, integrate energy, observe, apply; with `follow` the EV draws the PWM."""
        self.now += dt
        self.kwh += 3 * 230.0 * self.amps * dt / 3.6e6
        self.ch.observe(
            PilotReading(
                taken_at=self.now,
                letter=self.letter,
                currents=(self.amps, self.amps, self.amps),
                energy_kwh=self.kwh,
                temperature=self.temp,
                rcm_fault=self.rcm,
                diode_fault=self.diode,
                cable_limit=self.cable,
            )
        )
        self.out = self.ch.apply(self.now, self.allocated, "test", 3, LEASE_S)
        if follow:
            self.amps = self.out.signaled if self.out.contactor and self.letter in "CD" else 0.0
        return self.out

    def charge(self, seconds: int = 10) -> None:
        """Plug in a requesting EV and let it follow the PWM."""
        self.letter = "C"
        for _ in range(seconds):
            self.tick(follow=True)

    def events(self, kind: type[E]) -> list[E]:
        """The charger's events of one kind (and clear them all)."""
        found = [e for e in self.ch.events if isinstance(e, kind)]
        self.ch.events.clear()
        return found


# ---- plug, session, start/stop ---------------------------------------------------------------


def test_idle_charger_is_free_in_state_a() -> None:
    rig = Rig()
    out = rig.tick()
    assert rig.ch.pilot is PilotState.A
    assert rig.ch.work_state() is WorkState.FREE
    assert out.signaled == 0.0 and out.duty == NO_PWM_DUTY and not out.contactor
    assert rig.ch.session is None


def test_plug_in_starts_a_session_and_charging_follows() -> None:
    rig = Rig()
    rig.tick()
    rig.letter = "B"
    out = rig.tick()
    assert rig.events(ev.Plugged) == [ev.Plugged("cp", rig.now)]
    assert rig.ch.session is not None
    # Connected, not requesting: PWM on at the allocation, contactor open (B2).
    assert out.signaled == 32.0 and out.duty == duty_for_current(32.0)
    assert rig.ch.pilot is PilotState.B2 and not out.contactor
    assert rig.ch.work_state() is WorkState.WAIT
    rig.letter = "C"
    out = rig.tick(follow=True)
    assert rig.ch.pilot is PilotState.C2 and out.contactor
    rig.tick(follow=True)
    assert rig.ch.work_state() is WorkState.CHARGING


def test_unplug_ends_the_session_with_a_record() -> None:
    rig = Rig()
    rig.charge(60)
    session_id = rig.ch.session.id if rig.ch.session else None
    rig.letter, rig.amps = "A", 0.0
    out = rig.tick()
    assert not out.contactor and out.signaled == 0.0
    (ended,) = rig.events(ev.SessionEnded)
    rec = ended.record
    assert isinstance(rec, SessionRecord)
    assert rec.id == session_id and rec.stop_reason == "ev_disconnected"
    assert rec.energy_kwh > 0.2 and rec.peak_power_w == pytest.approx(3 * 230 * 32)
    assert rec.ended_at - rec.started_at == pytest.approx(60.0)
    assert rig.ch.session is None and rig.ch.work_state() is WorkState.FREE


def test_each_plug_in_is_a_new_session() -> None:
    rig = Rig()
    ids = []
    for _ in range(3):
        rig.charge(3)
        assert rig.ch.session is not None
        ids.append(rig.ch.session.id)
        rig.letter, rig.amps = "A", 0.0
        rig.tick()
    assert len(set(ids)) == 3


def test_without_auto_charge_nothing_happens_until_start() -> None:
    rig = Rig(ChargerConfig(id="cp", auto_charge=False))
    rig.letter = "C"
    for _ in range(3):
        out = rig.tick(follow=True)
    assert rig.ch.session is None and out.signaled == 0.0 and not out.contactor
    assert rig.ch.pilot is PilotState.C1
    assert rig.ch.work_state() is WorkState.INSERT
    rig.ch.request_start(rig.now)
    out = rig.tick(follow=True)
    assert rig.ch.session is not None and out.signaled == 32.0 and out.contactor
    rig.ch.request_stop(rig.now)
    out = rig.tick(follow=True)
    assert out.signaled == 0.0 and rig.ch.pilot is PilotState.C1
    rig.tick(follow=True)
    assert not rig.ch.contactor
    assert rig.ch.work_state() is WorkState.PAUSE
    assert rig.ch.session is not None  # a stop pauses, it does not end the session


def test_auto_charge_can_be_switched_off_and_on() -> None:
    rig = Rig()
    rig.ch.set_auto_charge(False)
    rig.letter = "C"
    assert rig.tick().signaled == 0.0
    rig.ch.set_auto_charge(True)
    assert rig.tick().signaled == 32.0


def test_explicit_start_is_forgotten_on_unplug() -> None:
    rig = Rig(ChargerConfig(id="cp", auto_charge=False))
    rig.ch.request_start(rig.now)
    rig.charge(3)
    assert rig.ch.signaled == 32.0
    rig.letter, rig.amps = "A", 0.0
    rig.tick()
    rig.letter = "C"
    assert rig.tick().signaled == 0.0


@pytest.mark.parametrize("flag", ["enabled", "available", "authorized"])
def test_each_flag_stops_and_resumes_charging(flag: str) -> None:
    rig = Rig()
    rig.charge(10)
    assert rig.ch.contactor
    getattr(rig.ch, f"set_{flag}")(False)
    out = rig.tick(follow=True)
    assert out.signaled == 0.0
    rig.tick(follow=True)
    assert not rig.ch.contactor and rig.ch.work_state() is WorkState.PAUSE
    getattr(rig.ch, f"set_{flag}")(True)
    rig.tick(dt=INCREASE_INTERVAL_S, follow=True)
    assert rig.ch.signaled == 32.0 and rig.ch.contactor


def test_require_auth_waits_for_authorization_and_keeps_the_tag() -> None:
    rig = Rig(ChargerConfig(id="cp", require_auth=True))
    rig.letter = "C"
    assert rig.tick().signaled == 0.0
    assert rig.ch.session is None
    rig.ch.set_authorized(True, "TAG-1")
    assert rig.tick().signaled == 32.0
    assert rig.ch.session is not None and rig.ch.session.id_tag == "TAG-1"
    rig.letter = "A"
    rig.tick()
    assert rig.ch.authorized is False  # authorization ends with the session


# ---- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("amps", [6.0, 6.1, 16.0, 31.9, 32.0])
def test_user_limit_accepts_6_to_max_in_tenths(amps: float) -> None:
    rig = Rig()
    rig.ch.set_user_limit(amps)
    assert rig.ch.user_limit == amps
    rig.charge(2)
    assert rig.ch.signaled == amps and rig.ch.available_source.text == ("user" if amps < 32 else "max")


@pytest.mark.parametrize("amps", [5.9, 0.0, -1.0, 32.1, 80.0, 6.05, 16.01, float("nan"), "16", True])
def test_user_limit_refuses_bad_values_and_keeps_the_old_one(amps: object) -> None:
    rig = Rig()
    rig.ch.set_user_limit(10.0)
    with pytest.raises(CommandError) as err:
        rig.ch.set_user_limit(amps)  # type: ignore[arg-type]
    assert err.value.field == "current_limit"
    assert rig.ch.user_limit == 10.0


def test_user_limit_none_removes_it() -> None:
    rig = Rig()
    rig.ch.set_user_limit(10.0)
    rig.ch.set_user_limit(None)
    rig.charge(2)
    assert rig.ch.signaled == 32.0


def test_cable_limit_binds_unless_the_cable_is_fixed() -> None:
    rig = Rig(ChargerConfig(id="cp", fixed_cable=False))
    rig.cable = 20.0
    rig.charge(2)
    assert rig.ch.signaled == 20.0 and rig.ch.available_source.text == "cable"
    fixed = Rig(ChargerConfig(id="cp", fixed_cable=True))
    fixed.cable = 13.0
    fixed.charge(2)
    assert fixed.ch.signaled == 32.0


def test_override_and_leases_bind_and_lapse() -> None:
    rig = Rig()
    rig.ch.set_override(20)
    rig.charge(2)
    assert rig.ch.signaled == 20.0 and rig.ch.available_source.text == "override"
    rig.ch.set_lease("ems", 10.0, rig.now + 30)
    rig.tick(follow=True)
    assert rig.ch.signaled == 10.0 and rig.ch.available_source.text == "ems"
    rig.ch.set_lease("ems", 0.0, rig.now + 30)
    rig.tick(follow=True)
    assert rig.ch.signaled == 0.0
    rig.tick(dt=31, follow=True)
    assert rig.ch.signaled == 20.0
    assert rig.ch.drop_expired_leases(rig.now) == ["ems"] and not rig.ch.leases
    rig.ch.set_override(0)
    rig.tick(dt=INCREASE_INTERVAL_S, follow=True)
    assert rig.ch.signaled == 32.0
    with pytest.raises(CommandError):
        rig.ch.set_override(5)
    with pytest.raises(CommandError):
        rig.ch.set_lease("ems", 81, None)


def test_allocation_below_6_a_stops_the_pwm() -> None:
    rig = Rig()
    rig.charge(2)
    rig.allocated = 5.9
    assert rig.tick(follow=True).signaled == 0.0
    rig.allocated = 6.0
    assert rig.tick(dt=INCREASE_INTERVAL_S, follow=True).signaled == 6.0


def test_allocated_is_quantized_down_to_tenths() -> None:
    rig = Rig()
    rig.allocated = 13.37
    rig.charge(2)
    assert rig.ch.commanded == 13.3 and rig.ch.signaled == 13.3


# ---- pacing ----------------------------------------------------------------------------------


def test_increases_are_paced_to_one_per_5_s_decreases_apply_at_once() -> None:
    rig = Rig()
    rig.allocated = 10.0
    rig.charge(1)
    t_first = rig.now
    assert rig.ch.signaled == 10.0
    rig.allocated = 20.0
    while rig.now + 0.5 < t_first + INCREASE_INTERVAL_S - 1e-9:
        assert rig.tick(dt=0.5).signaled == 10.0
        assert rig.ch.commanded == 20.0
    assert rig.tick(dt=0.5).signaled == 20.0
    assert rig.now == t_first + INCREASE_INTERVAL_S
    rig.allocated = 8.0
    assert rig.tick(dt=0.1).signaled == 8.0
    rig.allocated = 7.0
    assert rig.tick(dt=0.1).signaled == 7.0
    rig.allocated = 32.0
    assert rig.tick(dt=0.1).signaled == 7.0
    rig.tick(dt=INCREASE_INTERVAL_S)
    assert rig.ch.signaled == 32.0


# ---- contactor -------------------------------------------------------------------------------


def test_contactor_opens_when_the_ev_stops_after_pwm_stops() -> None:
    rig = Rig()
    rig.charge(10)
    rig.ch.set_enabled(False)
    rig.tick()  # PWM off, EV still drawing: contactor stays closed for now (C1)
    assert rig.ch.pilot is PilotState.C1 and rig.ch.contactor
    rig.amps = 0.0
    rig.tick()
    assert not rig.ch.contactor
    assert ErrorFlag.EV_NOT_STOPPING not in rig.ch.errors


def test_ev_going_to_b_opens_the_contactor_at_once() -> None:
    rig = Rig()
    rig.charge(10)
    rig.letter = "B"
    out = rig.tick()
    assert not out.contactor


def test_ev_that_keeps_drawing_6_s_after_pwm_stop_is_a_fault() -> None:
    rig = Rig()
    rig.charge(10)
    rig.ch.set_enabled(False)
    stop_at = rig.now + 1.0
    while True:
        out = rig.tick()  # the EV ignores the pilot and keeps drawing
        if not out.contactor:
            break
        assert rig.now - stop_at < STOP_DEADLINE_S
    assert rig.now - stop_at <= STOP_DEADLINE_S
    assert ErrorFlag.EV_NOT_STOPPING in rig.ch.errors
    assert rig.ch.pilot is PilotState.F
    assert rig.ch.work_state() is WorkState.FAULT
    rig.ch.set_enabled(True)
    rig.amps = 0.0
    assert rig.tick(dt=10).signaled == 0.0  # latched until reset or unplug
    rig.ch.reset_faults()
    assert rig.tick().signaled == 32.0


@pytest.mark.parametrize("letter", ["A", "B", "C", "D", "E", "F"])
def test_contactor_is_closed_only_in_c2_or_d2(letter: str) -> None:
    rig = Rig()
    rig.letter = letter
    for _ in range(3):
        out = rig.tick(follow=True)
        assert out.contactor == (rig.ch.pilot in (PilotState.C2, PilotState.D2))
    assert out.contactor == (letter in "CD")


def test_ventilation_d2_charges() -> None:
    rig = Rig()
    rig.letter = "D"
    rig.tick(follow=True)
    assert rig.ch.pilot is PilotState.D2 and rig.ch.contactor


# ---- caps ------------------------------------------------------------------------------------


def test_energy_cap_stops_charging_and_says_so() -> None:
    rig = Rig()
    rig.ch.set_energy_cap(0.5)
    rig.charge(60)  # 22 kW: 0.37 kWh a minute
    assert rig.ch.limit_reached is None
    rig.charge(60)
    assert rig.ch.limit_reached is LimitReached.ENERGY
    assert [e.limit for e in rig.events(ev.LimitReached)] == [LimitReached.ENERGY]
    assert rig.ch.signaled == 0.0 and not rig.ch.contactor
    assert rig.ch.work_state() is WorkState.END
    assert rig.ch.session is not None and rig.ch.session.energy_kwh == pytest.approx(0.5, abs=0.01)
    rig.letter = "A"
    rig.tick()
    (ended,) = rig.events(ev.SessionEnded)
    rec = ended.record
    assert isinstance(rec, SessionRecord) and rec.stop_reason == "energy_limit"
    assert rig.ch.limit_reached is None


def test_time_cap_stops_charging_and_raising_it_resumes() -> None:
    rig = Rig()
    rig.ch.set_time_cap(2)
    rig.charge(119)
    assert rig.ch.limit_reached is None and rig.ch.contactor
    rig.charge(3)
    assert rig.ch.limit_reached is LimitReached.TIME
    assert not rig.ch.contactor and rig.ch.work_state() is WorkState.END
    rig.ch.set_time_cap(10)
    rig.tick(dt=INCREASE_INTERVAL_S, follow=True)
    assert rig.ch.limit_reached is None and rig.ch.signaled == 32.0


def test_zero_or_none_cap_means_no_cap() -> None:
    rig = Rig()
    rig.ch.set_energy_cap(0)
    rig.ch.set_time_cap(0)
    rig.charge(100)
    rig.ch.set_time_cap(None)
    rig.ch.set_energy_cap(None)
    rig.charge(100)
    assert rig.ch.limit_reached is None and rig.ch.contactor


@pytest.mark.parametrize(
    ("setter", "value"),
    [
        ("set_energy_cap", 1000.1),
        ("set_energy_cap", -0.1),
        ("set_energy_cap", float("inf")),
        ("set_time_cap", 1441),
        ("set_time_cap", -1),
        ("set_time_cap", float("nan")),
    ],
)
def test_caps_out_of_range_are_refused(setter: str, value: float) -> None:
    rig = Rig()
    rig.ch.set_energy_cap(5)
    rig.ch.set_time_cap(60)
    with pytest.raises(CommandError) as err:
        getattr(rig.ch, setter)(value)
    assert err.value.field in ("global_charge_limit", "global_time_limit")
    assert (rig.ch.energy_cap_kwh, rig.ch.time_cap_min) == (5.0, 60.0)


def test_cap_edges_are_accepted() -> None:
    rig = Rig()
    rig.ch.set_energy_cap(1000)
    rig.ch.set_time_cap(1440)
    assert (rig.ch.energy_cap_kwh, rig.ch.time_cap_min) == (1000.0, 1440.0)


# ---- temperature and faults -----------------------------------------------------------------


def test_temperature_stops_at_max_and_resumes_at_55() -> None:
    rig = Rig(ChargerConfig(id="cp", max_temp=65.0))
    rig.charge(5)
    rig.temp = 64.9
    assert rig.tick(follow=True).signaled == 32.0
    rig.temp = 65.0
    assert rig.tick(follow=True).signaled == 0.0
    assert ErrorFlag.TEMPERATURE_HIGH in rig.ch.errors
    assert rig.ch.available_source.text == "temperature"
    rig.tick(follow=True)
    assert not rig.ch.contactor
    assert rig.ch.work_state() is WorkState.PAUSE  # not a latched fault
    for t in (64.0, 60.0, 55.1):
        rig.temp = t
        assert rig.tick(dt=INCREASE_INTERVAL_S, follow=True).signaled == 0.0
    rig.temp = 55.0
    rig.tick(dt=INCREASE_INTERVAL_S, follow=True)
    assert ErrorFlag.TEMPERATURE_HIGH not in rig.ch.errors
    assert rig.ch.signaled == 32.0 and rig.ch.contactor


def test_rcm_fault_opens_at_once_and_latches_until_reset() -> None:
    rig = Rig()
    rig.charge(5)
    rig.rcm = True
    out = rig.tick()
    assert not out.contactor and out.signaled == 0.0
    assert ErrorFlag.RCM_TRIGGERED in rig.ch.errors
    assert rig.ch.pilot is PilotState.F and rig.ch.work_state() is WorkState.FAULT
    rig.ch.reset_faults()
    assert rig.tick().signaled == 0.0  # the hardware still reports it
    rig.rcm = False
    rig.tick()
    assert ErrorFlag.RCM_TRIGGERED in rig.ch.errors
    rig.ch.reset_faults()
    rig.tick(follow=True)
    assert rig.ch.signaled == 32.0 and rig.ch.contactor


def test_diode_fault_stops_charging() -> None:
    rig = Rig()
    rig.charge(3)
    rig.diode = True
    assert not rig.tick().contactor
    assert ErrorFlag.DIODE_SHORT in rig.ch.errors


def test_pilot_short_e_is_a_fault_that_ends_the_session() -> None:
    rig = Rig()
    rig.charge(5)
    rig.letter, rig.amps = "E", 0.0
    out = rig.tick()
    assert not out.contactor and out.signaled == 0.0
    assert rig.ch.pilot is PilotState.E
    assert ErrorFlag.PILOT_FAULT in rig.ch.errors
    assert rig.ch.work_state() is WorkState.FAULT
    (ended,) = rig.events(ev.SessionEnded)
    rec = ended.record
    assert isinstance(rec, SessionRecord) and rec.stop_reason == "fault"
    rig.letter = "A"
    rig.tick()
    assert not rig.ch.errors and rig.ch.work_state() is WorkState.FREE


# ---- lease fallback --------------------------------------------------------------------------


def test_lapsed_allocation_lease_falls_back_to_safe_current() -> None:
    rig = Rig(ChargerConfig(id="cp", safe_current=8.0))
    rig.charge(3)
    out = rig.out
    assert out is not None and out.fallback_at == rig.now + LEASE_S and out.safe_current == 8.0
    assert rig.ch.advance(rig.now + 1).signaled == 32.0
    late = rig.ch.advance(rig.now + LEASE_S)
    assert late.signaled == 8.0 and rig.ch.allocation_source.text == "lease"


def test_safe_current_below_6_a_stops_on_fallback() -> None:
    rig = Rig(ChargerConfig(id="cp", safe_current=0.0))
    rig.charge(3)
    assert rig.ch.advance(rig.now + LEASE_S + 1).signaled == 0.0


# ---- energy counters -------------------------------------------------------------------------


def test_lifetime_counts_energy_and_survives_a_meter_reset() -> None:
    rig = Rig(lifetime=100.0)
    rig.charge(60)
    after = rig.ch.lifetime_kwh
    assert after == pytest.approx(100.0 + rig.kwh)
    rig.kwh = 0.0  # the EV meter restarted from zero
    rig.tick(follow=True)
    assert rig.ch.lifetime_kwh >= after
    rig.charge(60)
    assert rig.ch.lifetime_kwh > after
    assert rig.ch.session is not None
    assert rig.ch.session.energy_kwh == pytest.approx(rig.ch.lifetime_kwh - 100.0)


def test_charging_time_counts_only_while_current_flows() -> None:
    rig = Rig()
    rig.charge(10)
    rig.ch.add_charging_time(10)
    rig.ch.set_enabled(False)
    rig.tick(follow=True)
    rig.tick(follow=True)
    rig.ch.add_charging_time(10)
    assert rig.ch.session is not None and rig.ch.session.charging_s == 10


# ---- work states -----------------------------------------------------------------------------


def test_work_state_end_when_the_ev_is_full() -> None:
    rig = Rig()
    rig.charge(10)
    rig.letter, rig.amps = "B", 0.0  # battery full: the EV stops requesting
    rig.tick()
    assert rig.ch.work_state() is WorkState.END
    rig.letter = "C"  # it asks again (e.g. preconditioning)
    rig.tick(follow=True)
    rig.tick(follow=True)
    assert rig.ch.work_state() is WorkState.CHARGING


def test_work_state_insert_wait_pause() -> None:
    rig = Rig(ChargerConfig(id="cp", auto_charge=False))
    rig.letter = "B"
    rig.tick()
    assert rig.ch.work_state() is WorkState.INSERT
    rig.ch.request_start(rig.now)
    rig.tick()
    assert rig.ch.work_state() is WorkState.WAIT
    rig.ch.request_stop(rig.now)
    rig.tick()
    assert rig.ch.work_state() is WorkState.PAUSE


# ---- other commands --------------------------------------------------------------------------


def test_mode_and_phase_mode_are_validated() -> None:
    ch = Charger.create(ChargerConfig(id="cp"))
    ch.set_mode("solar")
    assert ch.mode == "solar"
    with pytest.raises(CommandError):
        ch.set_mode("turbo")
    assert ch.mode == "solar"
    ch.set_phase_mode("auto")
    with pytest.raises(CommandError):
        ch.set_phase_mode("sometimes")
    one = Charger.create(ChargerConfig(id="cp", phases=1))
    with pytest.raises(CommandError):
        one.set_phase_mode("auto")
    assert one.phase_mode == "not_present"


def test_phase_count_changes_only_with_the_contactor_open() -> None:
    rig = Rig()
    rig.charge(3)
    assert rig.ch.apply(rig.now, 32, "t", 1, LEASE_S).phases == 3
    rig.ch.set_enabled(False)
    rig.amps = 0.0
    rig.tick()
    assert rig.ch.apply(rig.now, 32, "t", 1, LEASE_S).phases == 1


def test_explicit_stop_pauses_even_with_auto_charge_until_start_or_unplug() -> None:
    rig = Rig()
    rig.charge(5)
    rig.ch.request_stop(rig.now)
    assert rig.tick(follow=True).signaled == 0.0
    rig.tick(follow=True)
    assert not rig.ch.contactor and rig.ch.work_state() is WorkState.PAUSE
    rig.ch.request_start(rig.now)
    rig.tick(dt=INCREASE_INTERVAL_S, follow=True)
    assert rig.ch.signaled == 32.0 and rig.ch.contactor
    rig.ch.request_stop(rig.now)
    rig.letter, rig.amps = "A", 0.0
    rig.tick()
    rig.charge(6)  # the next car starts on plug-in again (after the 5 s pacing)
    assert rig.ch.signaled == 32.0 and rig.ch.contactor
