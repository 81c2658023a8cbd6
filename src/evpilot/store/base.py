"""What the runtime needs from a store: the protocol the SQLite store implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from evpilot.core.access import Card
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

    def cards(self) -> list[Card]:
        """The learned RFID cards, by uid."""

    def put_card(self, card: Card) -> None:
        """Store (or replace) a learned card."""

    def delete_card(self, uid: str | None) -> None:
        """Forget the card `uid`, or every card (None)."""

    def add_history(self, t: int, doc: Mapping[str, Any]) -> None:
        """Store one minute's averages at clock time `t` (queued)."""

    def history(self, start: float, end: float) -> list[tuple[int, dict[str, Any]]]:
        """The per-minute history rows with `start <= t <= end`, oldest first."""

    def sessions_between(
        self,
        charger_id: str | None = None,
        id_tag: str | None = None,
        start: float | None = None,
        end: float | None = None,
        limit: int = 100_000,
        newest_first: bool = False,
    ) -> list[SessionRecord]:
        """Ended sessions that started in [start, end), filtered by charger and card, oldest first."""

    def high_water(self) -> float:
        """The latest clock time stored so far (0 if none)."""

    def flush(self) -> None:
        """Wait until every queued write is on disk."""

    def close(self) -> None:
        """Write what is queued and close."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token as listed: id, role, name and creation time (Unix seconds); never its secret."""

    id: str
    role: str
    name: str
    created_at: float


@runtime_checkable
class TokenStore(Protocol):
    """API tokens: only a hash of each secret is kept."""

    def add_token(self, token: TokenRecord, secret_hash: str) -> None:
        """Store a new token."""

    def token(self, token_id: str) -> tuple[TokenRecord, str] | None:
        """The token with this id and its secret hash, or None."""

    def tokens(self) -> list[TokenRecord]:
        """Every token, oldest first."""

    def revoke_token(self, token_id: str) -> bool:
        """Delete a token; False if there was none."""
