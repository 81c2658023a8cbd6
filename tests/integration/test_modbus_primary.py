"""evpilot as the Modbus primary: a `type: modbus` charger driver against a real evpilot secondary
(its pymodbus server with the Teltonika or ESP32-EVSE map) over TCP and over an RTU pty pair."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from evpilot.control.runtime import Runtime
from evpilot.core import commands as cmd
from evpilot.devices.base import Setpoint
from evpilot.devices.modbus.bus import acquire, release
from evpilot.devices.modbus.charger import ModbusChargerLink, whole_amps
from tests.helpers import free_port, make_config, serve
from tests.integration.modbus_helpers import client, rtu_line


def secondary_config(modbus: dict[str, Any], map_: str = "teltonika", **charger: Any) -> Any:
    """One charger with a simulated car, a roomy mains, its Modbus server as given."""
    return make_config(
        {
            "site": {"mains_limit": 63, "ramp_step": 32},
            "chargers": [{"id": "cp1", "max_current": 32, **charger}],
            "sim": {
                "cars": [{"charger": "cp1", "max_current": 16}],
                "house_base": [0, 0, 0],
                "first_spike_s": None,
            },
            "modbus": {"allow_writes": True, "map": map_, **modbus},
        }
    )


def primary_config(driver: dict[str, Any], **charger: Any) -> Any:
    """No simulator: an API-fed mains meter at 40 A and one charger behind the Modbus driver."""
    return make_config(
        {
            "site": {"mains_limit": 40, "mains_meter": "api", "ramp_step": 32},
            "sim": {"enabled": False},
            "chargers": [{"id": "far", "max_current": 32, **charger, "driver": {"type": "modbus", **driver}}],
        }
    )


async def until(
    check: Callable[[], bool], within_s: float = 60, why: Callable[[], object] = lambda: None
) -> None:
    """Wait (polling every 25 ms, up to `within_s` wall seconds) until `check()` holds; fails otherwise."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held: {why()}")
        await asyncio.sleep(0.025)


@contextlib.asynccontextmanager
async def pair(kind: str, map_: str = "teltonika") -> AsyncIterator[tuple[Runtime, Runtime]]:
    """A secondary (evpilot with its Modbus server) and a primary driving it; yields (primary, secondary)."""
    async with contextlib.AsyncExitStack() as stack:
        driver: dict[str, Any] = {"map": map_, "unit": 1, "poll_s": 0.2}
        if map_ == "teltonika":
            driver["watchdog_s"] = 10
        if kind == "tcp":
            port = free_port()
            modbus: dict[str, Any] = {"port": port}
            driver |= {"host": "127.0.0.1", "port": port}
        else:
            line = await stack.enter_async_context(rtu_line())
            modbus = {"serial": line.server_port, "baudrate": 38400}
            driver |= {"serial": line.client_port, "baudrate": 38400}
        _, sec = await stack.enter_async_context(serve(secondary_config(modbus, map_)))
        max_current = 16 if map_ == "esp32evse" else 32
        _, pri = await stack.enter_async_context(serve(primary_config(driver, max_current=max_current)))
        yield pri, sec


def feed(pri: Runtime, amps: float) -> None:
    """Push a mains reading into the primary's API-fed meter."""
    pri.api_meter.push((amps, amps, amps), pri.clock.now())


