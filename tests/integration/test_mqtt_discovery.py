"""Home Assistant MQTT discovery: every config checked against HA's rules, kept as data below."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from evpilot.store.sqlite import Store
from tests.integration.mqtt_helpers import Broker, Recorder, mqtt_config, recorder, running

# ---- Home Assistant's MQTT discovery rules (as of HA 2024-2025), as data -------------------------

DISCOVERY_TOPIC = re.compile(
    r"^homeassistant/(?P<component>[a-z_]+)/(?P<node>[a-zA-Z0-9_-]+)/(?P<object>[a-zA-Z0-9_-]+)/config$"
)
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "switch": {"command_topic"},
    "number": {"command_topic"},
    "select": {"command_topic", "options"},
    "button": {"command_topic"},
}
COMMON_KEYS = {
    "name",
    "unique_id",
    "device",
    "origin",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "icon",
    "device_class",
    "entity_category",
    "enabled_by_default",
    "qos",
    "object_id",
}
ALLOWED_KEYS = {
    "sensor": {"state_topic", "unit_of_measurement", "state_class", "value_template", "expire_after"},
    "binary_sensor": {"state_topic", "payload_on", "payload_off", "value_template"},
    "switch": {"state_topic", "command_topic", "payload_on", "payload_off", "state_on", "state_off"},
    "number": {"state_topic", "command_topic", "min", "max", "step", "mode", "unit_of_measurement"},
    "select": {"state_topic", "command_topic", "options"},
    "button": {"command_topic", "payload_press"},
}
# Units HA accepts per device class (sensor and number share them).
UNITS = {
    "power": {"W", "kW", "MW", "GW", "TW", "mW", "BTU/h"},
    "energy": {"Wh", "kWh", "MWh", "GWh", "TWh", "mWh", "J", "kJ", "MJ", "GJ", "cal", "kcal", "Mcal", "Gcal"},
    "current": {"A", "mA"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "temperature": {"°C", "°F", "K"},
    "duration": {"d", "h", "min", "s", "ms", "µs"},
}
STATE_CLASSES = {
    "power": {"measurement"},
    "energy": {"total", "total_increasing"},
    "current": {"measurement"},
    "voltage": {"measurement"},
    "temperature": {"measurement"},
    "duration": {"measurement", "total", "total_increasing"},
}
BINARY_SENSOR_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door",
    "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug",
    "power", "presence", "problem", "running", "safety", "smoke", "sound", "tamper", "update",
    "vibration", "window",
}  # fmt: skip
SWITCH_CLASSES = {"outlet", "switch"}
# The energy dashboard takes an energy sensor in one of these units with one of these state classes.
ENERGY_DASHBOARD_UNITS = {"Wh", "kWh", "MWh", "GWh", "J", "kJ", "MJ", "GJ"}
ENTITIES_PER_CHARGER = {
    ("sensor", "pilot"),
    ("sensor", "work_state"),
    ("sensor", "power"),
    ("sensor", "session_energy"),
    ("sensor", "session_time"),
    ("sensor", "lifetime_energy"),
    ("sensor", "temperature"),
    ("sensor", "limit_source"),
    ("binary_sensor", "plugged"),
    ("binary_sensor", "charging"),
    ("binary_sensor", "problem"),
    ("switch", "enabled"),
    ("number", "current"),
    ("number", "energy_cap"),
    ("number", "time_cap"),
    ("select", "mode"),
    ("select", "phases"),
    *(("sensor", f"{q}_l{i}") for q in ("current", "voltage") for i in (1, 2, 3)),
}
SITE_ENTITIES = {
    ("sensor", "pv_power"),
    *(("sensor", f"{q}_l{i}") for q in ("mains", "available") for i in (1, 2, 3)),
}


def ha_problems(topic: str, cfg: dict[str, Any]) -> list[str]:
    """Everything in one discovery config that Home Assistant would refuse or misread."""
    m = DISCOVERY_TOPIC.match(topic)
    if m is None:
        return [f"bad discovery topic {topic}"]
    comp = m["component"]
    if comp not in REQUIRED:
        return [f"unexpected component {comp}"]
    errs = [f"missing {k}" for k in REQUIRED[comp] if k not in cfg]
    errs += [f"unknown key {k}" for k in cfg if k not in COMMON_KEYS | ALLOWED_KEYS[comp]]
    if not isinstance(cfg.get("unique_id"), str) or not cfg["unique_id"]:
        errs.append("a device needs a unique_id")
    dev = cfg.get("device", {})
    if not dev.get("identifiers") or not isinstance(dev["identifiers"], list):
        errs.append("device.identifiers missing")
    for key in ("state_topic", "command_topic", "availability_topic"):
        t = cfg.get(key)
        if t is not None and (not isinstance(t, str) or not t or "+" in t or "#" in t):
            errs.append(f"{key} {t!r} is not a publishable topic")
    dc, unit, sc = cfg.get("device_class"), cfg.get("unit_of_measurement"), cfg.get("state_class")
    if comp in ("sensor", "number") and dc is not None:
        if dc not in UNITS:
            errs.append(f"device_class {dc} not expected here")
        elif unit not in UNITS[dc]:
            errs.append(f"unit {unit!r} not allowed for {dc}")
    if comp == "sensor" and sc is not None:
        if sc not in {"measurement", "total", "total_increasing"}:
            errs.append(f"state_class {sc}")
        elif dc in STATE_CLASSES and sc not in STATE_CLASSES[dc]:
            errs.append(f"state_class {sc} not allowed for {dc}")
    if comp == "sensor" and dc == "energy" and (sc is None or unit not in ENERGY_DASHBOARD_UNITS):
        errs.append("energy sensor the energy dashboard would not accept")
    if comp == "binary_sensor" and dc is not None and dc not in BINARY_SENSOR_CLASSES:
        errs.append(f"binary_sensor device_class {dc}")
    if comp == "switch" and dc is not None and dc not in SWITCH_CLASSES:
        errs.append(f"switch device_class {dc}")
    if comp == "number":
        if not float(cfg.get("min", 1)) < float(cfg.get("max", 100)) or float(cfg.get("step", 1)) <= 0:
            errs.append("number min/max/step")
        if cfg.get("mode", "auto") not in ("auto", "box", "slider"):
            errs.append("number mode")
    if comp == "select" and (not cfg["options"] or not all(isinstance(o, str) for o in cfg["options"])):
        errs.append("select options")
    return errs


def value_problems(comp: str, cfg: dict[str, Any], value: str | None) -> list[str]:
    """Whether the state topic's current value is one HA can show for this entity."""
    if comp == "button":
        return []
    if value is None:
        return [f"no retained value on {cfg['state_topic']}"]
    if comp in ("binary_sensor", "switch"):
        ok = {cfg.get("payload_on", "ON"), cfg.get("payload_off", "OFF")}
        return [] if value in ok else [f"{value!r} not in {ok}"]
    if comp == "select":
        return [] if value in cfg["options"] else [f"{value!r} not an option"]
    if comp == "number":
        v = float(value)
        return [] if cfg["min"] <= v <= cfg["max"] else [f"{v} outside {cfg['min']}..{cfg['max']}"]
    if "unit_of_measurement" in cfg and value != "None":
        try:
            float(value)
        except ValueError:
            return [f"{value!r} is not numeric"]
    return []


