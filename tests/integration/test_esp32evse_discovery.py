"""The ESP32-EVSE HA bridge's own retained discovery configs, as seed 004's ha_bridge.lua announces them."""

from __future__ import annotations

import json
import re

import pytest

from evpilot.config import ConfigError, parse_config
from tests.integration.mqtt_helpers import Broker, mqtt_config, recorder, running

SLUGS = {
    "sensor": {"state", "power", "session_energy", "temperature"},
    "binary_sensor": {"charging", "error"},
    "switch": {"charging_enabled"},
    "number": {"charging_current_limit"},
}


async def test_bridge_announces_one_device_whose_entities_read_the_state_topic(broker: Broker) -> None:
    extra = {"chargers": [{"id": "cp1", "max_current": 20}, {"id": "cp2"}]}
    config = mqtt_config(broker, extra, esp32evse={"cp1": "Garage1"})
    async with running(config), recorder(broker.port, "garage1/state") as (state_rec, _s):
        state = json.loads(await state_rec.wait_topic("garage1/state"))
        # A late subscriber gets the configs: they are retained.
        async with recorder(broker.port, "homeassistant/+/garage1/+/config") as (rec, _c):
            await rec.wait(lambda: len(rec.latest) >= 8, what="eight configs")
            assert all(retain for _t, _p, retain in rec.messages)
            found = {kind: {t.split("/")[3] for t in rec.latest if t.split("/")[1] == kind} for kind in SLUGS}
            assert found == SLUGS and len(rec.latest) == 8
            device = {
                "identifiers": ["garage1"],
                "name": "garage1",
                "manufacturer": "esp32-evse",
                "model": "esp32-evse",
            }
            for topic, payload in rec.latest.items():
                slug = topic.split("/")[3]
                conf = json.loads(payload)
                assert conf["device"] == device
                assert conf["object_id"] == conf["unique_id"] == f"garage1_{slug}"
                assert conf["state_topic"] == "garage1/state"
                # Every template reads a field the bridge's state document carries.
                field = re.search(r"value_json\.(\w+)", conf["value_template"])
                assert field is not None and field.group(1) in state
            number = json.loads(rec.latest["homeassistant/number/garage1/charging_current_limit/config"])
            assert number == {
                "name": "Charging current limit",
                "state_topic": "garage1/state",
                "value_template": "{{ value_json.current }}",
                "icon": "mdi:current-ac",
                "command_topic": "garage1/current/set",
                "min": 6,
                "max": 20.0,
                "step": "0.1",
                "unit_of_measurement": "A",
                "mode": "slider",
                "object_id": "garage1_charging_current_limit",
                "unique_id": "garage1_charging_current_limit",
                "device": device,
            }
            switch = json.loads(rec.latest["homeassistant/switch/garage1/charging_enabled/config"])
            assert switch["command_topic"] == "garage1/enabled/set"
            assert (switch["payload_on"], switch["state_on"], switch["state_off"]) == ("ON", "ON", "OFF")
            assert switch["value_template"] == "{{ 'ON' if value_json.enabled else 'OFF' }}"
            energy = json.loads(rec.latest["homeassistant/sensor/garage1/session_energy/config"])
            assert (energy["unit_of_measurement"], energy["device_class"], energy["state_class"]) == (
                "Wh",
                "energy",
                "total_increasing",
            )


@pytest.mark.parametrize("ident", ["my-evse", "evse 1", "evse.1", "évse", ""])
def test_identifier_outside_a_to_z_0_to_9_is_refused(ident: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"mqtt": {"url": "mqtt://127.0.0.1", "esp32evse": {"cp1": ident}}})
    assert "use only a-z and 0-9" in str(info.value)
