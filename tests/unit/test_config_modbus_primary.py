"""Config of chargers driven as Modbus secondaries: the driver mapping, its refusals, and the power-share
check (every secondary at its failsafe current, with the other chargers at their safe current, fits)."""

from __future__ import annotations

from typing import Any

import pytest

from evpilot.config import ConfigError, ModbusChargerModel, parse_config


def errors(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.errors


def site(*chargers: dict[str, Any], **site_: Any) -> dict[str, Any]:
    """A primary without the simulator: an API-fed mains meter and these chargers."""
    return {
        "sim": {"enabled": False},
        "site": {"mains_meter": "api", **site_},
        "chargers": list(chargers),
    }


def secondary(cid: str, unit: int = 1, **driver: Any) -> dict[str, Any]:
    extra = {k: driver.pop(k) for k in ("safe_current", "max_current", "phases", "circuit") if k in driver}
    spec = {"type": "modbus", "host": "192.168.1.20", "unit": unit, **driver}
    return {"id": cid, "driver": spec, **extra}


def test_a_modbus_driver_parses_with_its_defaults() -> None:
    cfg = parse_config(site(secondary("cp1")))
    drv = cfg.chargers[0].driver
    assert isinstance(drv, ModbusChargerModel)
    assert (drv.map, drv.port, drv.unit, drv.poll_s, drv.timeout_s, drv.watchdog_s) == (
        "teltonika",
        502,
        1,
        1,
        1,
        30,
    )
    rtu = parse_config(site(secondary("cp1", host=None, serial="/dev/ttyUSB0", baudrate=19200, parity="E")))
    drv = rtu.chargers[0].driver
    assert isinstance(drv, ModbusChargerModel) and drv.serial == "/dev/ttyUSB0" and drv.parity == "E"


@pytest.mark.parametrize(
    ("charger", "expected"),
    [
        (
            secondary("cp1", host=None),
            ("chargers.0.driver.host", "give either host (Modbus TCP) or serial (Modbus RTU)"),
        ),
        (
            secondary("cp1", serial="/dev/ttyUSB0"),
            ("chargers.0.driver.host", "give either host (Modbus TCP) or serial (Modbus RTU)"),
        ),
        (
            secondary("cp1", baudrate=19200),
            ("chargers.0.driver.baudrate", "baudrate is for a serial (RTU) charger; this one has a host"),
        ),
        (
            secondary("cp1", map="wallbox"),
            ("chargers.0.driver.map", "Input should be 'teltonika' or 'esp32evse'"),
        ),
        (secondary("cp1", unit=0), ("chargers.0.driver.unit", "Input should be greater than or equal to 1")),
        (secondary("cp1", watchdog_s=0), ("chargers.0.driver.watchdog_s", "Input should be greater than")),
        (
            secondary("cp1", watchdog_s=2, poll_s=2),
            ("chargers.0.driver.poll_s", "2 s is not below watchdog_s (2 s): the secondary would fall"),
        ),
        (
            secondary("cp1", map="esp32evse", watchdog_s=10),
            ("chargers.0.driver.watchdog_s", "the ESP32-EVSE registers have no communication watchdog"),
        ),
        (
            secondary("cp1", safe_current=7.5),
            ("chargers.0.safe_current", "charger 'cp1': 7.5 A cannot be the Teltonika failsafe current"),
        ),
        (
            secondary("cp1", safe_current=4),
            ("chargers.0.safe_current", "charger 'cp1': 4 A cannot be the Teltonika failsafe current"),
        ),
        (
            secondary("cp1", max_current=40),
            ("chargers.0.max_current", "charger 'cp1': a Teltonika secondary takes at most 32 A"),
        ),
        (
            secondary("cp1", poll_s=12),
            ("chargers.0.driver.poll_s", "12 s is not below site.meter_timeout_s (11 s)"),
        ),
        (secondary("cp1", port=502, pin=1), ("chargers.0.driver.pin", "unknown key 'pin'")),
    ],
)
def test_refusals_name_the_key(charger: dict[str, Any], expected: tuple[str, str]) -> None:
    found = errors(site(charger))
    assert any(key == expected[0] and expected[1] in msg for key, msg in found), found


def test_two_chargers_at_one_unit_are_refused() -> None:
    found = errors(site(secondary("cp1", 3), secondary("cp2", 3)))
    assert found == [
        ("chargers.1.driver.unit", "charger 'cp2': unit 3 at 192.168.1.20:502 is charger 'cp1' already")
    ]
    # The same unit id on another bus is another charger.
    parse_config(site(secondary("cp1", 3), secondary("cp2", 3, host="192.168.1.21")))


def test_the_secondaries_failsafe_currents_must_fit_the_shared_fuse() -> None:
    four = [secondary(f"cp{i}", i, safe_current=6) for i in range(1, 5)]
    assert errors(site(*four, mains_limit=20, fallback_current=0)) == [
        (
            "site",
            "mains L1: chargers' safe_current adds up to 24 A (Modbus secondaries' failsafe current: 24 A),"
            " above its 20 A limit",
        )
    ]
    parse_config(site(*four, mains_limit=24, fallback_current=0))
    # Failsafe 0 (stop on a lost link) counts nothing.
    parse_config(site(*four[:3], secondary("cp4", 4, safe_current=0), mains_limit=18, fallback_current=0))


def test_a_shared_circuit_names_the_circuit_and_phase() -> None:
    one_phase = [secondary(f"cp{i}", i, safe_current=10, phases=1, circuit="row") for i in (1, 2)]
    found = errors(site(*one_phase, circuits=[{"name": "row", "limit": 16}]))
    assert found == [
        (
            "site",
            "circuit 'row' L1: chargers' safe_current adds up to 20 A (Modbus secondaries' failsafe current:"
            " 20 A), above its 16 A limit",
        )
    ]


def test_an_esp32evse_secondary_counts_at_its_max_for_it_has_no_watchdog() -> None:
    esp = secondary("cp1", map="esp32evse", max_current=16, safe_current=0)
    found = errors(site(esp, secondary("cp2", 2, safe_current=6), mains_limit=20))
    assert found == [
        (
            "site",
            "mains L1: chargers' safe_current adds up to 22 A (Modbus secondaries' failsafe current: 22 A),"
            " above its 20 A limit",
        )
    ]


def test_a_cable_lock_needs_a_driver_that_can_drive_one() -> None:
    lock = {"fixed_cable": False, "lock": "solenoid"}
    cfg = parse_config(site({**secondary("cp1"), **lock}))
    assert cfg.chargers[0].lock == "solenoid"
    refused = errors(site({**secondary("cp1", map="esp32evse", max_current=16), **lock}))
    assert refused[0][0] == "chargers.0.lock"
    assert "driver modbus with map esp32evse has no cable lock evpilot can drive" in refused[0][1]
    network = {"id": "cp1", "driver": {"type": "esp32evse", "host": "192.168.1.40"}, **lock}
    field, message = errors(site(network))[0]
    assert field == "chargers.0.lock" and "driver esp32evse has no cable lock" in message
    assert "{type: modbus, map: teltonika}" in message
