"""SmartEVSE POST /settings: MAINS, MAX and CIRCUIT at run time, and the start/stop schedule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from evpilot.control.runtime import Runtime
from evpilot.core import commands as cmd
from evpilot.store.sqlite import Store
from tests.helpers import make_config, poll, serve

DAY = 86400

# Two chargers on a 16 A garage circuit, one straight on the 25 A mains.
GARAGE: dict[str, Any] = {
    "site": {"mains_limit": 25, "circuits": [{"name": "garage", "limit": 16}]},
    "chargers": [
        {"id": "cp1", "circuit": "garage"},
        {"id": "cp2", "circuit": "garage"},
        {"id": "cp3", "phases": 1, "phase": 2},
    ],
}


def local(rt: Runtime, at: float) -> str:
    """Clock time `at` as the firmware's local date-time parameter."""
    return datetime.fromtimestamp(at + rt.utc_offset(at), UTC).strftime("%Y-%m-%dT%H:%M")


async def test_mains_max_and_circuit_are_applied_and_shown() -> None:
    async with serve(make_config(GARAGE), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/settings?current_main=32")
        assert (r.status_code, r.json()) == (200, {"current_main": 32})
        r = await c.post("/chargers/cp2/settings?current_max=16&current_max_circuit=20")
        assert (r.status_code, r.json()) == (200, {"current_max": 16, "current_max_circuit": 20})
        assert rt.engine.site.mains_limit == 32
        assert rt.circuit_limit("garage") == 20
        assert rt.charger("cp2").config.max_current == 16
        assert rt.charger("cp1").config.max_current == 32
        s = (await c.get("/chargers/cp2/settings")).json()["settings"]
        assert (s["current_main"], s["current_max"], s["current_max_circuit"]) == (32, 16, 20)
        # The live values are what a later check builds on: the config follows them.
        assert rt.config.site.mains_limit == 32
        assert rt.config.site.circuits[0].limit == 20
        # MAX bounds the charger's own limits at once.
        r = await c.post("/chargers/cp2/settings?mode=1&override_current=170")
        assert (r.status_code, r.json()) == (400, {"override_current": "Value not allowed!"})


async def test_refusals_name_the_parameter_and_the_reason_and_change_nothing() -> None:
    async with serve(make_config(GARAGE), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        site_before = rt.engine.site
        mode_before = rt.charger("cp1").mode

        r = await c.post("/settings?current_main=250&mode=1")
        assert r.status_code == 400
        assert r.json() == {"current_main": "250 A is out of range (allowed 10 to 200 A)"}
        r = await c.post("/settings?current_max=81")
        assert r.status_code == 400 and "allowed 10 to 80 A" in r.json()["current_max"]
        r = await c.post("/settings?current_max=abc")
        assert (r.status_code, r.json()) == (400, {"current_max": "Value not allowed!"})

        # The fallback rule: two 3-phase chargers at 6 A safe current need 12 A on the circuit ...
        r = await c.post("/settings?current_max_circuit=11&mode=1")
        assert r.status_code == 400 and set(r.json()) == {"current_max_circuit"}
        reason = r.json()["current_max_circuit"]
        assert "circuit 'garage' L1" in reason and "adds up to 12 A" in reason and "11 A limit" in reason
        # ... and the three chargers 18 A on mains L2 (cp3 is a 1-phase charger on L2).
        r = await c.post("/settings?current_main=17")
        assert r.status_code == 400 and "mains L2" in r.json()["current_main"]
        assert "adds up to 18 A" in r.json()["current_main"]

        r = await c.post("/chargers/cp3/settings?current_max_circuit=20")
        assert r.status_code == 400 and "on no circuit" in r.json()["current_max_circuit"]

        # Lowering MAX below a user limit is refused, as MIN above MAX is.
        rt.apply(cmd.SetUserLimit("cp1", 20), "test")
        r = await c.post("/settings?current_max=16")
        assert (r.status_code, r.json()) == (400, {"current_max": "16 A is below cp1's user limit (20 A)"})
        r = await c.post("/settings?current_min=12")
        assert r.status_code == 200
        r = await c.post("/chargers/cp2/settings?current_max=10")
        assert (r.status_code, r.json()) == (400, {"current_max": "10 A is below cp2's MIN (12 A)"})

        assert rt.engine.site == site_before
        assert [rt.charger(cid).config.max_current for cid in ("cp1", "cp2", "cp3")] == [32, 32, 32]
        assert rt.charger("cp1").mode == mode_before


async def test_fuses_and_the_schedule_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "evpilot.sqlite3"
    config = make_config(GARAGE)
    store = Store(path)
    try:
        async with serve(config, speed=1, store=store) as (base, rt), httpx.AsyncClient(base_url=base) as c:
            now = rt.clock.now()
            start, stop = local(rt, now + 2 * DAY), local(rt, now + 2 * DAY + 3600)
            fuses = "current_main=30&current_max=20&current_max_circuit=14"
            r = await c.post(f"/settings?{fuses}&starttime={start}")
            assert r.status_code == 200, r.text
            r = await c.post(f"/chargers/cp2/settings?starttime={start}&stoptime={stop}&repeat=1")
            assert r.status_code == 200, r.text
            saved = (await c.get("/chargers/cp2/settings")).json()["settings"]
            await rt.stop()
    finally:
        store.close()
    store = Store(path)
    try:
        async with serve(config, speed=1, store=store) as (base, rt), httpx.AsyncClient(base_url=base) as c:
            assert rt.engine.site.mains_limit == 30 and rt.circuit_limit("garage") == 14
            assert rt.charger("cp1").config.max_current == 20
            assert rt.charger("cp2").config.max_current == 32
            s = (await c.get("/chargers/cp2/settings")).json()["settings"]
            assert (s["starttime"], s["stoptime"], s["repeat"]) == (saved["starttime"], saved["stoptime"], 1)
            assert s["stoptime"] - s["starttime"] == 3600
            assert (await c.get("/chargers/cp2/settings")).json()["mode"] == "OFF"
            s1 = (await c.get("/settings")).json()["settings"]
            assert (s1["current_main"], s1["current_max"], s1["current_max_circuit"]) == (30, 20, 14)
            assert s1["starttime"] > 0 and (s1["stoptime"], s1["repeat"]) == (0, 0)
            await rt.stop()
    finally:
        store.close()


async def test_a_start_time_holds_charging_off_until_it_comes() -> None:
    async with serve(make_config(), speed=120) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        await poll(c, "/settings", lambda d: d["evse"]["state"] == "Charging")
        start = local(rt, rt.clock.now() + 300)
        r = await c.post(f"/settings?mode=3&starttime={start}")
        assert r.status_code == 200, r.text
        start_at = r.json()["starttime"]
        doc = (await c.get("/settings")).json()
        assert doc["settings"]["starttime"] == start_at and start_at > rt.clock.now()
        assert doc["mode"] == "OFF" and doc["evse"]["access"] is False
        await poll(c, "/settings", lambda d: d["evse"]["state"] != "Charging")
        doc = await poll(c, "/settings", lambda d: d["evse"]["state"] == "Charging")
        assert rt.clock.now() >= start_at
        assert (doc["mode"], doc["settings"]["starttime"]) == ("SMART", 0)


async def test_a_daily_window_starts_and_stops_and_moves_on_a_day() -> None:
    async with serve(make_config(), speed=120) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        now = rt.clock.now()
        start, stop = local(rt, now + 120), local(rt, now + 240)
        r = await c.post(f"/settings?starttime={start}&stoptime={stop}&repeat=1")
        assert r.status_code == 200, r.text
        first = r.json()
        assert first["repeat"] == 1 and first["stoptime"] - first["starttime"] == 120
        doc = await poll(
            c, "/settings", lambda d: d["settings"]["stoptime"] == first["stoptime"] + DAY, tries=600
        )
        assert doc["settings"]["starttime"] == first["starttime"] + DAY
        assert doc["evse"]["access"] is False and doc["mode"] == "OFF"


async def test_schedule_refusals() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        now = rt.clock.now()
        r = await c.post(f"/settings?starttime={local(rt, now - 3600)}")
        assert (r.status_code, r.json()) == (400, {"starttime": "is not in the future"})
        r = await c.post("/settings?starttime=tomorrow")
        assert r.status_code == 400 and "YYYY-MM-DDTHH:MM" in r.json()["starttime"]
        later, earlier = local(rt, now + 7200), local(rt, now + 3600)
        r = await c.post(f"/settings?starttime={later}&stoptime={earlier}")
        assert (r.status_code, r.json()) == (400, {"stoptime": "is not after the start time"})
        r = await c.post(f"/settings?stoptime={later}")
        assert (r.status_code, r.json()) == (400, {"stoptime": "only with a starttime"})
        r = await c.post(f"/settings?starttime={later}&repeat=1")
        assert (r.status_code, r.json()) == (400, {"repeat": "needs a stop time"})
        r = await c.post(f"/settings?starttime={earlier}&stoptime={later}&repeat=2")
        assert (r.status_code, r.json()) == (400, {"repeat": "Value not allowed!"})
        assert rt.schedules == {} and rt.charger("cp1").enabled
        # A mode set without a starttime ends the wait, as on the firmware.
        assert (await c.post(f"/settings?starttime={later}")).status_code == 200
        assert rt.schedules["cp1"].start_at is not None and not rt.charger("cp1").enabled
        assert (await c.post("/settings?mode=3")).status_code == 200
        assert "cp1" not in rt.schedules and rt.charger("cp1").enabled


async def test_a_stored_fuse_the_config_now_refuses_is_dropped_alone(tmp_path: Path) -> None:
    path = tmp_path / "evpilot.sqlite3"
    store = Store(path)
    try:
        async with serve(make_config(GARAGE), speed=1, store=store) as (base, rt):
            async with httpx.AsyncClient(base_url=base) as c:
                r = await c.post("/settings?current_main=40&current_max_circuit=30&current_max=25")
                assert r.status_code == 200, r.text
            await rt.stop()
    finally:
        store.close()
    # The garage circuit is gone, and cp1 now hangs on a 12 A circuit with a 20 A safe current that
    # only fits because its MAX is 10 A: the stored garage limit and cp1's stored MAX (the fallback
    # rule would break) are dropped; MAINS still applies.
    cp1 = {"id": "cp1", "circuit": "shed", "max_current": 10, "safe_current": 20}
    changed = {
        "site": {"mains_limit": 25, "circuits": [{"name": "shed", "limit": 12}]},
        "chargers": [cp1, {"id": "cp2"}, {"id": "cp3"}],
    }
    store = Store(path)
    try:
        async with serve(make_config(changed), speed=1, store=store) as (_base, rt):
            assert rt.engine.site.mains_limit == 40
            assert rt.circuit_limit("shed") == 12
            assert rt.charger("cp1").config.max_current == 10
            await rt.stop()
    finally:
        store.close()
