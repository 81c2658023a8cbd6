"""core/access.py: uid normalisation, swipe decisions per RFID mode, the lock state machine, windows."""

from __future__ import annotations

import pytest

from evpilot.core.access import (
    LOCK_ATTEMPTS,
    LOCK_TIMEOUT_S,
    MAX_CARDS,
    Card,
    LockSetting,
    LockState,
    LockStatus,
    LockStep,
    RfidMode,
    SwipeAction,
    TagStatus,
    Window,
    decide_swipe,
    normalize_uid,
    parse_days,
    parse_hhmm,
    step_lock,
    tag_status,
    want_locked,
)
from evpilot.core.errors import CommandError


@pytest.mark.parametrize(
    ("raw", "uid"),
    [
        ("04a2b3c4", "04A2B3C4"),
        ("04:A2:B3:C4:D5:E6:F7", "04A2B3C4D5E6F7"),
        ("04-a2-b3-c4", "04A2B3C4"),
        (" 04 A2 B3 C4 ", "04A2B3C4"),
        ("00112233445566778899", "00112233445566778899"),
    ],
)
def test_uids_are_normalised(raw: str, uid: str) -> None:
    assert normalize_uid(raw) == uid


@pytest.mark.parametrize("raw", ["", "04A2B3", "04A2B3C", "04A2B3CG", "0011223344556677889900", "ü4A2B3C4"])
def test_bad_uids_are_refused_naming_uid(raw: str) -> None:
    with pytest.raises(CommandError) as err:
        normalize_uid(raw)
    assert err.value.field == "uid"


CARD = Card("04A2B3C4")


def decide(
    mode: RfidMode,
    card: Card | None = CARD,
    holder: str | None = None,
    stored: int = 1,
    remote: bool = False,
    now: float = 100.0,
    enabled: bool | None = None,
) -> SwipeAction:
    return decide_swipe(
        mode,
        card,
        "cp1",
        now,
        holder=holder,
        cards_stored=stored,
        remote_available=remote,
        enabled=holder is not None if enabled is None else enabled,
    ).action


def test_disabled_refuses_every_card() -> None:
    assert decide(RfidMode.DISABLED) is SwipeAction.REFUSE


def test_enable_all_takes_learned_cards_only() -> None:
    assert decide(RfidMode.ENABLE_ALL) is SwipeAction.AUTHORIZE
    assert decide(RfidMode.ENABLE_ALL, None) is SwipeAction.REFUSE
    # Seed 001 "accept all learned cards for enabling/disabling": any learned card disables an
    # enabled charger, whichever card (or API) enabled it.
    assert decide(RfidMode.ENABLE_ALL, holder="11223344") is SwipeAction.STOP
    assert decide(RfidMode.ENABLE_ALL, holder=CARD.uid) is SwipeAction.STOP
    assert decide(RfidMode.ENABLE_ALL, enabled=True) is SwipeAction.STOP
    assert decide(RfidMode.ENABLE_ALL, holder="11223344", enabled=False) is SwipeAction.AUTHORIZE
    assert decide(RfidMode.ENABLE_ALL, None, holder=CARD.uid) is SwipeAction.REFUSE


def test_enable_one_ignores_an_api_authorization_without_a_holder() -> None:
    assert decide(RfidMode.ENABLE_ONE, enabled=True) is SwipeAction.AUTHORIZE


@pytest.mark.parametrize(
    ("setting", "plugged", "authorized", "charging", "want"),
    [
        (LockSetting.AUTO, True, True, False, True),
        (LockSetting.AUTO, True, False, False, False),
        (LockSetting.AUTO, False, True, False, False),
        (LockSetting.ALWAYS, False, False, False, True),
        (LockSetting.FORCE_UNLOCK, True, True, True, True),
        (LockSetting.FORCE_UNLOCK, True, True, False, False),
    ],
)
def test_want_locked_per_setting(
    setting: LockSetting, plugged: bool, authorized: bool, charging: bool, want: bool
) -> None:
    assert want_locked(setting, plugged, authorized, charging) is want


def test_enable_one_the_holder_stops_others_are_refused() -> None:
    assert decide(RfidMode.ENABLE_ONE) is SwipeAction.AUTHORIZE
    assert decide(RfidMode.ENABLE_ONE, holder=CARD.uid) is SwipeAction.STOP
    assert decide(RfidMode.ENABLE_ONE, holder="11223344") is SwipeAction.REFUSE


def test_card_limits_expiry_and_chargers() -> None:
    assert decide(RfidMode.ENABLE_ALL, Card("04A2B3C4", expires_at=50.0)) is SwipeAction.REFUSE
    assert decide(RfidMode.ENABLE_ALL, Card("04A2B3C4", expires_at=150.0)) is SwipeAction.AUTHORIZE
    assert decide(RfidMode.ENABLE_ALL, Card("04A2B3C4", chargers=("cp2",))) is SwipeAction.REFUSE
    assert decide(RfidMode.ENABLE_ALL, Card("04A2B3C4", chargers=("cp1",))) is SwipeAction.AUTHORIZE


