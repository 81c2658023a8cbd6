"""Access to charging: RFID cards and swipes, the switch input, the cable lock and weekly windows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from evpilot.core.errors import CommandError

MAX_CARDS = 100
# Card uids are 4, 7 or 10 bytes (ISO 14443); some readers report 5 or 8. Any even length 4..10 bytes.
_UID = re.compile(r"^(?:[0-9A-F]{2}){4,10}$")
_SEPARATORS = re.compile(r"[\s:\-]")
# The lock: how long one attempt may take before it counts as failed, and how many attempts in all.
LOCK_TIMEOUT_S = 3.0
LOCK_ATTEMPTS = 3
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class RfidMode(StrEnum):
    """`chargers[].rfid`: what a card swipe does (seed 001 RFID menu)."""

    DISABLED = "disabled"
    ENABLE_ALL = "enable_all"
    ENABLE_ONE = "enable_one"
    REMOTE = "remote"
    LEARN = "learn"
    DELETE = "delete"
    DELETE_ALL = "delete_all"


class SwitchMode(StrEnum):
    """`chargers[].switch`: what the external switch input does (seed 001 SWITCH menu)."""

    DISABLED = "disabled"
    ACCESS_BUTTON = "access_button"
    ACCESS_SWITCH = "access_switch"
    SMART_SOLAR_BUTTON = "smart_solar_button"
    SMART_SOLAR_SWITCH = "smart_solar_switch"
    GRID_RELAY = "grid_relay"
    CUSTOM_BUTTON = "custom_button"
    CUSTOM_SWITCH = "custom_switch"


class LockMode(StrEnum):
    """`chargers[].lock`: the socket's locking actuator (seed 001 LOCK menu)."""

    DISABLED = "disabled"
    SOLENOID = "solenoid"
    MOTOR = "motor"


class LockSetting(StrEnum):
    """What the lock is told besides its own rule (Teltonika register 18: 0, 1, 2)."""

    AUTO = "auto"
    ALWAYS = "always"
    FORCE_UNLOCK = "force_unlock"


def want_locked(setting: LockSetting, plugged: bool, authorized: bool, charging: bool) -> bool:
    """Whether the lock should be closed: `auto` while a car is plugged in and authorized, `always`
    at all times, `force_unlock` only while current still flows (it opens once charging stopped)."""
    if setting is LockSetting.ALWAYS:
        return True
    if setting is LockSetting.FORCE_UNLOCK:
        return charging
    return plugged and authorized


class AuthMethod(StrEnum):
    """How a session was authorized (kept in its record)."""

    CARD = "card"
    REMOTE = "remote"
    API = "api"
    FREE = "free"


def normalize_uid(text: str) -> str:
    """A card uid as upper-case hex without separators (CommandError naming `uid` when invalid)."""
    if not isinstance(text, str):
        raise CommandError("uid", "must be a string of hex digits")
    uid = _SEPARATORS.sub("", text).upper()
    if not _UID.match(uid):
        raise CommandError("uid", f"{text!r} is not 4 to 10 bytes of hex digits (e.g. 04A2B3C4)")
    return uid


@dataclass(frozen=True, slots=True)
class Card:
    """A learned card: its uid and the optional name, chargers, expiry (clock s) and energy cap."""

    uid: str
    name: str = ""
    chargers: tuple[str, ...] = ()
    expires_at: float | None = None
    energy_kwh: float | None = None

    def valid_at(self, charger: str, now: float) -> bool:
        """The card may be used on `charger` at `now`."""
        if self.expires_at is not None and now >= self.expires_at:
            return False
        return not self.chargers or charger in self.chargers


