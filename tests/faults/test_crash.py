"""A crash (`kill -9`) or a clean stop loses at most 10 Wh, and nothing the user set.

Every test runs `evpilot run` as a subprocess on a shared data directory and kills it for real.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import evpilot_process

QUIET = {"sim": {"first_spike_s": None, "spike_rate_h": 0}}
NO_CAR = {"sim": {"first_spike_s": None, "spike_rate_h": 0, "cars": []}}
# ~22 kW at 50x: about 6 Wh per 1 s tick, 300 Wh per real second.
SPEED = 50.0
BUDGET_KWH = 0.010


def db_rows(data: Path, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """Rows from the stopped process's database."""
    with sqlite3.connect(data / "evpilot.sqlite3") as db:
        return db.execute(sql, args).fetchall()


def charger(base: str) -> dict[str, Any]:
    return httpx.get(base + "/api/chargers/cp1", timeout=5).json()  # type: ignore[no-any-return]


def until(base: str, ok: Any, tries: int = 300) -> dict[str, Any]:
    """Poll the charger document until `ok(doc)`."""
    doc: dict[str, Any] = {}
    for _ in range(tries):
        doc = charger(base)
        if ok(doc):
            return doc
        httpx.get(base + "/api/site", timeout=5)  # paces the loop without a wall-clock sleep
    raise AssertionError(f"condition not reached: {doc}")


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


def test_kill_9_at_random_moments_loses_at_most_10_wh_each(tmp_path: Path) -> None:
    rng = random.Random(10)
    data = tmp_path / "data"
    session_id: str | None = None
    seen_kwh = 0.0  # energy of the open session as last seen before a kill
    delivered = 0.0  # the simulated meter's energy, summed over the runs
    for _ in range(4):
        with evpilot_process(tmp_path, QUIET, speed=SPEED, data_dir=data) as (base, proc):
            doc = until(base, lambda d, floor=seen_kwh: d["session"] and d["session"]["energy_kwh"] > floor)
            if session_id is not None:
                # The car is still plugged in: the same session continues from its checkpoint.
                assert doc["session"]["id"] == session_id
                assert doc["session"]["energy_kwh"] >= seen_kwh - BUDGET_KWH
            session_id = doc["session"]["id"]
            for _ in range(rng.randint(5, 60)):
                httpx.get(base + "/api/site", timeout=5)
            sim = httpx.get(base + "/api/chargers/cp1/charging", timeout=5).json()
            doc = charger(base)
            kill9(proc)
        delivered += sim["energyImported"]
        seen_kwh = doc["session"]["energy_kwh"]
        ((stored_id, stored_kwh),) = db_rows(data, "SELECT id, energy_kwh FROM open_sessions")
        (stored_lifetime,) = db_rows(data, "SELECT lifetime_kwh FROM counters WHERE charger_id='cp1'")[0]
        assert stored_id == session_id
        assert seen_kwh - stored_kwh <= BUDGET_KWH
        assert doc["lifetime_kwh"] - stored_lifetime <= BUDGET_KWH
        assert stored_kwh <= seen_kwh + 0.5  # a checkpoint never invents energy (0.5: the gap to the kill)
    # A clean stop (SIGTERM) ends the session with all of its energy.
    with evpilot_process(tmp_path, QUIET, speed=SPEED, data_dir=data) as (base, proc):
        doc = until(base, lambda d: d["session"] is not None and d["session"]["energy_kwh"] > seen_kwh)
        assert doc["session"]["id"] == session_id
    assert proc.returncode == 0
    assert db_rows(data, "SELECT * FROM open_sessions") == []
    ((reason, energy),) = db_rows(
        data, "SELECT stop_reason, energy_kwh FROM sessions WHERE id=?", (session_id,)
    )
    assert reason == "shutdown"
    # Every kWh the simulator delivered before each kill is in the session, but 10 Wh per crash.
    assert energy >= delivered - 4 * BUDGET_KWH
    (lifetime,) = db_rows(data, "SELECT lifetime_kwh FROM counters WHERE charger_id='cp1'")[0]
    assert lifetime == pytest.approx(energy, abs=1e-3)


def test_a_session_whose_car_left_during_the_crash_ends_as_interrupted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with evpilot_process(tmp_path, QUIET, speed=SPEED, data_dir=data) as (base, proc):
        doc = until(base, lambda d: d["session"] is not None and d["session"]["energy_kwh"] > 0.05)
        doc = charger(base)
        kill9(proc)
    ((stored_kwh,),) = db_rows(data, "SELECT energy_kwh FROM open_sessions")
    # The car is gone when evpilot comes back: the session ends, with its checkpointed energy.
    with evpilot_process(tmp_path, NO_CAR, speed=SPEED, data_dir=data) as (base, _proc):
        sessions = httpx.get(base + "/api/sessions", timeout=5).json()
        assert charger(base)["session"] is None
    (rec,) = sessions
    assert rec["id"] == doc["session"]["id"] and rec["stop_reason"] == "interrupted"
    assert rec["energy_kwh"] == pytest.approx(stored_kwh, abs=1e-6)
    assert doc["session"]["energy_kwh"] - rec["energy_kwh"] <= BUDGET_KWH
    assert rec["ended_at"] >= doc["session"]["started_at"]
    assert db_rows(data, "SELECT * FROM open_sessions") == []


