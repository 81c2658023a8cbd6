"""The Teltonika map's communication watchdog on the simulator's manual clock, and the modbus config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evpilot.api.esp32evse.modbus import error_bits
from evpilot.api.modbus import unit_ids
from evpilot.api.teltonika.modbus import FAILSAFE_LEASE, LEASE, TeltonikaMap
from evpilot.api.teltonika.vocab import LimitCause, limit_cause, words
from evpilot.config import ConfigError, parse_config
from evpilot.control.clock import ManualClock
from evpilot.control.runtime import Runtime
from evpilot.store.sqlite import Store
from tests.helpers import make_config


def setup(**cp1: Any) -> tuple[Runtime, ManualClock, TeltonikaMap]:
    clock = ManualClock()
    config = make_config(
        {
            "chargers": [{"id": "cp1", **cp1}, {"id": "cp2"}],
            "sim": {"cars": [{"charger": "cp1"}]},
            "modbus": {"port": 0},
        }
    )
    rt = Runtime(config, clock)
    regs = TeltonikaMap(rt, ["cp1", "cp2"])
    for _ in range(30):
        clock.advance(1)
        rt.tick()
    assert rt.charger("cp1").commanded > 6
    return rt, clock, regs


def run(rt: Runtime, clock: ManualClock, regs: TeltonikaMap, seconds: int, polled: tuple[str, ...]) -> None:
    """`seconds` of clock time, one watch and tick per second, with the chargers in `polled` polled."""
    for _ in range(seconds):
        clock.advance(1)
        for cid in polled:
            regs.read(cid, 0, 45)
            regs.heard(cid)
        regs.watch()
        rt.tick()


def test_watchdog_trips_after_the_timeout_and_ends_amps_to_use() -> None:
    rt, clock, regs = setup()
    ch = rt.charger("cp1")
    regs.write("cp1", 15, [16])
    regs.heard("cp1")
    run(rt, clock, regs, 29, polled=("cp2",))
    assert FAILSAFE_LEASE not in ch.leases and ch.leases[LEASE].value == 16
    run(rt, clock, regs, 1, polled=("cp2",))
    assert ch.leases[FAILSAFE_LEASE].value == 6 and LEASE not in ch.leases
    assert ch.commanded <= 6 and str(ch.available_source) == FAILSAFE_LEASE
    assert limit_cause(ch.available_source) is LimitCause.LOAD_BALANCE
    assert FAILSAFE_LEASE not in rt.charger("cp2").leases
    # Valid communication returns: the failsafe ends; amps to use is not restored by itself.
    run(rt, clock, regs, 1, polled=("cp1", "cp2"))
    assert FAILSAFE_LEASE not in ch.leases and LEASE not in ch.leases


def test_failsafe_zero_stops_and_timeout_zero_never_trips() -> None:
    rt, clock, regs = setup()
    ch = rt.charger("cp1")
    regs.write("cp1", 19, [10, 0])  # 10 s, failsafe 0 A
    regs.heard("cp1")
    run(rt, clock, regs, 10, polled=())
    assert ch.leases[FAILSAFE_LEASE].value == 0
    assert ch.commanded == 0
    regs.write("cp1", 19, [0])  # no watchdog
    regs.heard("cp1")
    assert FAILSAFE_LEASE not in ch.leases
    run(rt, clock, regs, 2000, polled=())
    assert FAILSAFE_LEASE not in ch.leases and ch.commanded > 0


def test_watchdog_runs_from_start_without_a_primary() -> None:
    rt, _clock, regs = setup()  # 30 s passed without a request
    regs.watch()
    assert FAILSAFE_LEASE in rt.charger("cp1").leases and FAILSAFE_LEASE in rt.charger("cp2").leases


def test_words_low_first_and_error_bits() -> None:
    assert words(0x0001_0002_0003_0004, 4) == [4, 3, 2, 1]
    assert words(123456789, 2) == [123456789 & 0xFFFF, 123456789 >> 16]
    assert words(-5, 2) == [0, 0]
    assert error_bits(["rcm_triggered", "temperature_high"]) == 0x50
    assert error_bits(None) == 0


def test_units_default_and_configured() -> None:
    config = make_config({"chargers": [{"id": "a"}, {"id": "b"}], "sim": {"cars": []}})
    assert unit_ids(config.modbus, ["a", "b"]) == {1: "a", 2: "b"}
    config = make_config({"chargers": [{"id": "a"}, {"id": "b"}], "modbus": {"units": {"b": 7}}})
    assert unit_ids(config.modbus, ["a", "b"]) == {7: "b"}


@pytest.mark.parametrize(
    ("modbus", "key"),
    [
        ({"units": {"cp9": 1}}, "modbus.units"),
        ({"units": {"cp1": 0}}, "modbus"),
        ({"units": {"cp1": 248}}, "modbus"),
        ({"map": "sunspec"}, "modbus.map"),
        ({"parity": "X"}, "modbus.parity"),
        ({"port": 70000}, "modbus.port"),
        ({"allow_writes": "yes please"}, "modbus.allow_writes"),
    ],
)
def test_bad_modbus_config_names_its_key(modbus: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"modbus": modbus})
    assert any(k.startswith(key) for k, _ in err.value.errors), err.value.errors


def test_duplicate_unit_ids_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "chargers": [{"id": "a"}, {"id": "b"}],
                "sim": {"cars": []},
                "modbus": {"units": {"a": 2, "b": 2}},
            }
        )
    assert "unique" in str(err.value)


def test_kept_settings_and_a_failsafe_survive_a_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    config = make_config({"chargers": [{"id": "cp1"}], "modbus": {"port": 0}})
    store = Store(tmp_path / "evpilot.sqlite3")
    rt = Runtime(config, clock, store)
    regs = TeltonikaMap(rt, ["cp1"])
    regs.write("cp1", 18, [1, 45, 0])  # always locked, 45 s, failsafe 0 A
    clock.advance(46)
    regs.watch()
    assert rt.charger("cp1").leases[FAILSAFE_LEASE].value == 0
    rt.tick()
    store.close()

    store = Store(tmp_path / "evpilot.sqlite3")
    try:
        rt = Runtime(config, clock, store)
        regs = TeltonikaMap(rt, ["cp1"])
        assert regs.read("cp1", 18, 3) == [1, 45, 0]
        assert rt.charger("cp1").leases[FAILSAFE_LEASE].value == 0  # still no link
        regs.heard("cp1")
        assert FAILSAFE_LEASE not in rt.charger("cp1").leases
        regs.write("cp1", 21, [1])  # reboot: defaults, kept as such
        rt.tick()
    finally:
        store.close()
    store = Store(tmp_path / "evpilot.sqlite3")
    try:
        regs = TeltonikaMap(Runtime(config, clock, store), ["cp1"])
        assert regs.read("cp1", 18, 3) == [0, 30, 6]
    finally:
        store.close()


def ticks(rt: Runtime, clock: ManualClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1)
        rt.tick()


def test_forced_unlock_stops_charging_opens_the_lock_and_lasts_until_the_socket_is_free() -> None:
    rt, clock, regs = setup(fixed_cable=False, lock="solenoid")
    assert regs.read("cp1", 18, 1) == [0] and regs.read("cp1", 30, 1) == [1]  # auto: locked, charging
    regs.write("cp1", 18, [2])
    ticks(rt, clock, 10)
    assert regs.read("cp1", 18, 1) == [2] and regs.read("cp1", 30, 1) == [0]
    assert not rt.charger("cp1").contactor and "lock" in rt.charger("cp1").leases
    rt.sim_unplug("cp1")
    ticks(rt, clock, 3)
    assert regs.read("cp1", 18, 1) == [0] and regs.read("cp1", 30, 1) == [0]
    regs.write("cp1", 18, [1])
    ticks(rt, clock, 3)
    assert regs.read("cp1", 30, 1) == [1]  # always: locked with no car
    # Without a lock (cp2) the setting is kept and reads back, and 30 stays 0.
    regs.write("cp2", 18, [1])
    ticks(rt, clock, 3)
    assert regs.read("cp2", 18, 1) == [1] and regs.read("cp2", 30, 1) == [0]