class TagStatus(StrEnum):
    """An id tag's OCPP 1.6 `IdTagInfo.status` (ConcurrentTx is never given)."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"


def tag_status(card: Card | None, chargers: tuple[str, ...], now: float) -> TagStatus:
    """The status of a card presented for any of `chargers` (those that require authorization).

    Unknown → Invalid; valid on one of them → Accepted; else expired → Expired; else (learned, not
    expired, but for other chargers only) → Blocked.
    """
    if card is None:
        return TagStatus.INVALID
    if any(card.valid_at(cid, now) for cid in chargers):
        return TagStatus.ACCEPTED
    if card.expires_at is not None and now >= card.expires_at:
        return TagStatus.EXPIRED
    return TagStatus.BLOCKED


class SwipeAction(StrEnum):
    """What a swipe leads to."""

    AUTHORIZE = "authorize"
    STOP = "stop"
    LEARN = "learn"
    DELETE = "delete"
    REMOTE = "remote"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class SwipeDecision:
    """A swipe's outcome and, when refused, why."""

    action: SwipeAction
    reason: str = ""


def decide_swipe(
    mode: RfidMode,
    card: Card | None,
    charger: str,
    now: float,
    *,
    holder: str | None,
    cards_stored: int,
    remote_available: bool,
    enabled: bool = False,
) -> SwipeDecision:
    """What a swipe of `card` (None: not learned) does on `charger` in `mode`.

    `holder` is the uid that authorized the running or pending session, if any; `enabled` says the
    charger is authorized now (by whatever means). Seed 001: in `enable_all` every learned card
    enables and disables the charger, so a swipe while it is enabled stops charging whoever enabled
    it; in `enable_one` only the card that started a session stops it (and so unlocks the cable), no
    other card is taken meanwhile.
    """
    if mode is RfidMode.DISABLED:
        return SwipeDecision(SwipeAction.REFUSE, "the RFID reader is disabled (rfid: disabled)")
    if mode is RfidMode.LEARN:
        if card is None and cards_stored >= MAX_CARDS:
            return SwipeDecision(SwipeAction.REFUSE, f"{MAX_CARDS} cards are stored already")
        return SwipeDecision(SwipeAction.LEARN)
    if mode in (RfidMode.DELETE, RfidMode.DELETE_ALL):
        if card is None:
            return SwipeDecision(SwipeAction.REFUSE, "the card is not learned")
        return SwipeDecision(SwipeAction.DELETE)
    if mode is RfidMode.REMOTE:
        if not remote_available:
            return SwipeDecision(
                SwipeAction.REFUSE, "rfid: remote needs the OCPP charge point (ocpp.url) to authorize cards"
            )
        if holder is not None and card is not None and card.uid == holder:
            return SwipeDecision(SwipeAction.STOP)
        return SwipeDecision(SwipeAction.REMOTE)
    if card is None:
        return SwipeDecision(SwipeAction.REFUSE, "unknown card")
    if not card.valid_at(charger, now):
        expired = card.expires_at is not None and now >= card.expires_at
        return SwipeDecision(SwipeAction.REFUSE, "the card expired" if expired else f"not valid on {charger}")
    if mode is RfidMode.ENABLE_ALL:
        return SwipeDecision(SwipeAction.STOP if enabled else SwipeAction.AUTHORIZE)
    if holder is not None:
        if card.uid == holder:
            return SwipeDecision(SwipeAction.STOP)
        return SwipeDecision(SwipeAction.REFUSE, "another card holds this charger")
    return SwipeDecision(SwipeAction.AUTHORIZE)


class LockState(StrEnum):
    """Where the cable lock is."""

    UNLOCKED = "unlocked"
    LOCKING = "locking"
    LOCKED = "locked"
    UNLOCKING = "unlocking"
    FAULT = "fault"


@dataclass(frozen=True, slots=True)
class LockStatus:
    """The cable lock's state, since when, the attempt under way and the last fault's reason."""

    state: LockState = LockState.UNLOCKED
    since: float = 0.0
    attempt: int = 0
    fault: str = ""


@dataclass(frozen=True, slots=True)
class LockStep:
    """The lock's next status and what to drive: True lock, False unlock, None leave the actuator."""

    status: LockStatus
    drive: bool | None


