"""ESP32-EVSE facade: seed 004's evcc configuration runs unchanged against a live evpilot."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jq
import pytest
import yaml

from tests.helpers import make_config, serve

DATA = Path(__file__).parent.parent / "data" / "evcc-esp32evse.yaml"
JSON = {"content-type": "application/json"}


def go_value(value: Any) -> str:
    """A value as Go's text/template prints it (%v)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render(template: str, values: dict[str, Any]) -> str:
    """The two text/template forms evcc's body templates use here: {{.x}} and {{if .x}}a{{else}}b{{end}}."""
    out = re.sub(
        r"\{\{if \.(\w+)\}\}(.*?)\{\{else\}\}(.*?)\{\{end\}\}",
        lambda m: m.group(2) if values[m.group(1)] else m.group(3),
        template,
    )
    return re.sub(r"\{\{\.(\w+)\}\}", lambda m: go_value(values[m.group(1)]), out)


async def run_plugin(client: httpx.AsyncClient, plugin: dict[str, Any], base: str, **values: Any) -> Any:
    """Run one evcc `http` plugin: a GET read through its jq, or a write with its body template."""
    assert plugin["source"] == "http"
    uri = plugin["uri"].replace("http://EVSE_IP", base)
    headers = {k: v for h in plugin.get("headers", []) for k, v in h.items()}
    auth = plugin.get("auth")
    basic = httpx.BasicAuth(auth["user"], auth["password"]) if auth else None
    method = plugin.get("method", "GET")
    if method == "GET":
        r = await client.get(uri, headers=headers, auth=basic)
        r.raise_for_status()
        return jq.compile(plugin["jq"]).input_text(r.text).first()
    r = await client.request(method, uri, content=render(plugin["body"], values), headers=headers, auth=basic)
    r.raise_for_status()
    return r.text


async def until(probe: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], tries: int = 300) -> Any:
    """Poll `probe` until `ok(value)`; returns the last value."""
    value = None
    for _ in range(tries):
        value = await probe()
        if ok(value):
            return value
        await asyncio.sleep(0.05)
    return value


async def test_evcc_config_from_seed_works_verbatim() -> None:
    evcc = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    charger = evcc["chargers"][0]
    assert charger["type"] == "custom"
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(timeout=10) as client:

        async def read(name: str) -> Any:
            return await run_plugin(client, charger[name], base)

        async def triple(name: str) -> list[float]:
            return [await run_plugin(client, p, base) for p in charger[name]]

        assert await until(lambda: read("status"), lambda s: s == "C") == "C"
        assert await read("enabled") is True
        assert await until(lambda: read("power"), lambda p: p > 1000) > 1000

        currents = await triple("currents")
        voltages = await triple("voltages")
        assert len(currents) == len(voltages) == 3
        assert all(200 < v < 260 for v in voltages)
        assert max(currents) > 1.0

        before = rt.charger("cp1").lifetime_kwh
        await asyncio.sleep(0.3)
        energy = await read("energy")
        after = rt.charger("cp1").lifetime_kwh
        assert 0 < before <= energy + 1e-6 and energy <= after + 1e-6

        assert await run_plugin(client, charger["maxcurrent"], base, maxcurrent=10) == "OK"
        assert rt.charger("cp1").user_limit == 10.0
        assert (await client.get(base + "/api/v1/state")).json()["chargingCurrent"] == 10.0
        top = await until(lambda: triple("currents"), lambda c: 5 < max(c) <= 10.5)
        assert 5 < max(top) <= 10.5

        assert await run_plugin(client, charger["maxcurrentmillis"], base, maxcurrentmillis=7.56) == "OK"
        # The seed's evcc config: "device rounds to 0.1 A".
        assert rt.charger("cp1").user_limit == 7.6
        assert (await client.get(base + "/api/v1/state")).json()["chargingCurrent"] == 7.6

        assert await run_plugin(client, charger["enable"], base, enable=False) == "OK"
        assert await read("enabled") is False
        assert rt.charger("cp1").enabled is False
        assert await until(lambda: read("power"), lambda p: p == 0) == 0
        assert await read("status") in ("B", "C")

        assert await run_plugin(client, charger["enable"], base, enable=True) == "OK"
        assert await read("enabled") is True
        assert await until(lambda: read("power"), lambda p: p > 1000) > 1000


