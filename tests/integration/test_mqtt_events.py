"""MQTT: every charger event on `<prefix>/<charger>/event`, not retained, beside the session messages."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.helpers import serve
from tests.integration.mqtt_helpers import Broker, mqtt_config, recorder


async def test_unplug_and_plug_publish_typed_events_and_session_messages(broker: Broker) -> None:
    config = mqtt_config(broker)
    async with recorder(broker.port, "evpilot/+/event") as (rec, _c), serve(config, speed=20) as (base, rt):
        mark = 0  # messages before this index belong to an earlier step

        def on_topic() -> list[dict[str, Any]]:
            return [json.loads(p) for t, p, _r in rec.messages[mark:] if t == "evpilot/cp1/event"]

        def typed(kind: str) -> list[dict[str, Any]]:
            return [m for m in on_topic() if m.get("type") == kind]

        await rec.wait(lambda: rt.charger("cp1").plugged, what="the simulated car plugged in")
        sid = rt.charger("cp1").session.id  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=base) as http:
            mark = len(rec.messages)
            assert (await http.post("/api/sim/chargers/cp1/unplug")).status_code == 200
            await rec.wait(lambda: typed("unplugged"), what="unplugged event")
            (ended,) = typed("session_ended")
            assert ended["charger"] == "cp1" and ended["record"]["id"] == sid
            assert ended["record"]["stop_reason"] == "ev_disconnected"
            sessions = [m for m in on_topic() if m.get("event") == "ended"]
            assert [m["id"] for m in sessions] == [sid]

            await rec.wait(lambda: typed("state") and typed("state")[-1]["work_state"] == "charger_free")
            mark = len(rec.messages)
            assert (await http.post("/api/sim/chargers/cp1/plug", json={"soc": 20})).status_code == 200
            await rec.wait(lambda: typed("session_started"), what="session_started event")
            (plugged,) = typed("plugged")
            (started,) = typed("session_started")
            assert started["session_id"] == rt.charger("cp1").session.id  # type: ignore[union-attr]
            assert plugged["at"] <= started["at"]
            await rec.wait(lambda: [m for m in typed("contactor") if m["closed"]], what="contactor closed")
    mark = 0
    assert all(set(m) >= {"type", "charger", "at"} for m in on_topic() if "type" in m)
    assert not any(retained for t, _p, retained in rec.messages if t.endswith("/event"))
