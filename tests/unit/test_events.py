"""Charger events: each emitted exactly when it happens, once, with its charger, time and payload."""

from __future__ import annotations

import json
import random

import pytest

from evpilot.core import events as ev
from evpilot.core.charger import ChargerConfig, ErrorFlag, WorkState
from evpilot.core.iec61851 import PilotState
from evpilot.core.session import LimitReached, SessionRecord
from tests.unit.test_charger import Rig


def take(rig: Rig) -> list[ev.ChargerEvent]:
    """The events emitted since the last call."""
    found, rig.ch.events = rig.ch.events, []
    return found


def state(
    rig: Rig, pilot: PilotState, work: WorkState, prev: PilotState, prev_work: WorkState
) -> ev.StateChanged:
    """The state change expected at the rig's current time."""
    return ev.StateChanged("cp", rig.now, pilot, work, prev, prev_work)


def charging_rig() -> Rig:
    """A car plugged in, drawing 32 A, its events taken."""
    rig = Rig()
    rig.charge(5)
    take(rig)
    return rig


def test_an_idle_charger_emits_nothing() -> None:
    rig = Rig()
    for _ in range(5):
        rig.tick()
    assert take(rig) == []


def test_plug_in_emits_plugged_then_session_started_then_the_new_state() -> None:
    rig = Rig()
    rig.tick()
    rig.letter = "B"
    rig.tick()
    assert rig.ch.session is not None
    assert take(rig) == [
        ev.Plugged("cp", rig.now),
        ev.SessionStarted("cp", rig.now, rig.ch.session.id, None),
        state(rig, PilotState.B2, WorkState.WAIT, PilotState.A, WorkState.FREE),
    ]


def test_session_started_carries_the_authorizing_tag() -> None:
    rig = Rig(ChargerConfig(id="cp", require_auth=True))
    rig.letter = "B"
    rig.tick()
    assert [e.type for e in take(rig)] == [ev.EventType.PLUGGED, ev.EventType.STATE]
    rig.ch.set_authorized(True, "CARD-7")
    rig.tick()
    (started,) = [e for e in take(rig) if isinstance(e, ev.SessionStarted)]
    assert started.id_tag == "CARD-7" and started.at == rig.now


def test_contactor_closes_once_then_charging_is_a_state_change() -> None:
    rig = Rig()
    rig.letter = "B"
    rig.tick()
    take(rig)
    rig.letter = "C"
    rig.tick(follow=True)
    assert take(rig) == [
        ev.ContactorChanged("cp", rig.now, True),
        state(rig, PilotState.C2, WorkState.WAIT, PilotState.B2, WorkState.WAIT),
    ]
    rig.tick(follow=True)  # the car now draws
    assert take(rig) == [state(rig, PilotState.C2, WorkState.CHARGING, PilotState.C2, WorkState.WAIT)]
    for _ in range(10):
        rig.tick(follow=True)
    assert take(rig) == []


def test_stop_drops_the_pwm_then_opens_the_contactor_once_the_car_stopped() -> None:
    rig = charging_rig()
    rig.ch.request_stop(rig.now)
    rig.tick(follow=True)
    assert take(rig) == [state(rig, PilotState.C1, WorkState.CHARGING, PilotState.C2, WorkState.CHARGING)]
    rig.tick(follow=True)  # the car has stopped drawing
    assert take(rig) == [
        ev.ContactorChanged("cp", rig.now, False),
        state(rig, PilotState.C1, WorkState.PAUSE, PilotState.C1, WorkState.CHARGING),
    ]
    rig.tick(follow=True)
    assert take(rig) == []


def test_energy_limit_is_emitted_once_when_reached() -> None:
    rig = Rig()
    rig.ch.set_energy_cap(0.5)
    rig.charge(60)
    assert not [e for e in take(rig) if isinstance(e, ev.LimitReached)]
    reached_at = None
    for _ in range(60):
        rig.tick(follow=True)
        found = [e for e in take(rig) if isinstance(e, ev.LimitReached)]
        if found:
            assert reached_at is None, "emitted twice"
            assert found == [ev.LimitReached("cp", rig.now, LimitReached.ENERGY)]
            reached_at = rig.now
    assert reached_at is not None and rig.ch.limit_reached is LimitReached.ENERGY


def test_under_power_limit_is_emitted() -> None:
    rig = charging_rig()
    rig.ch.set_under_power_limit(30_000.0)  # the car draws 22 kW
    events: list[ev.ChargerEvent] = []
    for _ in range(65):
        rig.tick(follow=True)
        events += take(rig)
    found = [e for e in events if isinstance(e, ev.LimitReached)]
    assert [e.limit for e in found] == [LimitReached.UNDER_POWER]


