"""Charging sessions: energy, duration, caps and the record kept when they end."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class StopReason(StrEnum):
    """Why a session ended or charging stopped."""

    EV_DISCONNECTED = "ev_disconnected"
    USER = "user"
    ENERGY_LIMIT = "energy_limit"
    TIME_LIMIT = "time_limit"
    FAULT = "fault"
    SHUTDOWN = "shutdown"
    DISABLED = "disabled"
    INTERRUPTED = "interrupted"


class LimitReached(StrEnum):
    """Which session cap stopped charging."""

    ENERGY = "energy"
    TIME = "time"
    UNDER_POWER = "under_power"


@dataclass(slots=True)
class Session:
    """A charging session from plug-in (and permission) to unplug."""

    id: str
    charger_id: str
    started_at: float
    id_tag: str | None = None
    energy_kwh: float = 0.0
    peak_power_w: float = 0.0
    charging_s: float = 0.0
    ended_at: float | None = None
    stop_reason: str | None = None
    # How the session was authorized: card, remote, api or free (None: not known, an older record).
    auth_method: str | None = None

    def duration_s(self, now: float) -> float:
        """Seconds since the session started (until it ended)."""
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.started_at)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """An ended session as stored in the history."""

    id: str
    charger_id: str
    started_at: float
    ended_at: float
    energy_kwh: float
    peak_power_w: float
    stop_reason: str
    id_tag: str | None
    auth_method: str | None = None

    @staticmethod
    def of(session: Session) -> SessionRecord:
        """Freeze an ended session."""
        return SessionRecord(
            id=session.id,
            charger_id=session.charger_id,
            started_at=session.started_at,
            ended_at=session.ended_at if session.ended_at is not None else session.started_at,
            energy_kwh=round(session.energy_kwh, 6),
            peak_power_w=round(session.peak_power_w, 1),
            stop_reason=session.stop_reason or "",
            id_tag=session.id_tag,
            auth_method=session.auth_method,
        )


@dataclass(frozen=True, slots=True)
class SessionCheckpoint:
    """An open session as checkpointed to the store, `at` clock time."""

    id: str
    charger_id: str
    started_at: float
    energy_kwh: float
    peak_power_w: float
    charging_s: float
    id_tag: str | None
    at: float
    auth_method: str | None = None

    @staticmethod
    def of(session: Session, now: float) -> SessionCheckpoint:
        """Freeze an open session."""
        return SessionCheckpoint(
            id=session.id,
            charger_id=session.charger_id,
            started_at=session.started_at,
            energy_kwh=session.energy_kwh,
            peak_power_w=session.peak_power_w,
            charging_s=session.charging_s,
            id_tag=session.id_tag,
            at=now,
            auth_method=session.auth_method,
        )

    def session(self) -> Session:
        """The open session this checkpoint holds, to continue."""
        return Session(
            id=self.id,
            charger_id=self.charger_id,
            started_at=self.started_at,
            id_tag=self.id_tag,
            energy_kwh=self.energy_kwh,
            peak_power_w=self.peak_power_w,
            charging_s=self.charging_s,
            auth_method=self.auth_method,
        )


def cap_reached(
    session: Session, now: float, energy_cap_kwh: float | None, time_cap_min: float | None
) -> LimitReached | None:
    """Which cap, if any, the session has reached; a cap of None or 0 means no cap."""
    if energy_cap_kwh and session.energy_kwh >= energy_cap_kwh:
        return LimitReached.ENERGY
    if time_cap_min and session.duration_s(now) >= time_cap_min * 60.0:
        return LimitReached.TIME
    return None
