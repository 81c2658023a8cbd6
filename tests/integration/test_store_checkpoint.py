"""The store's writer thread, its migration, and the runtime's checkpoints on a manual clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from evpilot.control.clock import ManualClock, ScaledClock
from evpilot.control.runtime import CHECKPOINT_KWH, CHECKPOINT_S, Runtime
from evpilot.core.session import SessionCheckpoint, SessionRecord
from evpilot.store.sqlite import _MIGRATIONS, SCHEMA_VERSION, Store
from tests.helpers import make_config

QUIET = {"sim": {"first_spike_s": None, "spike_rate_h": 0}}


def test_a_version_1_database_is_migrated_and_keeps_its_sessions(tmp_path: Path) -> None:
    path = tmp_path / "evpilot.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.executescript(_MIGRATIONS[1])
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute("INSERT INTO sessions VALUES ('s1','cp1',100,200,1.5,7000,'user',NULL)")
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION == 6
    assert store.outbox("ocpp") == [] and store.history(0, 1e12) == []
    assert [s.id for s in store.sessions()] == ["s1"]
    assert store.open_sessions() == [] and store.high_water() == 200
    store.close()


def test_checkpoints_coalesce_and_an_ended_session_replaces_its_checkpoint(tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    for i in range(200):
        cp = SessionCheckpoint("s1", "cp1", 100.0, i / 1000, 7000.0, float(i), None, 100.0 + i)
        store.checkpoint([cp], {"cp1": 5 + i / 1000}, 100.0 + i)
    (cp,) = store.open_sessions()
    assert cp.energy_kwh == 0.199 and store.lifetime("cp1") == 5.199 and store.high_water() == 299.0
    # Far fewer transactions than calls: a waiting checkpoint is replaced by the newer one.
    assert store.writes < 200
    store.add_session(SessionRecord("s1", "cp1", 100.0, 400.0, 0.2, 7000.0, "user", None))
    assert store.open_sessions() == [] and store.high_water() == 400.0
    store.close()


def test_a_failed_write_is_logged_and_the_writer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    store._submit(lambda db: db.execute("INSERT INTO nowhere VALUES (1)"))
    store.set_setting("good", 1)
    assert store.get_setting("good") == 1
    assert store.write_errors == 1 and "a write failed" in caplog.text
    store.close()


def run_for(rt: Runtime, clock: ManualClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1.0)
        rt.tick()


def test_the_runtime_checkpoints_every_10_wh_and_unsaved_energy_stays_under_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    clock = ManualClock()
    rt = Runtime(make_config(QUIET), clock, store)
    rt.tick()
    ch = rt.charger("cp1")
    worst = 0.0
    for _ in range(120):
        clock.advance(1.0)
        rt.tick()
        (cp,) = store.open_sessions()
        assert ch.session is not None and cp.id == ch.session.id
        worst = max(worst, ch.session.energy_kwh - cp.energy_kwh)
        assert clock.now() - cp.at <= CHECKPOINT_S
    assert ch.session.energy_kwh > 0.3
    assert worst <= CHECKPOINT_KWH
    store.close()


def test_an_idle_site_still_checkpoints_every_10_s(tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    clock = ManualClock()
    rt = Runtime(make_config({**QUIET, "sim": {**QUIET["sim"], "cars": []}}), clock, store)
    rt.tick()
    start = store.high_water()
    run_for(rt, clock, 25)
    assert store.high_water() >= start + 20
    store.close()


def test_a_resumed_session_keeps_counting(tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    clock = ManualClock()
    rt = Runtime(make_config(QUIET), clock, store)
    rt.tick()
    run_for(rt, clock, 60)
    (cp,) = store.open_sessions()
    # No stop(): the process died. A new runtime on a clock that restarted earlier.
    clock2 = ManualClock(clock.now() - 3600)
    rt2 = Runtime(make_config(QUIET), clock2, store)
    assert clock2.now() >= cp.at
    rt2.tick()
    run_for(rt2, clock2, 30)
    s = rt2.charger("cp1").session
    assert s is not None and s.id == cp.id and s.energy_kwh > cp.energy_kwh
    assert rt2.charger("cp1").lifetime_kwh == pytest.approx(s.energy_kwh, abs=1e-6)
    store.close()


def test_a_scaled_clock_moves_forward_only() -> None:
    clock = ScaledClock(1.0)
    now = clock.now()
    clock.not_before(now - 100)
    assert clock.now() < now + 50
    clock.not_before(now + 1000)
    assert clock.now() >= now + 1000


def test_the_outbox_keeps_its_order_across_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    for i in range(5):
        store.outbox_push("ocpp:A", {"n": i})
    store.outbox_push("ocpp:B", {"n": 99})
    (first, _), *_ = store.outbox("ocpp:A")
    store.outbox_drop("ocpp:A", first)
    store.close()
    again = Store(tmp_path / "evpilot.sqlite3")
    assert [body["n"] for _, body in again.outbox("ocpp:A")] == [1, 2, 3, 4]
    assert [body["n"] for _, body in again.outbox("ocpp:B")] == [99]
    again.close()