def test_rcm_fault_is_raised_once_and_cleared_by_a_reset() -> None:
    rig = charging_rig()
    rig.rcm = True
    rig.tick(follow=True)
    events = take(rig)
    assert events[0] == ev.FaultRaised("cp", rig.now, ErrorFlag.RCM_TRIGGERED)
    assert ev.ContactorChanged("cp", rig.now, False) in events
    assert events[-1] == state(rig, PilotState.F, WorkState.FAULT, PilotState.C2, WorkState.CHARGING)
    rig.tick(follow=True)  # the hardware still reports it: nothing new
    assert take(rig) == []
    rig.rcm = False
    rig.ch.reset_faults()
    rig.tick(follow=True)
    events = take(rig)
    assert events[0] == ev.FaultCleared("cp", rig.now, ErrorFlag.RCM_TRIGGERED)
    assert not any(isinstance(e, ev.FaultRaised) for e in events)


def test_ev_not_stopping_is_raised_by_the_cycle_that_opens_the_contactor() -> None:
    rig = charging_rig()
    rig.ch.set_enabled(False)
    for _ in range(20):
        rig.tick()  # the EV ignores the pilot and keeps drawing
        events = take(rig)
        if any(isinstance(e, ev.ContactorChanged) for e in events):
            break
        assert not any(isinstance(e, ev.FaultRaised) for e in events)
    assert events == [
        ev.FaultRaised("cp", rig.now, ErrorFlag.EV_NOT_STOPPING),
        ev.ContactorChanged("cp", rig.now, False),
        state(rig, PilotState.F, WorkState.FAULT, PilotState.C1, WorkState.CHARGING),
    ]


def test_temperature_warning_is_raised_and_cleared_with_the_hysteresis() -> None:
    rig = charging_rig()
    rig.temp = 70.0
    rig.tick(follow=True)
    assert [e for e in take(rig) if isinstance(e, ev.FaultRaised | ev.FaultCleared)] == [
        ev.FaultRaised("cp", rig.now, ErrorFlag.TEMPERATURE_HIGH)
    ]
    rig.temp = 60.0  # between resume (55) and max (65): still raised
    rig.tick(follow=True)
    assert not [e for e in take(rig) if isinstance(e, ev.FaultRaised | ev.FaultCleared)]
    rig.temp = 50.0
    rig.tick(follow=True)
    assert [e for e in take(rig) if isinstance(e, ev.FaultRaised | ev.FaultCleared)] == [
        ev.FaultCleared("cp", rig.now, ErrorFlag.TEMPERATURE_HIGH)
    ]


def test_unplug_ends_the_session_then_says_unplugged() -> None:
    rig = charging_rig()
    assert rig.ch.session is not None
    sid = rig.ch.session.id
    rig.letter, rig.amps = "A", 0.0
    rig.tick()
    events = take(rig)
    assert [type(e) for e in events] == [ev.SessionEnded, ev.Unplugged, ev.ContactorChanged, ev.StateChanged]
    ended = events[0]
    assert isinstance(ended, ev.SessionEnded)
    assert ended.charger == "cp" and ended.at == rig.now
    assert ended.record.id == sid and ended.record.stop_reason == "ev_disconnected"
    assert events[1:] == [
        ev.Unplugged("cp", rig.now),
        ev.ContactorChanged("cp", rig.now, False),
        state(rig, PilotState.A, WorkState.FREE, PilotState.C2, WorkState.CHARGING),
    ]


def test_pilot_short_raises_the_fault_before_ending_the_session_and_clears_at_a() -> None:
    rig = charging_rig()
    rig.letter, rig.amps = "E", 0.0
    rig.tick()
    kinds = [e.type for e in take(rig)]
    assert kinds[:3] == [ev.EventType.FAULT_RAISED, ev.EventType.SESSION_ENDED, ev.EventType.UNPLUGGED]
    rig.letter = "A"
    rig.tick()
    assert take(rig) == [
        ev.FaultCleared("cp", rig.now, ErrorFlag.PILOT_FAULT),
        state(rig, PilotState.A, WorkState.FREE, PilotState.E, WorkState.FAULT),
    ]


def test_shutdown_close_ends_the_session() -> None:
    rig = charging_rig()
    rig.ch.close(rig.now + 1)
    (ended,) = take(rig)
    assert isinstance(ended, ev.SessionEnded) and ended.at == rig.now + 1
    assert ended.record.stop_reason == "shutdown"


