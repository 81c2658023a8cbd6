"""The real aioshelly library (Home Assistant's Shelly client) drives evpilot's Shelly Top AC facade."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aioshelly.common import ConnectionOptions, get_info
from aioshelly.exceptions import InvalidAuthError
from aioshelly.rpc_device import RpcDevice, RpcUpdateType, WsServer

from tests.helpers import make_config, serve

WORK_STATES = [
    "charger_free",
    "charger_insert",
    "charger_wait",
    "charger_charging",
    "charger_pause",
    "charger_end",
    "charger_fault",
]


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def _until(check: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _connect(session: aiohttp.ClientSession, port: int, password: str | None = None) -> RpcDevice:
    options = ConnectionOptions(
        "127.0.0.1", port=port, username="admin" if password else None, password=password
    )
    device = await RpcDevice.create(session, WsServer(), options)
    await device.initialize()
    return device


async def test_aioshelly_initialises_reads_and_sets_over_http_and_ws() -> None:
    async with serve(make_config(), speed=20) as (base, rt), aiohttp.ClientSession() as session:
        port = _port(base)
        info = await get_info(session, "127.0.0.1", port=port)
        assert info["gen"] == 2 and info["auth_en"] is False

        device = await _connect(session, port)
        updates: list[RpcUpdateType] = []
        device.subscribe_updates(lambda _dev, kind: updates.append(kind))
        try:
            assert device.initialized and device.gen == 2 and device.model == "EVE01"
            assert device.name == "Garage"
            # virtual components arrive through Shelly.GetComponents (paged) and the status.
            assert device.config["number:200"]["role"] == "current_limit"
            assert device.config["number:200"]["max"] == 32
            # the second page of Shelly.GetComponents arrived too
            assert device.config["number:202"]["role"] == "time_charge"
            assert device.status["number:202"]["value"] >= 0
            assert device.config["enum:200"]["options"] == WORK_STATES
            assert device.status["enum:200"]["value"] in WORK_STATES
            phase = device.status["object:200"]["value"]
            assert set(phase) == {
                "counter",
                "total_current",
                "total_power",
                "total_act_energy",
                "phase_a",
                "phase_b",
                "phase_c",
            }
            assert set(phase["counter"]) == {"total", "minute_ts", "by_minute"}
            assert len(phase["counter"]["by_minute"]) == 3
            assert set(phase["phase_b"]) == {"voltage", "current", "power"}

            await device.number_set(200, 10)
            ch = rt.charger("cp1")
            assert ch.user_limit == 10.0
            await device.boolean_set(200, True)
            assert ch.start_requested is True
            # NotifyStatus pushes the new values into aioshelly's status.
            await _until(lambda: device.status["number:200"]["value"] == 10)
            await _until(lambda: device.status["boolean:200"]["value"] is True)
            await _until(lambda: device.status["enum:200"]["value"] == "charger_charging")
            assert RpcUpdateType.STATUS in updates
            await device.boolean_set(200, False)
            assert ch.start_requested is False
            await _until(lambda: device.status["boolean:200"]["value"] is False)
            await _until(lambda: device.status["enum:200"]["value"] == "charger_pause")

            methods = await device.methods_list()
            assert {"Number.Set", "Boolean.Set", "Service.SetConfig", "Shelly.GetComponents"} <= set(methods)
        finally:
            await device.shutdown()


async def test_every_charger_is_a_shelly_device_under_its_path() -> None:
    config = make_config({"chargers": [{"id": "cp1"}, {"id": "cp2", "max_current": 16}]})
    async with serve(config, speed=20) as (base, rt), aiohttp.ClientSession() as session:
        async with session.get(f"{base}/chargers/cp2/rpc/Number.GetConfig?id=200") as resp:
            assert resp.status == 200
            assert (await resp.json())["max"] == 16
        async with session.get(f"{base}/chargers/cp2/shelly") as resp:
            cp2 = await resp.json()
        async with session.get(f"{base}/shelly") as resp:
            cp1 = await resp.json()
        assert cp1["id"] != cp2["id"] and cp1["mac"] != cp2["mac"]
        async with session.ws_connect(f"{base}/chargers/cp2/rpc") as ws:
            await ws.send_json(
                {"id": 7, "src": "t", "method": "Number.Set", "params": {"id": 200, "value": 12}}
            )
            reply = await ws.receive_json(timeout=10)
            assert reply == {"id": 7, "src": cp2["id"], "dst": "t", "result": None}
            full = await ws.receive_json(timeout=10)
            assert full["method"] == "NotifyFullStatus" and full["params"]["number:200"]["value"] == 12
        assert rt.charger("cp2").user_limit == 12.0
        assert rt.charger("cp1").user_limit is None


async def test_aioshelly_with_digest_password() -> None:
    config = make_config(
        {"shelly": {"password": "s3cret", "device_id": "shellytopac-aabbccddeeff", "mac": "AABBCCDDEEFF"}}
    )
    async with serve(config, speed=20) as (base, rt), aiohttp.ClientSession() as session:
        port = _port(base)
        info = await get_info(session, "127.0.0.1", port=port)
        assert info["auth_en"] is True and info["auth_domain"] == "shellytopac-aabbccddeeff"

        with pytest.raises(InvalidAuthError):
            await _connect(session, port, password="wrong")
        device = await _connect(session, port, password="s3cret")
        try:
            assert device.requires_auth
            assert device.status["enum:200"]["value"] in WORK_STATES
            await device.number_set(200, 8.5)
            assert rt.charger("cp1").user_limit == 8.5
        finally:
            await device.shutdown()

        # HTTP: aiohttp's own RFC 7616 digest client, as evcc and scripts use it.
        url = f'{base}/rpc/Number.Set?owner="service:0"&role="current_limit"&value=9'
        async with session.get(url) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith(
                'Digest qop="auth", realm="shellytopac-aabbccddeeff"'
            )
        assert rt.charger("cp1").user_limit == 8.5
        digest = aiohttp.DigestAuthMiddleware("admin", "s3cret")
        async with aiohttp.ClientSession(middlewares=(digest,)) as authed:
            async with authed.get(url) as resp:
                assert resp.status == 200, await resp.text()
            async with authed.post(f"{base}/rpc", json={"id": 1, "method": "Shelly.GetStatus"}) as resp:
                assert (await resp.json())["result"]["number:200"]["value"] == 9
        assert rt.charger("cp1").user_limit == 9.0