@contextlib.asynccontextmanager
async def mains_meter(pri: Runtime, sec: Runtime) -> AsyncIterator[list[float]]:
    """Feed the primary's mains meter every 50 ms: house load (yielded, changeable) + the secondary's car."""
    house = [5.0]

    async def run() -> None:
        while True:
            feed(pri, house[0] + max(sec.charger("cp1").currents))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(run())
    try:
        yield house
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
async def test_teltonika_secondary_is_balanced_by_the_primary(kind: str) -> None:
    async with pair(kind) as (pri, sec), mains_meter(pri, sec) as house:
        cp1 = sec.charger("cp1")
        far = pri.charger("far")
        link = pri.links["far"]
        # The primary reads the car charging and leases the secondary its current (amps to use, 15).
        await until(lambda: link.latest() is not None and link.latest().state == "C")  # type: ignore[union-attr]
        await until(lambda: cp1.leases.get("modbus") is not None and max(cp1.currents) >= 11)
        # The primary sees the secondary's currents and energy as a local charger's.
        await until(lambda: abs(max(far.currents) - max(cp1.currents)) < 1.0)
        assert far.meter_kwh is not None and abs(far.meter_kwh - cp1.lifetime_kwh) < 0.05
        status = pri.charger_doc("far")["link"]
        assert status["driver"] == "modbus" and status["online"] is True and status["errors"] == 0
        # What the primary commands reaches the secondary (a new command may be on the line meanwhile).
        await until(
            lambda: pri.charger_doc("far")["link"]["commanded_a"] == cp1.leases["modbus"].value,
            why=lambda: (pri.charger_doc("far")["link"], cp1.leases),
        )
        # A mains overload: the primary commands the secondary down through amps to use.
        before = cp1.leases["modbus"].value
        assert before >= 11
        house[0] = 35.0
        await until(lambda: cp1.leases["modbus"].value <= 5, why=lambda: (before, cp1.leases, far.signaled))
        await until(lambda: max(cp1.currents) <= 5)


async def test_teltonika_settings_written_at_start_and_rewritten_after_a_reboot() -> None:
    port = free_port()
    driver = {"host": "127.0.0.1", "port": port, "unit": 1, "poll_s": 0.2, "watchdog_s": 10}
    async with (
        serve(secondary_config({"port": port})) as (_, sec),
        serve(primary_config(driver, safe_current=0)) as (_, pri),
        client("tcp", port) as c,
    ):

        async def settings() -> list[int]:
            r = await c.read_holding_registers(19, count=2, device_id=1)
            assert not r.isError(), r
            return list(r.registers)

        async def settings_become(values: list[int]) -> None:
            deadline = time.monotonic() + 60
            while (seen := await settings()) != values:
                assert time.monotonic() < deadline, f"settings {seen}, never {values}"
                await asyncio.sleep(0.025)

        feed(pri, 5)
        await settings_become([10, 0])
        # A reboot (register 21) puts them back at the seed's defaults: written and read back in one
        # request (function 23: the write, then the read), so no write of the primary comes between.
        r = await c.readwrite_registers(
            read_address=19, read_count=2, write_address=21, values=[1], device_id=1
        )
        assert not r.isError(), r
        assert list(r.registers) == [30, 6]
        # The primary reads them back and writes them again (it is the only one writing them).
        await settings_become([10, 0])
        assert "modbus" in sec.charger("cp1").leases


async def test_esp32evse_secondary_gets_enabled_and_charging_current() -> None:
    async with pair("tcp", "esp32evse") as (pri, sec):
        cp1 = sec.charger("cp1")
        link = pri.links["far"]
        feed(pri, 5)
        await until(lambda: cp1.user_limit is not None and cp1.enabled)
        assert cp1.user_limit is not None and cp1.user_limit <= 16
        await until(lambda: link.latest() is not None and link.latest().state == "C")  # type: ignore[union-attr]
        before = cp1.user_limit

        def overloaded() -> bool:
            feed(pri, 45 + max(cp1.currents))
            return cp1.user_limit is None or cp1.user_limit < before or not cp1.enabled

        await until(overloaded)