def configs(rec: Recorder) -> dict[str, dict[str, Any]]:
    """The non-empty discovery configs seen, by topic."""
    return {t: json.loads(p) for t, p in rec.latest.items() if t.startswith("homeassistant/") and p}


async def test_discovery_configs_follow_home_assistant_rules(broker: Broker) -> None:
    config = mqtt_config(
        broker,
        {"chargers": [{"id": "cp1", "name": "Garage", "contactor2": "auto"}, {"id": "cp2", "phases": 1}]},
    )
    async with (
        running(config) as (rt, _b),
        recorder(broker.port, "homeassistant/#", "evpilot/#") as (rec, _c),
    ):
        await rec.wait_topic("evpilot/status", "online")
        await rec.wait(lambda: len(configs(rec)) >= 2 * len(ENTITIES_PER_CHARGER) + len(SITE_ENTITIES))
        found = configs(rec)
        topics = [c["state_topic"] for c in found.values() if "state_topic" in c]
        await rec.wait(lambda: all(rec.text(t) is not None for t in topics), what="every state topic")
        problems = {t: ha_problems(t, c) for t, c in found.items()}
        assert {t: p for t, p in problems.items() if p} == {}
        uids = [c["unique_id"] for c in found.values()]
        assert len(uids) == len(set(uids))
        by_node: dict[str, set[tuple[str, str]]] = {}
        for t in found:
            m = DISCOVERY_TOPIC.match(t)
            assert m is not None
            by_node.setdefault(m["node"], set()).add((m["component"], m["object"]))
        assert by_node["evpilot_cp1"] >= ENTITIES_PER_CHARGER
        assert by_node["evpilot_cp2"] >= ENTITIES_PER_CHARGER
        assert by_node["evpilot_site"] >= SITE_ENTITIES
        for t, c in found.items():
            # Availability is the bridge's last-will topic.
            assert c["availability_topic"] == "evpilot/status"
            assert c["payload_not_available"] == "offline"
            # Every entity has a live value HA can show.
            comp = t.split("/")[1]
            assert value_problems(comp, c, rec.text(c.get("state_topic", ""))) == [], t
        # Lifetime energy is a counter; session energy only ever grows within a session.
        life = found["homeassistant/sensor/evpilot_cp1/lifetime_energy/config"]
        assert (life["device_class"], life["state_class"]) == ("energy", "total_increasing")
        session = found["homeassistant/sensor/evpilot_cp1/session_energy/config"]
        assert session["state_class"] == "total_increasing"
        # The current limit goes from 6 A to the charger's MAX in 0.1 A steps.
        limit = found["homeassistant/number/evpilot_cp1/current/config"]
        assert (limit["min"], limit["max"], limit["step"]) == (6, 32, 0.1)
        assert limit["command_topic"] == "evpilot/cp1/current/set"
        # A 1-phase charger offers only the phase modes it accepts.
        assert found["homeassistant/select/evpilot_cp2/phases/config"]["options"] == [
            "not_present",
            "always_1p",
        ]
        assert found["homeassistant/sensor/evpilot_cp1/power/config"]["device"]["name"] == "Garage"
        del rt


