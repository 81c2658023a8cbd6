"""One command, many faces: REST, the WebSocket and MQTT send the same typed command, logged by origin."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
import websockets

from evpilot.control.runtime import Runtime
from tests.helpers import serve
from tests.integration.mqtt_helpers import Broker, mqtt_config, recorder, until

# What a command may change on cp1, to show a refused one changed nothing.
STATE = ("enabled", "user_limit", "override", "mode", "phase_mode", "energy_cap_kwh", "time_cap_min")


def state(rt: Runtime) -> dict[str, Any]:
    ch = rt.charger("cp1")
    leases = {k: (v.value, v.watts) for k, v in ch.leases.items()}
    return {k: getattr(ch, k) for k in STATE} | {"leases": leases, "site_mode": rt.engine.site.mode}


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[dict[str, Any], str]]:
    """(command, origin) of every `command ... origin=...` log line so far."""
    out = []
    for record in caplog.records:
        if record.name == "evpilot" and record.msg == "command %s origin=%s":
            doc, origin = record.args  # type: ignore[misc]
            out.append((dict(doc), str(origin)))
    return out


async def ws_error(ws: Any) -> dict[str, Any]:
    """The next error frame on the socket (state frames in between are skipped)."""
    for _ in range(200):
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["topic"] == "error":
            return frame["message"]  # type: ignore[no-any-return]
    raise AssertionError("no error frame")


async def test_the_same_command_through_rest_ws_and_mqtt_is_one_command(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="evpilot")
    config = mqtt_config(broker)
    async with (
        serve(config, speed=20) as (base, rt),
        httpx.AsyncClient(base_url=base) as http,
        recorder(broker.port, "evpilot/cp1/error", "evpilot/status") as (rec, client),
        websockets.connect(base.replace("http://", "ws://") + "/api/ws") as ws,
    ):
        await rec.wait_topic("evpilot/status", "online")  # the bridge listens to its command topics

        # Off through each face, on again in between: the same effect and the same command each time.
        async def off_and_on(send: Any) -> None:
            await send()
            await until(lambda: not rt.charger("cp1").enabled, what="disabled")
            r = await http.put("/api/chargers/cp1/enabled", json={"enabled": True})
            assert r.status_code == 200 and rt.charger("cp1").enabled

        async def by_rest() -> None:
            r = await http.put("/api/chargers/cp1/enabled", json={"enabled": False})
            assert r.status_code == 200

        async def by_ws() -> None:
            await ws.send("setEnabled\nfalse")

        async def by_mqtt() -> None:
            await client.publish("evpilot/cp1/enabled/set", b"false", qos=1)

        for send in (by_rest, by_ws, by_mqtt):
            await off_and_on(send)

        off = {"command": "set_enabled", "charger": "cp1", "enabled": False}
        seen = [(doc, origin) for doc, origin in logged(caplog) if doc == off]
        assert [origin for _doc, origin in seen] == ["rest:native", "ws", "mqtt:native"]
        ring = [
            (c["origin"], {"command": c["command"], **c["fields"]})
            for c in rt.recent_commands
            if c["command"] == "set_enabled"
        ]
        assert [o for o, doc in ring if doc == off] == ["rest:native", "ws", "mqtt:native"]

        # A lease through the SECC REST API and through the socket: one command kind, one effect.
        r = await http.put("/api/v1/limits", json={"amperageLimit": 9})
        assert r.status_code == 200
        rest_lease = rt.charger("cp1").leases["lease"]
        await ws.send("setCurrentLimit\n8")
        await until(lambda: rt.charger("cp1").leases["lease"].value == 8, what="lease 8 A")
        leases = [(doc, origin) for doc, origin in logged(caplog) if doc["command"] == "set_lease"]
        assert [origin for _doc, origin in leases] == ["rest:secc", "ws"]
        assert [{k: doc[k] for k in ("charger", "name", "amps")} for doc, _o in leases] == [
            {"charger": "cp1", "name": "lease", "amps": 9},
            {"charger": "cp1", "name": "lease", "amps": 8},
        ]
        assert rest_lease.expires_at is not None


async def test_a_refused_command_changes_nothing_on_any_face(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="evpilot")
    config = mqtt_config(broker)
    async with (
        serve(config, speed=20) as (base, rt),
        httpx.AsyncClient(base_url=base) as http,
        recorder(broker.port, "evpilot/cp1/error", "evpilot/status") as (rec, client),
        websockets.connect(base.replace("http://", "ws://") + "/api/ws") as ws,
    ):
        await rec.wait_topic("evpilot/status", "online")
        before = state(rt)
        applied = len(rt.recent_commands)
        # 40 A on a 32 A charger: every face refuses it naming this charger's range.
        r = await http.put("/api/chargers/cp1/current_limit", json={"current": 40})
        assert r.status_code == 400 and "allowed 6 to 32" in r.text
        await client.publish("evpilot/cp1/current/set", b"40", qos=1)
        error = json.loads(await rec.wait_topic("evpilot/cp1/error"))
        assert "allowed 6 to 32" in error["error"]
        await ws.send("setCurrentLimit\n81")
        assert "allowed 0 to 80" in (await ws_error(ws))["detail"]
        await client.publish("evpilot/cp1/phases/set", b"sometimes", qos=1)
        await rec.wait(lambda: sum(1 for t, _p, _r in rec.messages if t == "evpilot/cp1/error") >= 2)
        assert state(rt) == before
        assert len(rt.recent_commands) == applied
        assert logged(caplog) == []
