"""Meter and charger driver settings in the config: plain names, mappings, and the refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest

from evpilot.config import (
    ConfigError,
    Esp32EvseDriverModel,
    HomeWizardMeterModel,
    ModbusMeterModel,
    ShellyDriverModel,
    ShellyMeterModel,
    SimLinkModel,
    SmartEvseDriverModel,
    json_schema,
    parse_config,
)


def errors(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.errors


def mains(meter: object, **site: Any) -> dict[str, Any]:
    return {"site": {"mains_meter": meter, **site}}


def test_plain_names_stay_as_they_were() -> None:
    cfg = parse_config({})
    assert cfg.site.mains_meter == "sim" and cfg.chargers[0].driver == "sim"
    assert cfg.chargers[0].ev_meter == "api"
    assert parse_config(mains("api")).site.mains_meter == "api"


def test_meter_mappings_parse_with_defaults() -> None:
    tcp = parse_config(mains({"type": "modbus", "model": "sdm630", "host": "192.168.1.50"})).site.mains_meter
    assert isinstance(tcp, ModbusMeterModel)
    assert (tcp.port, tcp.unit, tcp.poll_s, tcp.timeout_s) == (502, 1, 1, None)
    assert tcp.where == "192.168.1.50:502 unit 1"
    rtu = {"type": "modbus", "model": "sdm630", "serial": "/dev/ttyUSB0", "baudrate": 9600, "parity": "N"}
    rtu_meter = parse_config(mains({**rtu, "stopbits": 1, "unit": 3})).site.mains_meter
    assert isinstance(rtu_meter, ModbusMeterModel) and rtu_meter.where == "/dev/ttyUSB0 unit 3"
    hw = parse_config(mains({"type": "homewizard", "host": "p1meter.local", "poll_s": 2})).site.mains_meter
    assert isinstance(hw, HomeWizardMeterModel) and (hw.port, hw.poll_s) == (80, 2)
    cfg = parse_config(
        {
            "site": {
                "circuits": [{"name": "g", "limit": 20, "meter": {"type": "shelly", "host": "10.0.0.7"}}]
            },
            "chargers": [
                {"id": "cp1", "circuit": "g", "ev_meter": {"type": "shelly", "host": "::1", "channel": 1}},
                {"id": "cp2", "driver": {"type": "simlink"}},
            ],
        }
    )
    assert isinstance(cfg.site.circuits[0].meter, ShellyMeterModel)
    assert cfg.site_core().circuits[0].metered  # a meter mapping is a metered node
    assert isinstance(cfg.chargers[0].ev_meter, ShellyMeterModel) and cfg.chargers[0].ev_meter.channel == 1
    assert isinstance(cfg.chargers[1].driver, SimLinkModel)
    assert [name for _, name, _ in cfg.meters()] == ["mains", "circuit:g", "ev:cp1", "ev:cp2"]


def test_custom_register_map() -> None:
    registers = {
        "current_l1": {"address": 6, "function": 4, "type": "float32"},
        "import_kwh": {"address": 72, "type": "uint32", "word_order": "little", "scale": 0.01},
    }
    meter = parse_config(
        mains({"type": "modbus", "model": "custom", "host": "h", "registers": registers})
    ).site.mains_meter
    assert isinstance(meter, ModbusMeterModel) and meter.registers is not None
    assert meter.registers["import_kwh"].scale == 0.01 and meter.registers["current_l1"].word_order == "big"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            mains("bogus"),
            (
                "site.mains_meter",
                "expected sim, api or none, or a mapping with a type (modbus, homewizard, shelly)",
            ),
        ),
        (
            mains({"type": "sdm"}),
            ("site.mains_meter", "unknown meter type 'sdm' (known: modbus, homewizard, shelly)"),
        ),
        (
            mains({"host": "h"}),
            ("site.mains_meter", "a meter mapping needs a type: modbus, homewizard, shelly"),
        ),
        (
            mains({"type": "homewizard", "host": "h", "prot": 80}),
            ("site.mains_meter.prot", "unknown key 'prot' (did you mean 'port'?)"),
        ),
        (
            mains({"type": "homewizard", "host": "http://p1/"}),
            (
                "site.mains_meter.host",
                "expected a host name or an IP address (no scheme, port or path), got 'http://p1/'",
            ),
        ),
        (mains({"type": "homewizard"}), ("site.mains_meter.host", "Field required")),
        (
            mains({"type": "modbus", "model": "sdm630"}),
            (
                "site.mains_meter.host",
                "give either host (Modbus TCP) or serial (Modbus RTU), not both or neither",
            ),
        ),
        (
            mains({"type": "modbus", "model": "sdm630", "host": "h", "serial": "/dev/ttyUSB0"}),
            (
                "site.mains_meter.host",
                "give either host (Modbus TCP) or serial (Modbus RTU), not both or neither",
            ),
        ),
        (
            mains({"type": "modbus", "model": "sdm630", "host": "h", "parity": "E"}),
            ("site.mains_meter.parity", "parity is for a serial (RTU) meter; this one has a host"),
        ),
        (
            mains({"type": "modbus", "model": "sdm630", "serial": "/dev/ttyUSB0", "port": 502}),
            (
                "site.mains_meter.port",
                "port is for a TCP meter; a serial (RTU) meter has baudrate, parity, stopbits",
            ),
        ),
        (
            mains({"type": "modbus", "model": "sdm630", "host": "h", "unit": 0}),
            ("site.mains_meter.unit", "Input should be greater than or equal to 1, got 0"),
        ),
        (
            mains({"type": "modbus", "model": "custom", "host": "h"}),
            (
                "site.mains_meter.registers",
                "model: custom needs a register map (registers: {current_l1: ...})",
            ),
        ),
        (
            mains(
                {"type": "modbus", "model": "custom", "host": "h", "registers": {"power": {"address": 52}}}
            ),
            ("site.mains_meter.registers", "the register map needs at least current_l1"),
        ),
        (
            mains(
                {"type": "modbus", "model": "sdm630", "host": "h", "registers": {"power": {"address": 52}}}
            ),
            (
                "site.mains_meter.registers",
                "registers are only for model: custom (model 'sdm630' has its own)",
            ),
        ),
        (
            mains(
                {
                    "type": "modbus",
                    "model": "custom",
                    "host": "h",
                    "registers": {"current_l1": {"address": 6, "scale": 0}},
                }
            ),
            ("site.mains_meter.registers.current_l1.scale", "must be a finite number other than 0"),
        ),
        (
            mains({"type": "shelly", "host": "h", "poll_s": 11}),
            (
                "site.mains_meter.poll_s",
                "11 s is not below site.meter_timeout_s (11 s):"
                " every reading would be stale before the next one",
            ),
        ),
        (
            {"site": {"circuits": [{"name": "g", "limit": 20, "meter": "sim"}]}},
            (
                "site.circuits.0.meter",
                "expected none or api, or a mapping with a type (modbus, homewizard, shelly);"
                " got the text 'sim'",
            ),
        ),
        (
            {"chargers": [{"id": "cp1", "driver": {"type": "teleport"}}]},
            (
                "chargers.0.driver",
                "unknown driver type 'teleport' (known: simlink, esp32evse, shelly, smartevse, ocpp, modbus)",
            ),
        ),
        (
            {"chargers": [{"id": "cp1", "driver": "pilot"}]},
            (
                "chargers.0.driver",
                "expected sim, or a mapping with a type (simlink, esp32evse, shelly, smartevse, ocpp,"
                " modbus); got the text 'pilot'",
            ),
        ),
    ],
)
def test_refusals_name_the_key_and_the_reason(data: dict[str, Any], expected: tuple[str, str]) -> None:
    found = errors(data)
    assert any(key == expected[0] and msg.startswith(expected[1]) for key, msg in found), found


def test_without_the_simulator_every_sim_driver_is_refused() -> None:
    assert errors({"sim": {"enabled": False}, "site": {"mains_meter": "api"}}) == [
        (
            "chargers.0.driver",
            "charger 'cp1': driver sim needs the simulator, and sim.enabled is false; with the simulator off"
            " a charger needs a device driver such as {type: esp32evse, host: ...},"
            " {type: shelly, host: ...}, {type: smartevse, host: ...}"
            " or {type: modbus, map: teltonika, host: ...}",
        )
    ]
    assert errors({"sim": {"enabled": False}, "chargers": []})[0][0] == "site.mains_meter"
    off = {"sim": {"enabled": False}, "site": {"mains_meter": "api"}}
    simlink = {**off, "chargers": [{"id": "cp1", "driver": {"type": "simlink"}}]}
    assert errors(simlink)[0][0] == "chargers.0.driver"
    cfg = parse_config({**off, "chargers": []})
    assert cfg.sim.enabled is False


def test_schema_describes_the_meter_mappings() -> None:
    schema = json.loads(json_schema())
    defs = schema["$defs"]
    assert {"ModbusMeterModel", "HomeWizardMeterModel", "ShellyMeterModel", "SimLinkModel"} <= set(defs)
    assert defs["ModbusMeterModel"]["properties"]["port"]["default"] == 502


OFF = {"sim": {"enabled": False}, "site": {"mains_meter": "api"}}


def test_device_drivers_parse_without_the_simulator() -> None:
    cfg = parse_config(
        {
            **OFF,
            "chargers": [
                {
                    "id": "a",
                    "driver": {"type": "esp32evse", "host": "10.0.0.2", "username": "u", "password": "p"},
                },
                {"id": "b", "driver": {"type": "shelly", "host": "topac.local", "password": "pw"}},
                {"id": "c", "driver": {"type": "smartevse", "host": "::1", "port": 8080}},
            ],
        }
    )
    a, b, c = (ch.driver for ch in cfg.chargers)
    assert isinstance(a, Esp32EvseDriverModel) and (a.port, a.username, a.poll_s, a.timeout_s) == (
        80,
        "u",
        1,
        None,
    )
    assert isinstance(b, ShellyDriverModel) and b.password == "pw" and b.websocket is True
    assert isinstance(c, SmartEvseDriverModel) and (c.host, c.port, c.mqtt_prefix) == ("::1", 8080, None)


@pytest.mark.parametrize(
    ("driver", "key", "message"),
    [
        ({"type": "esp32evse"}, "chargers.0.driver.host", "Field required"),
        ({"type": "esp32evse", "host": "http://x"}, "chargers.0.driver.host", "expected a host name"),
        (
            {"type": "esp32evse", "host": "x", "password": "p"},
            "chargers.0.driver.username",
            "a password needs",
        ),
        ({"type": "shelly", "host": "x", "port": 0}, "chargers.0.driver.port", "Input should be greater"),
        ({"type": "shelly", "host": "x", "user": "admin"}, "chargers.0.driver.user", "unknown key 'user'"),
        ({"type": "smartevse"}, "chargers.0.driver.host", "set exactly one of host (REST) or mqtt_prefix"),
        (
            {"type": "smartevse", "host": "x", "mqtt_prefix": "SmartEVSE/1"},
            "chargers.0.driver.host",
            "set exactly one of host",
        ),
        (
            {"type": "smartevse", "mqtt_prefix": "SmartEVSE/#"},
            "chargers.0.driver.mqtt_prefix",
            "String should",
        ),
        (
            {"type": "smartevse", "mqtt_prefix": "SmartEVSE/1"},
            "chargers.0.driver.mqtt_prefix",
            "charger 'cp1'",
        ),
        ({"type": "smartevse", "host": "x", "poll_s": 20}, "chargers.0.driver.poll_s", "20 s is not below"),
    ],
)
def test_device_driver_refusals(driver: dict[str, Any], key: str, message: str) -> None:
    found = errors({**OFF, "chargers": [{"id": "cp1", "driver": driver}]})
    assert any(k == key and m.startswith(message) for k, m in found), found
