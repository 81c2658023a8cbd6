"""What the runtime needs from a store: the protocol the SQLite store implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from evpilot.core.session import SessionCheckpoint, SessionRecord


class SessionStore(Protocol):
    """Sessions, settings, lifetime counters and checkpoints; writes never block the caller on disk."""

    def add_session(self, rec: SessionRecord) -> None:
        """Store an ended session (and drop its checkpoint)."""

    def sessions(self, charger_id: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Ended sessions, newest first."""

    def get_setting(self, key: str) -> Any:
        """A stored setting (JSON value) or None."""

    def set_setting(self, key: str, value: Any, now: float | None = None) -> None:
        """Store a setting as JSON."""

    def lifetime(self, charger_id: str) -> float:
        """The stored lifetime energy counter (kWh)."""

    def save_lifetime(self, counters: Mapping[str, float]) -> None:
        """Store lifetime counters; a stored value never decreases."""

    def checkpoint(
        self, open_sessions: list[SessionCheckpoint], counters: Mapping[str, float], now: float
    ) -> None:
        """Replace the open sessions and save the counters, in one transaction."""

    def open_sessions(self) -> list[SessionCheckpoint]:
        """The checkpointed open sessions."""

    def outbox(self, queue: str) -> list[tuple[int, Any]]:
        """The messages waiting in `queue`, oldest first, each with its sequence number."""

    def outbox_push(self, queue: str, body: Any) -> None:
        """Append a message to `queue` (kept until `outbox_drop`, across restarts)."""

    def outbox_drop(self, queue: str, seq: int) -> None:
        """Remove a delivered message from `queue`."""

    def high_water(self) -> float:
        """The latest clock time stored so far (0 if none)."""

    def flush(self) -> None:
        """Wait until every queued write is on disk."""

    def close(self) -> None:
        """Write what is queued and close."""
