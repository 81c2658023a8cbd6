"""SQLite storage with a versioned schema."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from evpilot.core.session import SessionRecord

SCHEMA_VERSION = 1
_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        charger_id TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        energy_kwh REAL NOT NULL,
        peak_power_w REAL NOT NULL,
        stop_reason TEXT NOT NULL,
        id_tag TEXT
    );
    CREATE INDEX sessions_charger ON sessions(charger_id, started_at);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE counters (charger_id TEXT PRIMARY KEY, lifetime_kwh REAL NOT NULL);
    """,
}


class Store:
    """Sessions, settings and lifetime counters in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self._migrate()

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"database {self.path} has schema {version}, newer than this evpilot ({SCHEMA_VERSION})"
            )
        with self.db:
            for v in range(version + 1, SCHEMA_VERSION + 1):
                self.db.executescript(_MIGRATIONS[v])
                self.db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', ?)", (str(v),)
                )

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def add_session(self, rec: SessionRecord) -> None:
        """Store an ended session."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?)",
                (
                    rec.id,
                    rec.charger_id,
                    rec.started_at,
                    rec.ended_at,
                    rec.energy_kwh,
                    rec.peak_power_w,
                    rec.stop_reason,
                    rec.id_tag,
                ),
            )

    def sessions(self, charger_id: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Ended sessions, newest first."""
        sql = "SELECT * FROM sessions"
        args: tuple[Any, ...] = ()
        if charger_id is not None:
            sql += " WHERE charger_id = ?"
            args = (charger_id,)
        sql += " ORDER BY started_at DESC LIMIT ?"
        rows = self.db.execute(sql, (*args, limit)).fetchall()
        return [SessionRecord(*row) for row in rows]

    def get_setting(self, key: str) -> Any:
        """A stored setting (JSON value) or None."""
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_setting(self, key: str, value: Any) -> None:
        """Store a setting as JSON."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO settings(key, value) VALUES(?, ?)", (key, json.dumps(value))
            )

    def lifetime(self, charger_id: str) -> float:
        """The stored lifetime energy counter (kWh)."""
        row = self.db.execute(
            "SELECT lifetime_kwh FROM counters WHERE charger_id = ?", (charger_id,)
        ).fetchone()
        return float(row[0]) if row else 0.0

    def save_lifetime(self, counters: dict[str, float]) -> None:
        """Store lifetime counters; a stored value never decreases."""
        with self.db:
            for cid, kwh in counters.items():
                self.db.execute(
                    "INSERT INTO counters(charger_id, lifetime_kwh) VALUES(?, ?) "
                    "ON CONFLICT(charger_id) DO UPDATE SET lifetime_kwh = "
                    "MAX(lifetime_kwh, excluded.lifetime_kwh)",
                    (cid, kwh),
                )

    def close(self) -> None:
        """Close the database."""
        self.db.close()