async def test_removed_charger_loses_its_entities(broker: Broker, tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    try:
        two = mqtt_config(broker, {"chargers": [{"id": "cp1"}, {"id": "cp2"}]})
        async with running(two, store=store), recorder(broker.port, "homeassistant/#") as (rec, _c):
            await rec.wait(lambda: any("/evpilot_cp2/" in t for t in configs(rec)), what="cp2 announced")
        one = mqtt_config(broker, {"chargers": [{"id": "cp1"}]})
        async with running(one, store=store), recorder(broker.port, "homeassistant/#") as (rec, _c):
            await rec.wait(lambda: any("/evpilot_cp1/" in t for t in configs(rec)), what="cp1 announced")
        # What a new Home Assistant would find retained on the broker now.
        async with recorder(broker.port, "homeassistant/#") as (late, _c):
            await late.wait(lambda: any("/evpilot_cp1/" in t for t in configs(late)), what="retained configs")
            assert [t for t in configs(late) if "/evpilot_cp2/" in t] == []
            assert any("/evpilot_site/" in t for t in configs(late))
    finally:
        store.close()


async def test_discovery_off_withdraws_announced_entities(broker: Broker, tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    try:
        async with (
            running(mqtt_config(broker), store=store),
            recorder(broker.port, "homeassistant/#") as (rec, _c),
        ):
            await rec.wait(lambda: configs(rec), what="configs")
        async with running(mqtt_config(broker, discovery=False), store=store):
            pass
        async with recorder(broker.port, "homeassistant/#", "evpilot/status") as (late, _c):
            await late.wait_topic("evpilot/status", "offline")
            assert configs(late) == {}
    finally:
        store.close()


def test_the_rules_catch_what_home_assistant_would_refuse() -> None:
    good = {
        "name": "Power",
        "unique_id": "x_power",
        "device": {"identifiers": ["x"]},
        "state_topic": "evpilot/cp1/power",
        "device_class": "power",
        "unit_of_measurement": "W",
        "state_class": "measurement",
    }
    topic = "homeassistant/sensor/x/power/config"
    assert ha_problems(topic, good) == []
    broken = [
        ("homeassistant/sensor/x.y/power/config", {}),
        (topic, {**good, "unit_of_measurement": "kw"}),
        (topic, {**good, "device_class": "energy", "unit_of_measurement": "kWh"}),
        (topic, {**good, "state_topic": "evpilot/+/power"}),
        (topic, {k: v for k, v in good.items() if k != "state_topic"}),
        (topic, {**good, "unique_id": ""}),
        (topic, {**good, "stat_t": "x"}),
        ("homeassistant/number/x/c/config", {**good, "command_topic": "c/set", "state_class": None}),
    ]
    for t, cfg in broken:
        assert ha_problems(t, cfg), (t, cfg)
