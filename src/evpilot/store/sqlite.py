"""SQLite storage with a versioned schema; writes go through one writer thread, off the event loop."""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from evpilot.core.access import Card
from evpilot.core.session import SessionCheckpoint, SessionRecord
from evpilot.store.base import TokenRecord

log = logging.getLogger("evpilot.store")

SCHEMA_VERSION = 6
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
    2: """
    CREATE TABLE open_sessions (
        charger_id TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        started_at REAL NOT NULL,
        energy_kwh REAL NOT NULL,
        peak_power_w REAL NOT NULL,
        charging_s REAL NOT NULL,
        id_tag TEXT,
        checkpoint_at REAL NOT NULL
    );
    """,
    3: """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX outbox_queue ON outbox(queue, seq);
    """,
    4: """
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    5: """
    ALTER TABLE sessions ADD COLUMN auth_method TEXT;
    ALTER TABLE open_sessions ADD COLUMN auth_method TEXT;
    CREATE TABLE cards (
        uid TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        chargers TEXT NOT NULL,
        expires_at REAL,
        energy_kwh REAL
    );
    """,
    6: """
    CREATE TABLE history (
        t INTEGER PRIMARY KEY,
        doc TEXT NOT NULL
    );
    """,
}
# Writes waiting for the writer thread; beyond this the caller waits (nothing is dropped).
QUEUE_SIZE = 10_000
_HWM = "clock_high_water"
# History: one row per clock minute, kept this long and never more than this many rows.
HISTORY_DAYS = 90
HISTORY_MAX_ROWS = HISTORY_DAYS * 1440

Job = Callable[[sqlite3.Connection], None]


class Store:
    """Sessions, settings, lifetime counters and open-session checkpoints in one SQLite file.

    Every write is queued to one writer thread and returns at once; every read first waits for
    the queued writes, so a caller always reads what it wrote.
    """

    def __init__(
        self,
        path: str | Path,
        queue_size: int = QUEUE_SIZE,
        history_days: float = HISTORY_DAYS,
        history_max_rows: int = HISTORY_MAX_ROWS,
    ) -> None:
        self.path = str(path)
        self.history_days = history_days
        self.history_max_rows = history_max_rows
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL survives a process crash; a power cut may lose the last commits only.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self.write_errors = 0
        self.writes = 0
        self._lock = threading.Lock()  # the connection: held by the writer for a whole transaction
        self._slot_lock = threading.Lock()  # the coalesced checkpoint only: never waits on disk
        self._queue: queue.Queue[Job | None] = queue.Queue(queue_size)
        self._full_logged = False
        # Coalesced writes: only the newest checkpoint waits in the queue.
        self._latest_checkpoint: tuple[list[SessionCheckpoint], dict[str, float], float] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="evpilot-store", daemon=True)
        self._thread.start()

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

    # ---- the writer ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                with self._lock, self.db:
                    job(self.db)
                self.writes += 1
            except Exception:  # one failed write must not stop the others
                self.write_errors += 1
                log.exception("store: a write failed")
            finally:
                self._queue.task_done()

    def _submit(self, job: Job) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            if not self._full_logged:
                self._full_logged = True
                log.error("store: %d writes queued, the disk is not keeping up; waiting", QUEUE_SIZE)
            self._queue.put(job)

    def flush(self) -> None:
        """Wait until every queued write is committed."""
        self._queue.join()

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        self.flush()
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    @staticmethod
    def _raise_hwm(db: sqlite3.Connection, now: float | None) -> None:
        if now is None:
            return
        db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = "
            "CAST(MAX(CAST(value AS REAL), CAST(excluded.value AS REAL)) AS TEXT)",
            (_HWM, repr(float(now))),
        )

    # ---- reads --------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        rows = self._read("SELECT value FROM meta WHERE key='schema_version'")
        return int(rows[0][0]) if rows else 0

    def sessions(self, charger_id: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Ended sessions, newest first."""
        sql = "SELECT * FROM sessions"
        args: tuple[Any, ...] = ()
        if charger_id is not None:
            sql += " WHERE charger_id = ?"
            args = (charger_id,)
        sql += " ORDER BY started_at DESC LIMIT ?"
        return [SessionRecord(*row) for row in self._read(sql, (*args, limit))]

    def get_setting(self, key: str) -> Any:
        """A stored setting (JSON value) or None."""
        rows = self._read("SELECT value FROM settings WHERE key = ?", (key,))
        return None if not rows else json.loads(rows[0][0])

    def lifetime(self, charger_id: str) -> float:
        """The stored lifetime energy counter (kWh)."""
        rows = self._read("SELECT lifetime_kwh FROM counters WHERE charger_id = ?", (charger_id,))
        return float(rows[0][0]) if rows else 0.0

    def open_sessions(self) -> list[SessionCheckpoint]:
        """The checkpointed open sessions (left behind by a crash)."""
        rows = self._read(
            "SELECT id, charger_id, started_at, energy_kwh, peak_power_w, charging_s, id_tag, "
            "checkpoint_at, auth_method FROM open_sessions ORDER BY charger_id"
        )
        return [SessionCheckpoint(*row) for row in rows]

    def high_water(self) -> float:
        """The latest clock time stored so far (0 if none): a restarted clock must not start earlier."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (_HWM,))
        ended = self._read("SELECT MAX(ended_at) FROM sessions")
        values = [float(rows[0][0])] if rows else []
        if ended and ended[0][0] is not None:
            values.append(float(ended[0][0]))
        return max(values, default=0.0)

    def outbox(self, queue: str) -> list[tuple[int, Any]]:
        """The messages waiting in `queue`, oldest first, each with its sequence number."""
        rows = self._read("SELECT seq, body FROM outbox WHERE queue = ? ORDER BY seq", (queue,))
        return [(int(seq), json.loads(body)) for seq, body in rows]

    def history(self, start: float, end: float) -> list[tuple[int, dict[str, Any]]]:
        """The per-minute history rows with `start <= t <= end`, oldest first."""
        rows = self._read("SELECT t, doc FROM history WHERE t >= ? AND t <= ? ORDER BY t", (start, end))
        return [(int(t), json.loads(doc)) for t, doc in rows]

    def history_rows(self) -> int:
        """How many history rows are stored."""
        return int(self._read("SELECT COUNT(*) FROM history")[0][0])

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
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("charger_id = ?", charger_id),
            ("id_tag = ?", id_tag),
            ("started_at >= ?", start),
            ("started_at < ?", end),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = "SELECT * FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY started_at {'DESC' if newest_first else 'ASC'} LIMIT ?"
        return [SessionRecord(*row) for row in self._read(sql, (*args, limit))]

    # ---- writes (queued) ----------------------------------------------------------------------

    def add_history(self, t: int, doc: Mapping[str, Any]) -> None:
        """Store one minute's averages at clock time `t` and drop what is older or beyond the bound."""
        text = json.dumps(doc, separators=(",", ":"))
        keep_s = self.history_days * 86400
        max_rows = self.history_max_rows

        def job(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO history(t, doc) VALUES(?, ?)", (t, text))
            db.execute("DELETE FROM history WHERE t < ?", (t - keep_s,))
            db.execute(
                "DELETE FROM history WHERE t <= (SELECT t FROM history ORDER BY t DESC LIMIT 1 OFFSET ?)",
                (max_rows,),
            )

        self._submit(job)

    def outbox_push(self, queue: str, body: Any) -> None:
        """Append a message to `queue` (kept until `outbox_drop`, across restarts)."""
        text = json.dumps(body)

        def job(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO outbox(queue, body) VALUES(?, ?)", (queue, text))

        self._submit(job)

    def outbox_drop(self, queue: str, seq: int) -> None:
        """Remove a delivered message from `queue`."""

        def job(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM outbox WHERE queue = ? AND seq = ?", (queue, seq))

        self._submit(job)

    def add_session(self, rec: SessionRecord) -> None:
        """Store an ended session and drop its checkpoint, in one transaction."""

        def job(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    rec.id,
                    rec.charger_id,
                    rec.started_at,
                    rec.ended_at,
                    rec.energy_kwh,
                    rec.peak_power_w,
                    rec.stop_reason,
                    rec.id_tag,
                    rec.auth_method,
                ),
            )
            db.execute("DELETE FROM open_sessions WHERE id = ?", (rec.id,))
            self._raise_hwm(db, rec.ended_at)

        self._submit(job)

    def set_setting(self, key: str, value: Any, now: float | None = None) -> None:
        """Store a setting as JSON (serialized now, written by the writer thread)."""
        text = json.dumps(value)

        def job(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO settings(key, value) VALUES(?, ?)", (key, text))
            self._raise_hwm(db, now)

        self._submit(job)

    def save_lifetime(self, counters: Mapping[str, float]) -> None:
        """Store lifetime counters; a stored value never decreases."""
        values = dict(counters)
        self._submit(lambda db: self._write_counters(db, values))

    @staticmethod
    def _write_counters(db: sqlite3.Connection, counters: Mapping[str, float]) -> None:
        for cid, kwh in counters.items():
            db.execute(
                "INSERT INTO counters(charger_id, lifetime_kwh) VALUES(?, ?) "
                "ON CONFLICT(charger_id) DO UPDATE SET lifetime_kwh = "
                "MAX(lifetime_kwh, excluded.lifetime_kwh)",
                (cid, kwh),
            )

    def checkpoint(
        self, open_sessions: list[SessionCheckpoint], counters: Mapping[str, float], now: float
    ) -> None:
        """Replace the open sessions and save the counters and the clock, in one transaction.

        A checkpoint still waiting in the queue is replaced by this one (the newest wins).
        """
        with self._slot_lock:
            pending = self._latest_checkpoint is not None
            self._latest_checkpoint = (list(open_sessions), dict(counters), now)
        if not pending:
            self._submit(self._write_checkpoint)

    def _write_checkpoint(self, db: sqlite3.Connection) -> None:
        with self._slot_lock:
            latest, self._latest_checkpoint = self._latest_checkpoint, None
        if latest is None:
            return
        sessions, counters, now = latest
        db.execute(
            f"DELETE FROM open_sessions WHERE charger_id NOT IN ({','.join('?' * len(sessions))})",
            tuple(s.charger_id for s in sessions),
        )
        for s in sessions:
            db.execute(
                "INSERT OR REPLACE INTO open_sessions(charger_id, id, started_at, energy_kwh, "
                "peak_power_w, charging_s, id_tag, checkpoint_at, auth_method) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    s.charger_id,
                    s.id,
                    s.started_at,
                    s.energy_kwh,
                    s.peak_power_w,
                    s.charging_s,
                    s.id_tag,
                    s.at,
                    s.auth_method,
                ),
            )
        self._write_counters(db, counters)
        self._raise_hwm(db, now)

    # ---- API tokens (`evpilot auth token ...`); only the secret's hash is stored ----------------

    def add_token(self, token: TokenRecord, secret_hash: str) -> None:
        """Store a new API token (its id, role, name, creation time and the hash of its secret)."""
        with self._lock, self.db:
            self.db.execute(
                "INSERT INTO api_tokens(id, secret_hash, role, name, created_at) VALUES(?, ?, ?, ?, ?)",
                (token.id, secret_hash, token.role, token.name, token.created_at),
            )

    def token(self, token_id: str) -> tuple[TokenRecord, str] | None:
        """The token with this id and its secret hash, or None."""
        rows = self._read(
            "SELECT id, role, name, created_at, secret_hash FROM api_tokens WHERE id = ?", (token_id,)
        )
        if not rows:
            return None
        r = rows[0]
        return TokenRecord(r[0], r[1], r[2], r[3]), r[4]

    def tokens(self) -> list[TokenRecord]:
        """Every API token, oldest first (without secrets)."""
        rows = self._read("SELECT id, role, name, created_at FROM api_tokens ORDER BY created_at, id")
        return [TokenRecord(r[0], r[1], r[2], r[3]) for r in rows]

    def revoke_token(self, token_id: str) -> bool:
        """Delete a token; False if there was none with this id."""
        self.flush()
        with self._lock, self.db:
            return self.db.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,)).rowcount > 0

    def cards(self) -> list[Card]:
        """The learned RFID cards, by uid."""
        rows = self._read("SELECT uid, name, chargers, expires_at, energy_kwh FROM cards ORDER BY uid")
        return [Card(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4]) for r in rows]

    def put_card(self, card: Card) -> None:
        """Store (or replace) a learned card."""
        row = (card.uid, card.name, json.dumps(list(card.chargers)), card.expires_at, card.energy_kwh)

        def job(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO cards VALUES (?,?,?,?,?)", row)

        self._submit(job)

    def delete_card(self, uid: str | None) -> None:
        """Forget the card `uid`, or every card (None)."""

        def job(db: sqlite3.Connection) -> None:
            if uid is None:
                db.execute("DELETE FROM cards")
            else:
                db.execute("DELETE FROM cards WHERE uid = ?", (uid,))

        self._submit(job)

    def close(self) -> None:
        """Write everything queued, stop the writer and close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self.db.close()