async def test_the_link_writes_phases_start_and_the_failsafe_once_the_setpoint_expires() -> None:
    """The link alone (no primary engine) against the secondary: each register it writes, checked there."""
    port = free_port()
    spec = {"host": "127.0.0.1", "port": port, "unit": 1, "watchdog_s": 10}
    switchable = {"contactor2": "auto", "safe_current": 6}
    model = primary_config(spec, **switchable).chargers[0]
    sec_cfg = make_config(
        {
            "chargers": [{"id": "cp1", "max_current": 32, "contactor2": "auto"}],
            "sim": {"cars": [{"charger": "cp1"}], "first_spike_s": None},
            "modbus": {"allow_writes": True, "port": port},
        }
    )
    now = [1000.0]
    link = ModbusChargerLink(model.core(), model.driver, lambda: now[0])
    async with serve(sec_cfg) as (_, sec):
        cp1 = sec.charger("cp1")
        bus = acquire(link.endpoint)
        try:
            link.send(Setpoint(16.6, 3, 1005.0, 6.0))
            await link.exchange(bus)
            assert cp1.leases["modbus"].value == 16  # whole amperes, rounded down
            assert link.latest() is not None and link.latest().taken_at == 1000.0  # type: ignore[union-attr]
            # One phase: the mains phase of the charger's L1 (register 14), the secondary switches mode.
            link.send(Setpoint(10, 1, 1005.0, 6.0))
            await link.exchange(bus)
            assert cp1.phase_mode == "always_1p" and cp1.leases["modbus"].value == 10
            link.send(Setpoint(10, 3, 1005.0, 6.0))
            await link.exchange(bus)
            assert cp1.phase_mode == "always_3p"
            # Stopped at the secondary: current allotted again starts it (register 16 = 2).
            sec.apply(cmd.Stop("cp1"), "rest:native")
            assert cp1.paused
            await link.exchange(bus)  # reads it back as stopped
            await link.exchange(bus)
            assert not cp1.paused and cp1.start_requested
            # The engine stopped renewing: past expires_at the link itself writes the failsafe current.
            now[0] = 1006.0
            await link.exchange(bus)
            assert cp1.leases["modbus"].value == 6
            # Below 6 A: amps to use 0.
            link.send(Setpoint(4.0, 3, 1010.0, 6.0))
            await link.exchange(bus)
            assert cp1.leases["modbus"].value == 0
        finally:
            release(bus)


def test_whole_amps() -> None:
    assert [whole_amps(a) for a in (0, 5.99, 6, 6.99, 16.0, 31.9, 40, float("nan"))] == [
        0,
        0,
        6,
        6,
        16,
        31,
        32,
        0,
    ]
    assert whole_amps(20, 16) == 16


async def test_the_primary_drives_a_teltonika_secondarys_cable_lock() -> None:
    port = free_port()
    driver = {"host": "127.0.0.1", "port": port, "unit": 1, "poll_s": 0.2, "watchdog_s": 10}
    async with (
        serve(secondary_config({"port": port}, fixed_cable=False, lock="solenoid")) as (_, sec),
        serve(primary_config(driver, fixed_cable=False, lock="motor")) as (_, pri),
        mains_meter(pri, sec),
    ):
        far, hw = pri.access.of("far"), sec.access.of("cp1")
        assert hw.actuator is not None and far.actuator is not None
        # The car is in: the primary locks the socket (always lock, 18 = 1) and charges once 30 says so.
        await until(lambda: far.lock.state.value == "locked", 800, why=lambda: (far.lock, hw.lock_setting))
        assert hw.lock_setting.value == "always" and hw.sensed is True
        await until(lambda: max(sec.charger("cp1").currents) >= 6, 800)
        # Unplugged: the primary unlocks (force unlock, 18 = 2); the secondary opens, then back to auto.
        sec.sim_unplug("cp1")
        await until(lambda: far.lock.state.value == "unlocked", 800, why=lambda: (far.lock, hw.lock_setting))
        assert hw.sensed is False
        await until(lambda: hw.lock_setting.value == "auto", 800)
        settings = [d["fields"]["setting"] for d in sec.recent_commands if d["command"] == "set_cable_lock"]
        assert settings[:2] == ["always", "force_unlock"], settings
        assert {d["origin"] for d in sec.recent_commands if d["command"] == "set_cable_lock"} == {
            "modbus:teltonika",
            "lock",
        }