def test_events_are_frozen() -> None:
    event = ev.Plugged("cp", 1.0)
    with pytest.raises(AttributeError):
        event.at = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (ev.Plugged("cp", 1.5), {"type": "plugged", "charger": "cp", "at": 1.5}),
        (ev.Unplugged("cp", 1.5), {"type": "unplugged", "charger": "cp", "at": 1.5}),
        (
            ev.ContactorChanged("cp", 1.5, True),
            {"type": "contactor", "charger": "cp", "at": 1.5, "closed": True},
        ),
        (
            ev.StateChanged("cp", 1.5, PilotState.C2, WorkState.CHARGING, PilotState.B2, WorkState.WAIT),
            {
                "type": "state",
                "charger": "cp",
                "at": 1.5,
                "pilot": "C2",
                "work_state": "charger_charging",
                "previous_pilot": "B2",
                "previous_work_state": "charger_wait",
            },
        ),
        (
            ev.SessionStarted("cp", 1.5, "cp-1", "CARD"),
            {"type": "session_started", "charger": "cp", "at": 1.5, "session_id": "cp-1", "id_tag": "CARD"},
        ),
        (
            ev.LimitReached("cp", 1.5, LimitReached.TIME),
            {"type": "limit_reached", "charger": "cp", "at": 1.5, "limit": "time"},
        ),
        (
            ev.FaultRaised("cp", 1.5, ErrorFlag.DIODE_SHORT),
            {"type": "fault_raised", "charger": "cp", "at": 1.5, "flag": "diode_short"},
        ),
        (
            ev.FaultCleared("cp", 1.5, ErrorFlag.DIODE_SHORT),
            {"type": "fault_cleared", "charger": "cp", "at": 1.5, "flag": "diode_short"},
        ),
    ],
)
def test_event_messages_are_plain_json(event: ev.ChargerEvent, expected: dict[str, object]) -> None:
    message = ev.event_message(event)
    assert message == expected
    assert json.loads(json.dumps(message)) == expected


def test_session_ended_message_carries_the_record() -> None:
    record = SessionRecord("cp-1", "cp", 1.0, 61.0, 0.5, 22080.0, "ev_disconnected", None)
    message = ev.event_message(ev.SessionEnded("cp", 61.0, record))
    assert message == {
        "type": "session_ended",
        "charger": "cp",
        "at": 61.0,
        "record": {
            "id": "cp-1",
            "charger_id": "cp",
            "started_at": 1.0,
            "ended_at": 61.0,
            "energy_kwh": 0.5,
            "peak_power_w": 22080.0,
            "stop_reason": "ev_disconnected",
            "id_tag": None,
            "auth_method": None,
        },
    }


def test_state_events_track_pilot_and_work_state_through_a_random_walk() -> None:
    """After every cycle the last state event names the charger's pilot and work state."""
    rnd = random.Random(7)
    rig = Rig()
    pilot, work = PilotState.A, WorkState.FREE
    flags: set[ErrorFlag] = set()
    ignoring = False
    for _ in range(3000):
        if rnd.random() < 0.15:
            rig.letter = rnd.choice("AAABBCCCCCDEF")
        if rnd.random() < 0.05:
            # Now and then the car ignores the pilot for a while and draws 16 A (ev_not_stopping).
            ignoring = not ignoring
            rig.amps = 16.0 if ignoring else rig.amps
        # Each input holds for a while, as on a real site.
        if rnd.random() < 0.05:
            rig.rcm = rnd.random() < 0.3
        if rnd.random() < 0.05:
            rig.diode = rnd.random() < 0.2
        if rnd.random() < 0.05:
            rig.temp = rnd.choice((25.0, 25.0, 25.0, 60.0, 70.0))
        if rnd.random() < 0.1:
            rig.allocated = rnd.choice((0.0, 6.0, 16.0, 32.0))
        if rnd.random() < 0.05:
            rig.ch.reset_faults()
        if rnd.random() < 0.05:
            rig.ch.request_stop(rig.now) if rnd.random() < 0.5 else rig.ch.request_start(rig.now)
        rig.tick(follow=not ignoring)
        for e in take(rig):
            if isinstance(e, ev.FaultRaised):
                flags.add(e.flag)
            if isinstance(e, ev.StateChanged):
                assert (e.previous_pilot, e.previous_work_state) == (pilot, work)
                assert (e.pilot, e.work_state) != (pilot, work)
                pilot, work = e.pilot, e.work_state
        assert (pilot, work) == (rig.ch.pilot, rig.ch.work_state())
    assert flags == set(ErrorFlag)  # the walk went through every fault