def test_ocpp_tag_status_of_a_card() -> None:
    anywhere = Card("04A2B3C4")
    w8_only = Card("04A2B3C5", chargers=("w8",))
    until_100 = Card("04A2B3C6", expires_at=100.0)
    assert tag_status(None, ("w7",), 0.0) is TagStatus.INVALID
    assert tag_status(anywhere, ("w7",), 0.0) is TagStatus.ACCEPTED
    assert tag_status(w8_only, ("w7",), 0.0) is TagStatus.BLOCKED
    assert tag_status(w8_only, ("w7", "w8"), 0.0) is TagStatus.ACCEPTED
    assert tag_status(until_100, ("w7",), 99.9) is TagStatus.ACCEPTED
    assert tag_status(until_100, ("w7",), 100.0) is TagStatus.EXPIRED
    expired_elsewhere = Card("04A2B3C7", chargers=("w8",), expires_at=100.0)
    assert tag_status(expired_elsewhere, ("w7",), 200.0) is TagStatus.EXPIRED
    assert [s.value for s in TagStatus] == ["Accepted", "Blocked", "Expired", "Invalid"]


def test_learning_modes() -> None:
    assert decide(RfidMode.LEARN, None) is SwipeAction.LEARN
    assert decide(RfidMode.LEARN, None, stored=MAX_CARDS) is SwipeAction.REFUSE
    assert decide(RfidMode.LEARN, CARD, stored=MAX_CARDS) is SwipeAction.LEARN  # already learned
    assert decide(RfidMode.DELETE) is SwipeAction.DELETE
    assert decide(RfidMode.DELETE, None) is SwipeAction.REFUSE


def test_remote_needs_a_backend_and_takes_unknown_cards() -> None:
    assert decide(RfidMode.REMOTE, None) is SwipeAction.REFUSE
    assert decide(RfidMode.REMOTE, None, remote=True) is SwipeAction.REMOTE
    reason = decide_swipe(
        RfidMode.REMOTE, None, "cp1", 0.0, holder=None, cards_stored=0, remote_available=False
    ).reason
    assert "ocpp" in reason


def run_lock(
    want: bool, sensed: list[bool | None], start: LockStatus | None = None, dt: float = 1.0
) -> tuple[LockStatus, list[bool]]:
    status = start or LockStatus()
    drives: list[bool] = []
    for i, s in enumerate(sensed):
        step = step_lock(status, i * dt, want, s)
        status = step.status
        if step.drive is not None:
            drives.append(step.drive)
    return status, drives


def test_lock_locks_when_confirmed() -> None:
    status, drives = run_lock(True, [False, True])
    assert status.state is LockState.LOCKED and drives == [True]


def test_lock_retries_then_faults() -> None:
    ticks = int(LOCK_TIMEOUT_S) * LOCK_ATTEMPTS + 2
    status, drives = run_lock(True, [False] * ticks)
    assert status.state is LockState.FAULT
    assert drives == [True] * LOCK_ATTEMPTS
    assert "lock not confirmed" in status.fault


def test_lock_confirmed_on_a_retry() -> None:
    sensed: list[bool | None] = [False] * (int(LOCK_TIMEOUT_S) + 2) + [True]
    status, drives = run_lock(True, sensed)
    assert status.state is LockState.LOCKED and drives == [True, True]


def test_unlock_and_an_opened_lock_is_a_fault() -> None:
    status, drives = run_lock(False, [True, False], LockStatus(LockState.LOCKED))
    assert status.state is LockState.UNLOCKED and drives == [False]
    status, _ = run_lock(True, [False], LockStatus(LockState.LOCKED))
    assert status.state is LockState.FAULT


def test_a_failed_lock_releases_when_no_longer_wanted_and_clears() -> None:
    fault = LockStatus(LockState.FAULT, 0.0, 3, "lock not confirmed after 3 attempts of 3 s")
    step = step_lock(fault, 10.0, False, True)
    assert step.status.state is LockState.UNLOCKING and step.drive is False
    step = step_lock(step.status, 11.0, False, False)
    assert step.status.state is LockState.UNLOCKED


def test_a_failed_unlock_stays_in_fault_until_a_new_forced_unlock_retries_it() -> None:
    fault = LockStatus(LockState.FAULT, 0.0, 3, "unlock not confirmed after 3 attempts of 3 s")
    assert step_lock(fault, 10.0, False, True) == LockStep(fault, None)
    # A new forced unlock: a new set of attempts, each driving the actuator again.
    step = step_lock(fault, 0.0, False, True, retry=True)
    assert step == LockStep(LockStatus(LockState.UNLOCKING, 0.0, 1), False)
    ticks = int(LOCK_TIMEOUT_S) * LOCK_ATTEMPTS + 2
    status, drives = run_lock(False, [True] * ticks, step.status)
    assert status.state is LockState.FAULT and drives == [False] * (LOCK_ATTEMPTS - 1)
    # While the lock must stay closed (current still flows) a retry changes nothing.
    stuck_open = LockStatus(LockState.FAULT, 0.0, 0, "lock opened while locked")
    assert step_lock(stuck_open, 12.0, True, False, retry=True) == LockStep(stuck_open, None)


def test_windows_within_a_day_and_past_midnight() -> None:
    day = Window(parse_hhmm("08:00", "start"), parse_hhmm("17:30", "stop"), parse_days(["mon", "fri"], "d"))
    assert day.open_at(0, 8 * 3600) and not day.open_at(0, 17.5 * 3600) and not day.open_at(1, 9 * 3600)
    night = Window(parse_hhmm("22:00", "start"), parse_hhmm("06:00", "stop"), parse_days(["fri"], "d"))
    assert night.open_at(4, 23 * 3600)  # Friday night
    assert night.open_at(5, 5 * 3600)  # Saturday early, from Friday's window
    assert not night.open_at(4, 5 * 3600)  # Friday early belongs to Thursday's window
    with pytest.raises(CommandError):
        parse_hhmm("24:00", "start")
    with pytest.raises(CommandError):
        parse_days(["someday"], "days")