def step_lock(
    status: LockStatus,
    now: float,
    want_locked: bool,
    sensed: bool | None,
    timeout_s: float = LOCK_TIMEOUT_S,
    attempts: int = LOCK_ATTEMPTS,
    retry: bool = False,
) -> LockStep:
    """One step of the lock state machine.

    `sensed` is the actuator's feedback (True locked, False unlocked, None not known). An attempt
    that does not reach the wanted position within `timeout_s` is retried, up to `attempts` in all;
    then the lock is in fault. A fault clears once the wanted position is sensed (for example
    after the cable was taken out and the lock released), or, when the lock should be open, with a
    new set of attempts: at once for a lock that never closed, on `retry` (a new forced unlock) for
    any other fault.
    """
    state = status.state
    if state is LockState.FAULT:
        if sensed is not None and sensed == want_locked:
            target = LockState.LOCKED if want_locked else LockState.UNLOCKED
            return LockStep(LockStatus(target, now), None)
        if not want_locked and (retry or status.fault.startswith("lock")):
            # A lock that never closed is released and started over; any other only when told again.
            return LockStep(LockStatus(LockState.UNLOCKING, now, 1), False)
        return LockStep(status, None)
    if want_locked:
        if state is LockState.LOCKED:
            if sensed is False:
                return LockStep(LockStatus(LockState.FAULT, now, 0, "lock opened while locked"), None)
            return LockStep(status, None)
        if state is not LockState.LOCKING:
            return LockStep(LockStatus(LockState.LOCKING, now, 1), True)
        if sensed is True:
            return LockStep(LockStatus(LockState.LOCKED, now), None)
        return _retry(status, now, True, timeout_s, attempts)
    if state is LockState.UNLOCKED:
        return LockStep(status, None)
    if state is not LockState.UNLOCKING:
        return LockStep(LockStatus(LockState.UNLOCKING, now, 1), False)
    if sensed is False:
        return LockStep(LockStatus(LockState.UNLOCKED, now), None)
    return _retry(status, now, False, timeout_s, attempts)


def _retry(status: LockStatus, now: float, lock: bool, timeout_s: float, attempts: int) -> LockStep:
    if now - status.since < timeout_s:
        return LockStep(status, None)
    if status.attempt >= attempts:
        what = "lock" if lock else "unlock"
        reason = f"{what} not confirmed after {attempts} attempts of {timeout_s:g} s"
        return LockStep(LockStatus(LockState.FAULT, now, status.attempt, reason), None)
    return LockStep(LockStatus(status.state, now, status.attempt + 1), lock)


@dataclass(frozen=True, slots=True)
class Window:
    """A weekly charging window: from `start` to `stop` (seconds after local midnight) on `days`.

    A window whose stop is at or before its start runs past midnight into the next day.
    """

    start_s: int
    stop_s: int
    days: frozenset[int] = frozenset(range(7))

    def open_at(self, weekday: int, second: float) -> bool:
        """Charging is allowed at local `weekday` (0 = Monday) and `second` of that day."""
        if self.start_s < self.stop_s:
            return weekday in self.days and self.start_s <= second < self.stop_s
        if weekday in self.days and second >= self.start_s:
            return True
        return (weekday - 1) % 7 in self.days and second < self.stop_s


def parse_hhmm(text: str, key: str) -> int:
    """`HH:MM` as seconds after midnight (CommandError naming `key`)."""
    m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", text)
    if m is None:
        raise CommandError(key, f"{text!r} is not a time HH:MM (00:00 to 23:59)")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60


def parse_days(days: list[str], key: str) -> frozenset[int]:
    """Weekday names (mon..sun) as numbers, Monday 0."""
    out: set[int] = set()
    for day in days:
        name = day.lower()[:3]
        if name not in WEEKDAYS:
            raise CommandError(key, f"{day!r} is not a weekday (mon, tue, wed, thu, fri, sat, sun)")
        out.add(WEEKDAYS.index(name))
    if not out:
        raise CommandError(key, "names no weekday")
    return frozenset(out)
