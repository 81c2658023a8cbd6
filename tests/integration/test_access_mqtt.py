"""A custom switch input publishes its state: the `access` event, a retained topic and an HA binary sensor."""

from __future__ import annotations

import json

import httpx

from tests.helpers import serve
from tests.integration.mqtt_helpers import Broker, mqtt_config, recorder


async def test_custom_switch_state_on_mqtt_and_home_assistant(broker: Broker) -> None:
    config = mqtt_config(broker, {"chargers": [{"id": "cp1", "switch": "custom_button"}, {"id": "cp2"}]})
    async with (
        recorder(broker.port, "evpilot/#", "homeassistant/#") as (rec, _c),
        serve(config, speed=20) as (base, _rt),
        httpx.AsyncClient(base_url=base) as http,
    ):
        topic = "homeassistant/binary_sensor/evpilot_cp1/switch/config"
        await rec.wait(lambda: rec.text(topic), what="discovery of the switch input")
        conf = json.loads(rec.text(topic) or "{}")
        assert conf["state_topic"] == "evpilot/cp1/switch"
        assert rec.text("homeassistant/binary_sensor/evpilot_cp2/switch/config") is None
        assert (await http.put("/api/chargers/cp1/switch", json={"closed": True})).status_code == 200
        await rec.wait_topic("evpilot/cp1/switch", "ON")
        events = [json.loads(p) for t, p, _r in rec.messages if t == "evpilot/cp1/event"]
        assert any(e.get("type") == "access" and e["detail"] == "closed" for e in events)
        await http.put("/api/chargers/cp1/switch", json={"closed": False})
        await rec.wait_topic("evpilot/cp1/switch", "OFF")
        # A custom input only publishes: charging is untouched.
        assert (await http.get("/api/chargers/cp1")).json()["limit_source"] != "switch"
