"""Readings no real meter could give are refused at the edge, with the API's own error."""

from __future__ import annotations

import httpx
import pytest

from evpilot.api.mqtt import MqttBridge
from evpilot.config import parse_config
from tests.helpers import make_config, poll, serve

API_MAINS = {"site": {"mains_meter": "api", "mains_limit": 25}}
SE = {"prefix": "SE-{serial}", "serials": {"cp1": "1"}}


async def test_a_smartevse_ev_meter_energy_jump_is_refused() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        await poll(c, "/settings", lambda d: d["evse"]["state"] == "Charging")
        ch = rt.charger("cp1")
        # The first reading only sets the base: a meter's counter does not start at zero.
        assert (await c.post("/ev_meter?import_active_energy=1000")).status_code == 200
        before = ch.lifetime_kwh
        r = await c.post("/ev_meter?import_active_energy=999999999")
        assert r.status_code == 400
        assert "more than the charger's" in r.json()["import_active_energy"]
        rt.tick()
        assert ch.lifetime_kwh - before < 0.1
        session = (await c.get("/api/chargers/cp1")).json()["session"]
        assert session["energy_kwh"] < 10


async def test_a_plausible_ev_meter_rise_counts() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        await poll(c, "/settings", lambda d: d["evse"]["state"] == "Charging")
        ch = rt.charger("cp1")
        assert (await c.post("/ev_meter?import_active_energy=5000")).status_code == 200
        before = ch.lifetime_kwh
        assert (await c.post("/ev_meter?import_active_energy=5002")).status_code == 200  # 2 Wh: meter steps
        await poll(c, "/api/site", lambda d: ch.lifetime_kwh > before)
        assert ch.lifetime_kwh - before == pytest.approx(0.002)


async def test_an_mqtt_ev_meter_energy_jump_is_refused() -> None:
    config = parse_config({"mqtt": {"url": "mqtt://127.0.0.1:1", "smartevse": SE}})
    async with serve(config, speed=20) as (_base, rt):
        bridge = MqttBridge(rt, config.mqtt)
        await bridge.start()  # no broker: the commands are fed to its message handler
        assert bridge.handle_message("SE-1/Set/EVMeter", b"60:61:62:4140:123456")
        before = rt.charger("cp1").lifetime_kwh
        assert not bridge.handle_message("SE-1/Set/EVMeter", b"60:61:62:4140:999999999")
        assert bridge.rejected == 1
        rt.tick()
        assert rt.charger("cp1").lifetime_kwh - before < 0.1
        await bridge.stop()


@pytest.mark.parametrize("currents", [[-500, 0, 0], [0, 76, 0], [0, 0, 1000]])
async def test_native_mains_beyond_three_times_the_limit_is_refused(currents: list[float]) -> None:
    async with serve(make_config(API_MAINS), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.put("/api/meters/mains", json={"currents": currents, "battery_current": 5})
        assert r.status_code == 400
        body = r.json()
        index = next(i for i, a in enumerate(currents) if abs(a) > 75)
        assert body["field"] == f"currents[{index}]" and "75" in body["detail"]
        assert rt.api_meter.latest() is None and rt.engine.battery.current is None
        # Up to 3x the limit is a reading (an overload the core acts on), not refused.
        r = await c.put("/api/meters/mains", json={"currents": [75, -75, 10]})
        assert r.status_code == 200


async def test_smartevse_mains_beyond_three_times_the_limit_is_refused() -> None:
    async with serve(make_config(API_MAINS), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/currents?L1=0&L2=-5000&L3=0")
        assert r.status_code == 400
        assert "beyond" in r.json()["L2"]
        assert rt.api_meter.latest() is None
        assert (await c.post("/currents?L1=0&L2=-750&L3=0")).status_code == 200


async def test_mqtt_mains_beyond_three_times_the_limit_is_refused() -> None:
    config = parse_config({**API_MAINS, "mqtt": {"url": "mqtt://127.0.0.1:1", "smartevse": SE}})
    async with serve(config, speed=10) as (_base, rt):
        bridge = MqttBridge(rt, config.mqtt)
        await bridge.start()
        assert not bridge.handle_message("SE-1/Set/MainsMeter", b"1000:0:0")
        assert rt.api_meter.latest() is None
        assert bridge.handle_message("SE-1/Set/MainsMeter", b"750:0:0")
        await bridge.stop()


async def test_a_circuit_reading_beyond_three_times_its_limit_is_refused() -> None:
    config = make_config(
        {
            "site": {"circuits": [{"name": "garage", "limit": 16, "meter": "api"}], "fallback_current": 0},
            "chargers": [{"id": "cp1", "circuit": "garage", "max_current": 16}],
        }
    )
    async with serve(config, speed=10) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.put("/api/meters/circuits/garage", json={"currents": [0, 0, 48.5]})
        assert r.status_code == 400 and r.json()["field"] == "currents[2]"
        r = await c.put("/api/meters/circuits/garage", json={"currents": [0, 0, 48]})
        assert r.status_code == 200
