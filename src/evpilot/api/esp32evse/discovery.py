"""The ESP32-EVSE Home Assistant bridge's own discovery (seed 004's `ha_bridge.lua` announce()).

One device per bridge identifier; every entity reads the single retained `<id>/state` topic
through a `value_template`, and the switch and number write `<id>/enabled/set` and `<id>/current/set`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evpilot.core.charger import Charger


def _entities(ident: str, max_current: float) -> list[tuple[str, str, dict[str, Any]]]:
    state = f"{ident}/state"
    return [
        (
            "sensor",
            "state",
            {
                "name": "State",
                "state_topic": state,
                "value_template": "{{ value_json.state }}",
                "icon": "mdi:ev-station",
            },
        ),
        (
            "sensor",
            "power",
            {
                "name": "Power",
                "state_topic": state,
                "value_template": "{{ value_json.power }}",
                "unit_of_measurement": "W",
                "device_class": "power",
                "state_class": "measurement",
            },
        ),
        (
            "sensor",
            "session_energy",
            {
                "name": "Session energy",
                "state_topic": state,
                "value_template": "{{ value_json.session_energy }}",
                "unit_of_measurement": "Wh",
                "device_class": "energy",
                "state_class": "total_increasing",
            },
        ),
        (
            "sensor",
            "temperature",
            {
                "name": "Temperature",
                "state_topic": state,
                "value_template": "{{ value_json.temperature }}",
                "unit_of_measurement": "°C",
                "device_class": "temperature",
                "state_class": "measurement",
            },
        ),
        (
            "binary_sensor",
            "charging",
            {
                "name": "Charging",
                "state_topic": state,
                "value_template": "{{ 'ON' if value_json.charging else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "battery_charging",
            },
        ),
        (
            "binary_sensor",
            "error",
            {
                "name": "Error",
                "state_topic": state,
                "value_template": "{{ 'ON' if value_json.error else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "problem",
            },
        ),
        (
            "switch",
            "charging_enabled",
            {
                "name": "Charging enabled",
                "state_topic": state,
                "value_template": "{{ 'ON' if value_json.enabled else 'OFF' }}",
                "icon": "mdi:ev-plug-type2",
                "command_topic": f"{ident}/enabled/set",
                "payload_on": "ON",
                "payload_off": "OFF",
                "state_on": "ON",
                "state_off": "OFF",
            },
        ),
        (
            "number",
            "charging_current_limit",
            {
                "name": "Charging current limit",
                "state_topic": state,
                "value_template": "{{ value_json.current }}",
                "icon": "mdi:current-ac",
                "command_topic": f"{ident}/current/set",
                "min": 6,
                "max": max_current,
                "step": "0.1",
                "unit_of_measurement": "A",
                "mode": "slider",
            },
        ),
    ]


def bridge_discovery(
    chargers: Mapping[str, Charger], idents: Mapping[str, str], prefix: str = "homeassistant"
) -> dict[str, dict[str, Any]]:
    """Config topic -> config of every entity the bridge announces, for each charger with an identifier."""
    out: dict[str, dict[str, Any]] = {}
    for cid, ident in idents.items():
        ch = chargers.get(cid)
        if ch is None:
            continue
        device = {"identifiers": [ident], "name": ident, "manufacturer": "esp32-evse", "model": "esp32-evse"}
        for kind, slug, cfg in _entities(ident, ch.config.max_current):
            cfg["object_id"] = f"{ident}_{slug}"
            cfg["unique_id"] = f"{ident}_{slug}"
            cfg["device"] = device
            out[f"{prefix}/{kind}/{ident}/{slug}/config"] = cfg
    return out
