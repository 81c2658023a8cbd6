"""SECC facade: /api/v1 documents, leased limits and the WebSocket's text commands."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets

from evpilot.core import commands as cmd
from evpilot.core import sources
from tests.helpers import CHARGING_FIELDS, make_config, poll, serve


async def test_documents_have_the_seed_fields() -> None:
    async with serve(make_config(), speed=20) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        doc = await poll(c, "/api/v1/charging", lambda d: d["lastActivePower"] > 1000)
        assert set(doc) == CHARGING_FIELDS
        assert len(doc["voltage"]) == len(doc["amperage"]) == 3
        assert doc["signaledAmperage"] >= 6
        tx = (await c.get("/api/v1/transaction")).json()
        assert tx["id"] and tx["vehicleStatus"] == "C" and tx["connectorStatus"] == "Charging"
        assert abs(tx["lastMeterValue"] - tx["meterStart"] - tx["energy"]) < 0.002
        conf = (await c.get("/chargers/cp1/api/v1/configuration")).json()
        assert conf["chargePointId"] == "cp1" and conf["maxAmperage"] == 32
        assert conf["defaultLimitTimeout"] == 300_000


async def test_limit_is_a_lease_that_lapses_and_null_hands_back() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        await poll(c, "/api/v1/charging", lambda d: d["signaledAmperage"] > 10)
        r = await c.put("/api/v1/limits", json={"amperageLimit": 8})
        assert r.status_code == 200
        assert r.json()["amperageLimit"] == 8 and 299_000 <= r.json()["timeout"] <= 300_000
        doc = await poll(c, "/api/v1/charging", lambda d: d["availableAmperage"] == 8)
        assert doc["availableAmperage"] == 8 and doc["signaledAmperage"] <= 8
        assert rt.charger("cp1").available_source.text == "lease"

        r = await c.put("/api/v1/limits", json={"amperageLimit": None})
        assert r.json()["amperageLimit"] is None
        assert "lease" not in rt.charger("cp1").leases

        # Below 6 A means 0: charging stops.
        await c.put("/api/v1/limits", json={"amperageLimit": 4})
        doc = await poll(c, "/api/v1/charging", lambda d: d["signaledAmperage"] == 0)
        assert doc["availableAmperage"] == 0 and doc["signaledAmperage"] == 0

        # A 2 s lease (0.1 s real at 20x) lapses on its own.
        await c.put("/api/v1/limits", json={"amperageLimit": 7, "timeout": 2000})
        lim = await poll(c, "/api/v1/limits", lambda d: d["amperageLimit"] is None)
        assert lim["amperageLimit"] is None and lim["timeout"] is None

        # Power: 4,140 W on 3 phases at 230 V is 6 A per phase; under 1,380 W nothing.
        r = await c.put("/api/v1/limits", json={"powerLimit": 4140})
        assert r.json()["powerLimit"] == 4140
        doc = await poll(c, "/api/v1/charging", lambda d: d["availableAmperage"] == 6)
        assert doc["availableAmperage"] == 6
        await c.put("/api/v1/limits", json={"powerLimit": 1000})
        doc = await poll(c, "/api/v1/charging", lambda d: d["availableAmperage"] == 0)
        assert doc["availableAmperage"] == 0
        await c.put("/api/v1/limits", json={"powerLimit": None, "enabled": False})
        assert rt.charger("cp1").enabled is False and not rt.charger("cp1").leases


async def test_websocket_pushes_charging_and_takes_commands() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        url = base.replace("http://", "ws://") + "/api/ws"
        async with websockets.connect(url) as ws:
            topics = set()
            for _ in range(50):
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                topics.add(frame["topic"])
                if frame["topic"] == "charging":
                    assert set(frame["message"]) == CHARGING_FIELDS
                    break
            assert "charging" in topics

            await ws.send("setCurrentLimit\n9.0000000000")
            lim = await poll(c, "/api/v1/limits", lambda d: d["amperageLimit"] == 9)
            assert lim["amperageLimit"] == 9 and lim["timeout"] > 290_000
            await ws.send("setEnabled\nfalse")
            await poll(c, "/api/v1/limits", lambda d: d["enabled"] is False)
            assert rt.charger("cp1").enabled is False

            for bad in ("setCurrentLimit\nabc", "setEnabled\nmaybe", "hello", "setCurrentLimit\n81", b"\x00"):
                await ws.send(bad)
                for _ in range(100):
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if frame["topic"] == "error":
                        break
                assert frame["topic"] == "error" and frame["message"]["detail"]
            assert rt.charger("cp1").enabled is False
            assert rt.charger("cp1").leases["lease"].value == 9

            await ws.send("setEnabled\ntrue")  # the socket is still open and working
            await poll(c, "/api/v1/limits", lambda d: d["enabled"] is True)
            assert rt.charger("cp1").enabled is True


async def test_per_charger_websocket_sends_that_chargers_charging_frames() -> None:
    config = make_config({"chargers": [{"id": "cp1"}, {"id": "cp2"}]})
    async with serve(config, speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        url = base.replace("http://", "ws://") + "/chargers/cp2/api/ws"
        async with websockets.connect(url) as ws:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert frame["topic"] == "charging" and set(frame["message"]) == CHARGING_FIELDS
            await ws.send("setCurrentLimit\n7")
            lim = await poll(c, "/chargers/cp2/api/v1/limits", lambda d: d["amperageLimit"] == 7)
            assert lim["amperageLimit"] == 7
            assert "lease" not in rt.charger("cp1").leases


async def test_power_limit_is_converted_with_the_phases_in_use() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        ch = rt.charger("cp1")
        assert ch.config.phases == 3
        r = await c.put("/api/v1/limits", json={"powerLimit": 4140})
        assert r.status_code == 200 and r.json()["powerLimit"] == 4140
        await poll(c, "/api/v1/transaction", lambda d: d["usedPhasesSession"] == 3)
        assert ch.own_limit(rt.clock.now()) == (6.0, sources.lease("lease_power"))
        # Switched to one phase, the same 4,140 W is 18 A on that phase, not 6 A.
        rt.apply(cmd.SetPhaseMode("cp1", "always_1p"), "test")
        await poll(c, "/api/v1/transaction", lambda d: d["usedPhasesSession"] == 1)
        assert ch.own_limit(rt.clock.now()) == (18.0, sources.lease("lease_power"))
        assert (await c.get("/api/v1/limits")).json()["powerLimit"] == 4140