async def test_evcc_plugins_with_basic_auth_block() -> None:
    evcc = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    charger = evcc["chargers"][0]
    config = make_config({"esp32evse": {"username": "admin", "password": "s3cret"}})
    async with serve(config, speed=20) as (base, rt), httpx.AsyncClient(timeout=10) as client:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await run_plugin(client, charger["enabled"], base)
        assert refused.value.response.status_code == 401
        assert refused.value.response.headers["www-authenticate"] == 'Basic realm="Users"'
        auth = {"type": "basic", "user": "admin", "password": "s3cret"}
        assert await run_plugin(client, {**charger["enabled"], "auth": auth}, base) is True
        assert await run_plugin(client, {**charger["maxcurrent"], "auth": auth}, base, maxcurrent=12) == "OK"
        assert rt.charger("cp1").user_limit == 12.0


async def test_units_and_commands_round_trip() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        body = {
            "chargingCurrent": 12.34,
            "consumptionLimit": 7_200_000,
            "chargingTimeLimit": 5400,
            "underPowerLimit": 500,
            "available": True,
            "somethingElse": 1,
        }
        r = await c.post("/api/v1/state", json=body)
        assert (r.status_code, r.text, r.headers["content-type"].split(";")[0]) == (200, "OK", "text/plain")
        ch = rt.charger("cp1")
        assert (ch.user_limit, ch.energy_cap_kwh, ch.time_cap_min, ch.under_power_w) == (12.3, 2.0, 90.0, 500)
        doc = (await c.get("/api/v1/state")).json()
        assert doc["chargingCurrent"] == 12.3
        assert doc["consumptionLimit"] == 7_200_000  # Ws
        assert doc["chargingTimeLimit"] == 5400  # s
        assert doc["underPowerLimit"] == 500  # W

        for path, value in (("consumption-limit", 0), ("charging-time-limit", 0), ("under-power-limit", 0)):
            assert (await c.post(f"/api/v1/state/{path}", json=value)).text == "OK"
        assert (ch.energy_cap_kwh, ch.time_cap_min, ch.under_power_w) == (None, None, None)

        await until(lambda: c.get("/api/v1/state"), lambda r: r.json()["consumption"] > 0)
        doc = (await c.get("/api/v1/state")).json()
        assert doc["totalConsumption"] >= doc["consumption"] > 0
        assert (await c.post("/api/v1/state/reset-total-consumption")).text == "OK"
        # The lifetime counter restarts; the session's energy does not.
        after = (await c.get("/api/v1/state")).json()
        assert after["totalConsumption"] < after["consumption"]

        assert (await c.post("/api/v1/state/available", json=False)).text == "OK"
        assert (await c.get("/api/v1/state")).json()["state"] == "F"
        assert (await c.post("/api/v1/state/available", json=True)).text == "OK"
        assert (await c.get("/api/v1/state")).json()["state"] != "F"

        info = (await c.get("/api/v1/info")).json()
        assert info["appVersion"] and info["uptime"] >= 0


async def test_authorize_releases_a_pending_session() -> None:
    config = make_config({"chargers": [{"id": "cp1", "require_auth": True}]})
    async with serve(config, speed=20) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        doc = await until(lambda: c.get("/api/v1/state"), lambda r: r.json()["pendingAuth"])
        assert doc.json()["pendingAuth"] is True
        assert doc.json()["power"] == 0
        assert (await c.post("/api/v1/state/authorize")).text == "OK"
        doc = await until(lambda: c.get("/api/v1/state"), lambda r: r.json()["power"] > 1000)
        assert doc.json()["pendingAuth"] is False
        assert doc.json()["state"] == "C2"


async def test_each_charger_under_its_own_prefix() -> None:
    config = make_config({"chargers": [{"id": "cp1"}, {"id": "cp2"}]})
    async with serve(config, speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/chargers/cp2/api/v1/state/charging-current", json=9.5)
        assert r.text == "OK"
        assert rt.charger("cp2").user_limit == 9.5
        assert rt.charger("cp1").user_limit is None
        assert (await c.get("/chargers/cp2/api/v1/state")).json()["chargingCurrent"] == 9.5
        assert (await c.get("/api/v1/state")).json()["chargingCurrent"] == 32