def test_the_clock_never_runs_backwards_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with evpilot_process(tmp_path, QUIET, speed=2000, data_dir=data) as (base, proc):
        before = until(base, lambda d: d["session"] is not None and d["session"]["duration_s"] > 600)
        fast = httpx.get(base + "/api/site", timeout=5).json()["sim"]["time"]
        kill9(proc)
    (high,) = db_rows(data, "SELECT CAST(value AS REAL) FROM meta WHERE key='clock_high_water'")[0]
    assert high > fast - 60  # the fast run stored times far ahead of the wall clock
    with evpilot_process(tmp_path, QUIET, speed=1, data_dir=data) as (base, _proc):
        now = httpx.get(base + "/api/site", timeout=5).json()["sim"]["time"]
        doc = charger(base)
    assert now >= high
    # The session continues at its checkpointed time, not back at the wall clock.
    assert doc["session"]["id"] == before["session"]["id"]
    assert doc["session"]["duration_s"] >= before["session"]["duration_s"] - 10


def test_external_limits_survive_a_restart_with_their_remaining_time(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with evpilot_process(tmp_path, QUIET, data_dir=data) as (base, proc), httpx.Client(base_url=base) as c:
        assert c.put("/api/v1/limits", json={"amperageLimit": 10, "timeout": 3_600_000}).status_code == 200
        r = c.put("/api/site/limit", json={"amps": 20, "source": "lease", "timeout_s": 3600})
        assert r.status_code == 200
        assert c.post("/settings?override_current=150").status_code == 200
        assert c.put("/api/site/grid_relay", json={"open": True}).status_code == 200
        lease_s = c.get("/api/v1/limits").json()["timeout"] / 1000
    assert proc.returncode == 0

    def check(base: str) -> None:
        with httpx.Client(base_url=base) as c:
            limits = c.get("/api/v1/limits").json()
            assert limits["amperageLimit"] == 10 and 0 < limits["timeout"] / 1000 <= lease_s
            site = c.get("/api/site").json()
            assert site["grid_relay_open"] is True
            assert site["site_limits"]["lease"]["amps"] == 20
            assert 0 < site["site_limits"]["lease"]["expires_in_s"] <= 3600
            assert charger(base)["limits"]["override"] == 15.0
            assert c.get("/settings").json()["settings"]["override_current"] == 150

    with evpilot_process(tmp_path, QUIET, data_dir=data) as (base, proc):
        check(base)
        kill9(proc)
    with evpilot_process(tmp_path, QUIET, data_dir=data) as (base, proc), httpx.Client(base_url=base) as c:
        check(base)
        # Cleared ones stay cleared.
        assert c.put("/api/v1/limits", json={"amperageLimit": None}).status_code == 200
        assert c.put("/api/site/limit", json={"amps": None, "source": "lease"}).status_code == 200
        assert c.post("/settings?override_current=0").status_code == 200
        assert c.put("/api/site/grid_relay", json={"open": False}).status_code == 200
    with evpilot_process(tmp_path, QUIET, data_dir=data) as (base, proc), httpx.Client(base_url=base) as c:
        assert c.get("/api/v1/limits").json()["amperageLimit"] is None
        site = c.get("/api/site").json()
        assert site["grid_relay_open"] is False and site["site_limits"] == {}
        assert charger(base)["limits"]["override"] is None


def test_a_lapsed_lease_does_not_come_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with (
        evpilot_process(tmp_path, QUIET, speed=SPEED, data_dir=data) as (base, proc),
        httpx.Client(base_url=base) as c,
    ):
        # 5 s of clock time: lapsed by the time a restart is done at 50x.
        assert c.put("/api/v1/limits", json={"amperageLimit": 10, "timeout": 5000}).status_code == 200
        kill9(proc)
    with evpilot_process(tmp_path, QUIET, speed=SPEED, data_dir=data) as (base, _proc):
        assert httpx.get(base + "/api/v1/limits", timeout=5).json()["amperageLimit"] is None


def test_the_mqtt_override_survives_a_restart(tmp_path: Path) -> None:
    from tests.integration.mqtt_helpers import Broker, mosquitto_client

    broker = Broker(tmp_path / "broker")
    broker.start()
    config = {
        **QUIET,
        "mqtt": {"url": broker.url, "smartevse": {"prefix": "SmartEVSE-{serial}", "serials": {"cp1": "x1"}}},
    }
    data = tmp_path / "data"
    try:
        with evpilot_process(tmp_path, config, data_dir=data) as (base, _proc):
            # Retried until it lands: a message sent before the bridge has subscribed is lost.
            for _ in range(100):
                pub = [mosquitto_client("mosquitto_pub"), "-p", str(broker.port)]
                subprocess.run([*pub, "-t", "SmartEVSE-x1/Set/CurrentOverride", "-m", "120"], check=True)
                doc = charger(base)
                if doc["limits"]["override"] == 12.0:
                    break
            assert doc["limits"]["override"] == 12.0
        with evpilot_process(tmp_path, QUIET, data_dir=data) as (base, _proc):
            assert charger(base)["limits"]["override"] == 12.0
    finally:
        broker.stop()
