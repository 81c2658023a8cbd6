"""What happened to a charger: typed, immutable events the core emits and the runtime publishes."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from evpilot.core import session as _session
from evpilot.core.iec61851 import PilotState

if TYPE_CHECKING:
    from evpilot.core.charger import ErrorFlag, WorkState


class EventType(StrEnum):
    """The kinds of charger events (the `type` of their JSON message)."""

    PLUGGED = "plugged"
    UNPLUGGED = "unplugged"
    CONTACTOR = "contactor"
    STATE = "state"
    SESSION_STARTED = "session_started"
    SESSION_ENDED = "session_ended"
    LIMIT_REACHED = "limit_reached"
    FAULT_RAISED = "fault_raised"
    FAULT_CLEARED = "fault_cleared"
    ACCESS = "access"


@dataclass(frozen=True, slots=True)
class Plugged:
    """A vehicle was connected (pilot left A for B, C or D)."""

    type: ClassVar[EventType] = EventType.PLUGGED
    charger: str
    at: float


@dataclass(frozen=True, slots=True)
class Unplugged:
    """The vehicle was disconnected (or the pilot was lost to E/F)."""

    type: ClassVar[EventType] = EventType.UNPLUGGED
    charger: str
    at: float


@dataclass(frozen=True, slots=True)
class ContactorChanged:
    """The contactor closed (`closed` True) or opened."""

    type: ClassVar[EventType] = EventType.CONTACTOR
    charger: str
    at: float
    closed: bool


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The pilot state or the work state changed (checked at the end of each control cycle)."""

    type: ClassVar[EventType] = EventType.STATE
    charger: str
    at: float
    pilot: PilotState
    work_state: WorkState
    previous_pilot: PilotState
    previous_work_state: WorkState


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """A session opened (car plugged in and charging permitted)."""

    type: ClassVar[EventType] = EventType.SESSION_STARTED
    charger: str
    at: float
    session_id: str
    id_tag: str | None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session closed; `record` is what the history stores."""

    type: ClassVar[EventType] = EventType.SESSION_ENDED
    charger: str
    at: float
    record: _session.SessionRecord


@dataclass(frozen=True, slots=True)
class LimitReached:
    """A session cap (energy, time or under-power) stopped charging."""

    type: ClassVar[EventType] = EventType.LIMIT_REACHED
    charger: str
    at: float
    limit: _session.LimitReached


@dataclass(frozen=True, slots=True)
class FaultRaised:
    """An error flag was raised (a latched fault, or the temperature warning)."""

    type: ClassVar[EventType] = EventType.FAULT_RAISED
    charger: str
    at: float
    flag: ErrorFlag


@dataclass(frozen=True, slots=True)
class FaultCleared:
    """An error flag was cleared (reset, healthy empty socket, or the temperature recovered)."""

    type: ClassVar[EventType] = EventType.FAULT_CLEARED
    charger: str
    at: float
    flag: ErrorFlag


@dataclass(frozen=True, slots=True)
class AccessEvent:
    """Access to charging: a swipe taken or refused, an authorization lapsed, the lock or the switch.

    `kind` names what happened (swipe, card_learned, card_deleted, authorization_lapsed, lock, lock_fault,
    switch); `detail` says more (a uid, a state, a reason), `source` where it came from.
    """

    type: ClassVar[EventType] = EventType.ACCESS
    charger: str
    at: float
    kind: str
    detail: str = ""
    source: str = ""


ChargerEvent = (
    Plugged
    | Unplugged
    | ContactorChanged
    | StateChanged
    | SessionStarted
    | SessionEnded
    | LimitReached
    | FaultRaised
    | FaultCleared
    | AccessEvent
)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, _session.SessionRecord):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return value


def event_message(event: ChargerEvent) -> dict[str, Any]:
    """The JSON-ready message of an event: `type`, `charger`, `at`, then its own fields."""
    message: dict[str, Any] = {"type": event.type.value}
    for f in fields(event):
        message[f.name] = _plain(getattr(event, f.name))
    return message
