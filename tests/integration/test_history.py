"""History (`GET /api/history`) and session exports (`/api/sessions.csv`, `/api/sessions/totals`)."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from pathlib import Path

import httpx

from evpilot.control.history import HistoryRecorder
from evpilot.core.session import SessionRecord
from evpilot.store.sqlite import Store
from tests.helpers import make_config, serve

DAY = 86400.0


class _Sink:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def add_history(self, t: int, doc: dict[str, float]) -> None:
        self.rows.append((t, dict(doc)))


def test_the_recorder_averages_each_clock_minute() -> None:
    sink = _Sink()
    rec = HistoryRecorder(sink)
    rec.observe(120.0, {"a": 1.0})
    rec.observe(150.0, {"a": 3.0, "b": 5.0})
    assert sink.rows == []
    rec.observe(180.0, {"a": 10.0})
    rec.finish()
    assert sink.rows == [(120, {"a": 2.0, "b": 5.0}), (180, {"a": 10.0})]


def test_the_store_keeps_history_bounded_in_rows_and_age(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3", history_days=1, history_max_rows=5)
    for i in range(10):
        store.add_history(60 * i, {"x": float(i)})
    assert store.history_rows() == 5
    assert [t for t, _ in store.history(0, 1e9)] == [300, 360, 420, 480, 540]
    store.add_history(int(2 * DAY), {"x": 1.0})
    assert store.history(0, 1e9) == [(int(2 * DAY), {"x": 1.0})]
    store.close()


async def test_a_sped_up_simulation_fills_the_history(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    try:
        async with (
            serve(make_config(), speed=600, store=store) as (base, rt),
            httpx.AsyncClient(base_url=base) as client,
        ):
            start = rt.clock.now()
            # The simulated home starts with a car in cp1.
            assert (await client.get("/api/chargers/cp1")).json()["plugged"]
            # At least 6 clock minutes, then until 4 minutes are filled: a loaded machine may starve
            # the sped-up ticks of some minutes (the deadline is wall time, generous).
            deadline = time.monotonic() + 60
            while True:
                r = await client.get("/api/history", params={"from": str(start), "step": 60})
                body = r.json()
                done = rt.clock.now() >= start + 6 * 60 and r.status_code == 200
                if done and len([v for v in body["series"]["mains_l1"] if v is not None]) >= 4:
                    currents = body["series"].get("charger:cp1:current", [])
                    if any(v is not None and v > 5 for v in currents):
                        break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            iso = await client.get(
                "/api/history",
                params={"from": "1970-01-01T00:00:00Z", "to": "1970-01-01T01:00:00", "step": 600},
            )
    finally:
        store.close()
    assert r.status_code == 200, r.text
    assert body["from"] == start and body["step"] == 60 and len(body["t"]) == len(body["series"]["mains_l1"])
    filled = [v for v in body["series"]["mains_l1"] if v is not None]
    assert len(filled) >= 4
    assert max(v for v in body["series"]["charger:cp1:current"] if v is not None) > 5
    assert {"pv_w", "house_w", "mains_limit", "charger:cp1:signaled", "charger:cp1:available"} <= set(
        body["series"]
    )
    assert iso.status_code == 200 and iso.json()["from"] == 0 and iso.json()["to"] == 3600
    assert len(iso.json()["t"]) == 7 and iso.json()["series"] == {}


async def test_history_refuses_bad_queries_in_the_native_envelope() -> None:
    async with serve(make_config(), speed=1) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        bad_time = await client.get("/api/history", params={"from": "yesterday"})
        small_step = await client.get("/api/history", params={"step": 10})
        backwards = await client.get("/api/history", params={"from": "2000", "to": "1000", "step": 60})
        too_many = await client.get("/api/history", params={"from": "0", "to": str(30 * DAY), "step": 60})
    assert bad_time.status_code == 400 and bad_time.json()["field"] == "from"
    assert "ISO 8601" in bad_time.json()["detail"] and bad_time.json()["error"] == "invalid"
    assert small_step.status_code == 422 and small_step.json()["field"] == "step"
    assert backwards.status_code == 400 and backwards.json()["field"] == "to"
    assert too_many.status_code == 400 and "larger step" in too_many.json()["detail"]


def _rec(sid: str, cid: str, start: float, kwh: float, card: str | None) -> SessionRecord:
    return SessionRecord(sid, cid, start, start + 3600, kwh, 7000.0, "user", card)


async def test_sessions_export_as_csv_and_totals_with_filters(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    jan1 = 1767225600.0  # 2026-01-01T00:00:00Z
    for rec in (
        _rec("s1", "cp1", jan1 + 3600, 5.0, "card-a"),
        _rec("s2", "cp1", jan1 + 7200, 2.5, "card-b"),
        _rec("s3", "cp2", jan1 + DAY, 1.0, "card-a"),
        _rec("s4", "cp1", jan1 + 40 * DAY, 4.0, None),
    ):
        store.add_session(rec)
    try:
        async with (
            serve(make_config(), speed=1, store=store) as (base, _rt),
            httpx.AsyncClient(base_url=base) as client,
        ):
            all_csv = await client.get("/api/sessions.csv")
            card_a = await client.get("/api/sessions.csv", params={"card": "card-a"})
            january = await client.get(
                "/api/sessions.csv", params={"charger": "cp1", "from": "2026-01-01", "to": "2026-02-01"}
            )
            days = (await client.get("/api/sessions/totals")).json()
            months = (
                await client.get("/api/sessions/totals", params={"by": "month", "charger": "cp1"})
            ).json()
            by_card = (await client.get("/api/sessions", params={"card": "card-a"})).json()
            feb = (await client.get("/api/sessions", params={"from": "2026-02-01T00:00:00Z"})).json()
            unknown = await client.get("/api/sessions.csv", params={"charger": "nope"})
            bad_by = await client.get("/api/sessions/totals", params={"by": "year"})
    finally:
        store.close()
    assert all_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(all_csv.text)))
    assert [r["id"] for r in rows] == ["s1", "s2", "s3", "s4"]
    assert rows[0]["started_at"] == "2026-01-01T01:00:00Z" and rows[0]["card"] == "card-a"
    assert rows[0]["energy_kwh"] == "5.0" and rows[0]["duration_s"] == "3600.0"
    assert [r["id"] for r in csv.DictReader(io.StringIO(card_a.text))] == ["s1", "s3"]
    assert [r["id"] for r in csv.DictReader(io.StringIO(january.text))] == ["s1", "s2"]
    assert [(t["period"], t["sessions"], t["energy_kwh"]) for t in days["totals"]] == [
        ("2026-01-01", 2, 7.5),
        ("2026-01-02", 1, 1.0),
        ("2026-02-10", 1, 4.0),
    ]
    assert days["sessions"] == 4 and days["energy_kwh"] == 12.5
    assert [(t["period"], t["energy_kwh"]) for t in months["totals"]] == [("2026-01", 7.5), ("2026-02", 4.0)]
    assert [s["id"] for s in by_card] == ["s3", "s1"] and [s["id"] for s in feb] == ["s4"]
    assert unknown.status_code == 404
    assert bad_by.status_code == 422 and bad_by.json()["field"] == "by"
