"""Home Assistant MQTT discovery: one device per charger and one for the site.

Every entity reads a per-value topic of the native MQTT facade and names the bridge's
availability topic, which the broker sets to `offline` through the last will.
"""

from __future__ import annotations

import re
from typing import Any

from evpilot import __version__
from evpilot.config import MqttModel
from evpilot.core.charger import MODES, PHASE_MODES, Charger

ON, OFF = "ON", "OFF"
SITE_MODES = MODES
CHARGER_MODES = ("site", *MODES)
Entity = tuple[str, str, dict[str, Any]]  # (component, key, config)


def node_slug(text: str) -> str:
    """A discovery node id / unique id part made of [A-Za-z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def phase_options(ch: Charger) -> tuple[str, ...]:
    """The second-contactor modes this charger accepts."""
    if ch.config.phases == 1:
        return ("not_present", "always_1p")
    return PHASE_MODES


def _measure(name: str, device_class: str, unit: str, state_class: str = "measurement") -> dict[str, Any]:
    return {
        "name": name,
        "device_class": device_class,
        "unit_of_measurement": unit,
        "state_class": state_class,
    }


def charger_entities(ch: Charger) -> list[Entity]:
    """The entities of one charger: (component, key, config without topics' prefix)."""
    ents: list[Entity] = [
        ("sensor", "pilot", {"name": "Pilot state", "icon": "mdi:ev-station"}),
        ("sensor", "work_state", {"name": "Status", "icon": "mdi:ev-station"}),
        ("sensor", "power", _measure("Power", "power", "W")),
        ("sensor", "session_energy", {**_measure("Session energy", "energy", "kWh", "total_increasing")}),
        ("sensor", "session_time", _measure("Session time", "duration", "s")),
        ("sensor", "lifetime_energy", _measure("Lifetime energy", "energy", "kWh", "total_increasing")),
        ("sensor", "temperature", _measure("Temperature", "temperature", "°C")),
        ("sensor", "signaled_current", _measure("Signaled current", "current", "A")),
        ("sensor", "allocated_current", _measure("Allocated current", "current", "A")),
        ("sensor", "limit_source", {"name": "Limit source", "icon": "mdi:speedometer"}),
        ("sensor", "effective_mode", {"name": "Active mode", "icon": "mdi:solar-power"}),
        ("binary_sensor", "plugged", {"name": "Plugged", "device_class": "plug"}),
        ("binary_sensor", "charging", {"name": "Charging", "device_class": "battery_charging"}),
        ("binary_sensor", "problem", {"name": "Problem", "device_class": "problem"}),
        ("switch", "enabled", {"name": "Charging enabled", "icon": "mdi:ev-plug-type2"}),
        (
            "number",
            "current",
            {
                "name": "Charging current limit",
                "device_class": "current",
                "unit_of_measurement": "A",
                "min": 6,
                "max": ch.config.max_current,
                "step": 0.1,
                "mode": "box",
            },
        ),
        (
            "number",
            "energy_cap",
            {
                "name": "Session energy cap",
                "device_class": "energy",
                "unit_of_measurement": "kWh",
                "min": 0,
                "max": 1000,
                "step": 0.1,
                "mode": "box",
            },
        ),
        (
            "number",
            "time_cap",
            {
                "name": "Session time cap",
                "device_class": "duration",
                "unit_of_measurement": "min",
                "min": 0,
                "max": 1440,
                "step": 1,
                "mode": "box",
            },
        ),
        ("select", "mode", {"name": "Mode", "options": list(CHARGER_MODES), "icon": "mdi:solar-power"}),
        ("select", "phases", {"name": "Phases", "options": list(phase_options(ch))}),
        ("button", "start", {"name": "Start charging", "icon": "mdi:play"}),
        ("button", "stop", {"name": "Stop charging", "icon": "mdi:pause"}),
    ]
    for i in (1, 2, 3):
        ents.append(("sensor", f"current_l{i}", _measure(f"Current L{i}", "current", "A")))
        ents.append(("sensor", f"voltage_l{i}", _measure(f"Voltage L{i}", "voltage", "V")))
    return ents


def site_entities() -> list[Entity]:
    """The entities of the site device."""
    ents: list[Entity] = [
        ("sensor", "pv_power", _measure("PV power", "power", "W")),
        ("sensor", "battery_current", _measure("Home battery current", "current", "A")),
        (
            "sensor",
            "capacity_limit",
            {"name": "Capacity limit", "device_class": "current", "unit_of_measurement": "A"},
        ),
        ("binary_sensor", "fallback", {"name": "Mains meter fallback", "device_class": "problem"}),
        ("select", "mode", {"name": "Site mode", "options": list(SITE_MODES), "icon": "mdi:solar-power"}),
    ]
    for i in (1, 2, 3):
        ents.append(("sensor", f"mains_l{i}", _measure(f"Mains current L{i}", "current", "A")))
        ents.append(("sensor", f"available_l{i}", _measure(f"Available current L{i}", "current", "A")))
    return ents


def _wire(component: str, base: str, key: str, cfg: dict[str, Any]) -> None:
    """Add the state/command topics and payloads a component needs."""
    if component != "button":
        cfg["state_topic"] = f"{base}/{key}"
    if component in ("switch", "number", "select", "button"):
        cfg["command_topic"] = f"{base}/{key}/set"
    if component in ("switch", "binary_sensor"):
        cfg["payload_on"], cfg["payload_off"] = ON, OFF
    if component == "switch":
        cfg["state_on"], cfg["state_off"] = ON, OFF
    if component == "button":
        cfg["payload_press"] = "PRESS"


def discovery_configs(
    chargers: dict[str, Charger], cfg: MqttModel, switches: set[str] | frozenset[str] = frozenset()
) -> dict[str, dict[str, Any]]:
    """Every retained discovery config this bridge announces, by config topic.

    Chargers in `switches` have a custom switch input: it shows as a binary sensor.
    """
    prefix = cfg.topic_prefix
    node = node_slug(prefix)
    availability = {
        "availability_topic": f"{prefix}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    origin = {"name": "evpilot", "sw_version": __version__}
    site_device = {
        "identifiers": [f"{node}_site"],
        "name": "evpilot site",
        "manufacturer": "evpilot",
        "model": "Site controller",
        "sw_version": __version__,
    }
    out: dict[str, dict[str, Any]] = {}

    def add(device: dict[str, Any], dev_id: str, base: str, ents: list[Entity]) -> None:
        for component, key, ent in ents:
            conf = {**ent, "unique_id": f"{dev_id}_{key}", **availability, "device": device, "origin": origin}
            _wire(component, base, key, conf)
            out[f"{cfg.discovery_prefix}/{component}/{dev_id}/{key}/config"] = conf

    add(site_device, f"{node}_site", f"{prefix}/site", site_entities())
    for cid, ch in chargers.items():
        dev_id = f"{node}_{node_slug(cid)}"
        device = {
            "identifiers": [dev_id],
            "name": ch.config.name or cid,
            "manufacturer": "evpilot",
            "model": f"{ch.config.phases}-phase charge point, {ch.config.max_current:g} A",
            "sw_version": __version__,
            "via_device": f"{node}_site",
        }
        ents = charger_entities(ch)
        if cid in switches:
            ents.append(("binary_sensor", "switch", {"name": "Switch input", "icon": "mdi:electric-switch"}))
        add(device, dev_id, f"{prefix}/{cid}", ents)
    return out
