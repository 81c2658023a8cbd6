"""The Modbus meter driver against real pymodbus servers (twins) over TCP and an RTU pty pair."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evpilot.devices.meter import MeterDriver, MeterFault
from evpilot.devices.modbus import bus as buses
from evpilot.devices.modbus.driver import BACKWARDS_ACCEPT, ModbusMeter, ModbusSpec, build
from evpilot.devices.modbus.maps import MAPS
from evpilot.devices.modbus.registers import Quantity
from evpilot.devices.modbus.twin import MeterTwin, TwinFault, TwinServer

DATA = Path(__file__).resolve().parents[1] / "data" / "modbus"
SRC = Path(__file__).resolve().parents[2] / "src"

pytestmark = pytest.mark.asyncio


class FakeClock:
    """The injected clock readings are stamped with."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def tcp_twin() -> AsyncIterator[tuple[TwinServer, MeterTwin, str, int]]:
    twin = MeterTwin(MAPS["sdm630"])
    twin.set((16.0, -4.0, 2.0), import_kwh=100.0, export_kwh=5.0)
    async with TwinServer({1: twin}) as server:
        host, port = await server.start_tcp()
        yield server, twin, host, port


@pytest.mark.parametrize("model", sorted(MAPS))
async def test_every_model_reads_its_twin_over_tcp(model: str) -> None:
    regmap = MAPS[model]
    twin = MeterTwin(regmap)
    twin.set((12.5, -3.0, 1.25), (231.0, 229.0, 230.0), import_kwh=4321.5, export_kwh=12.25, frequency=49.98)
    clock = FakeClock()
    async with TwinServer({7: twin}) as server:
        host, port = await server.start_tcp()
        async with build("mains", ModbusSpec(model=model, host=host, port=port, unit=7), clock) as meter:
            reading = await meter.poll_once()
    assert reading is not None and reading.taken_at == clock.now
    expect_i = (12.5, -3.0, 1.25) if regmap.phases == 3 else (12.5, 0.0, 0.0)
    assert reading.currents == pytest.approx(expect_i, abs=0.01)
    assert reading.voltages[0] == pytest.approx(231.0, abs=0.1)
    assert reading.frequency == pytest.approx(49.98, abs=0.1)
    if Quantity.IMPORT_KWH in regmap.registers:
        assert reading.import_kwh == pytest.approx(4321.5, abs=0.1)
    if Quantity.EXPORT_KWH in regmap.registers:
        assert reading.export_kwh == pytest.approx(12.25, abs=0.1)
    assert meter.health().online and not meter.health().errors


@pytest.mark.parametrize("model", sorted(MAPS))
async def test_replayed_raw_block_reads_through_modbus(model: str) -> None:
    doc = json.loads((DATA / f"{model}.json").read_text())
    twin = MeterTwin(MAPS[model])
    for fc, block in doc["registers"].items():
        twin.set_raw(int(fc), {int(a): int(w, 16) for a, w in block.items()})
    async with TwinServer({1: twin}) as server:
        host, port = await server.start_tcp()
        async with ModbusMeter("m", ModbusSpec(model=model, host=host, port=port), FakeClock()) as meter:
            reading = await meter.poll_once()
    assert reading is not None
    if "power_l2" in doc["expect"]:
        assert reading.currents[1] == pytest.approx(-doc["expect"]["current_l2"], rel=1e-5)
    assert reading.currents[0] == pytest.approx(doc["expect"]["current_l1"], rel=1e-5)
    if "import_kwh" in doc["expect"]:
        assert reading.import_kwh == pytest.approx(doc["expect"]["import_kwh"], rel=1e-6)


async def test_rtu_meters_share_one_port_and_read_over_a_pty_pair() -> None:
    sdm, abb = MeterTwin(MAPS["sdm630"]), MeterTwin(MAPS["abb_b23"])
    sdm.set((10.0, 0.0, -6.0), import_kwh=1.0)
    abb.set((0.0, 8.0, 0.0), import_kwh=2.0)
    async with TwinServer({1: sdm, 2: abb}) as server:
        path = await server.start_rtu(baudrate=19200)
        spec1 = ModbusSpec(model="sdm630", serial=path, baudrate=19200, unit=1, timeout_s=0.5)
        spec2 = ModbusSpec(model="abb_b23", serial=path, baudrate=19200, unit=2, timeout_s=0.5)
        m1, m2 = ModbusMeter("mains", spec1, FakeClock()), ModbusMeter("ev", spec2, FakeClock())
        async with m1, m2:
            assert m1._bus is m2._bus and m1._bus is not None and m1._bus.users == 2
            r1, r2 = await asyncio.gather(m1.poll_once(), m2.poll_once())
        assert m1._bus is None
    assert r1 is not None and r1.currents == pytest.approx((10.0, 0.0, -6.0))
    assert r2 is not None and r2.currents == pytest.approx((0.0, 8.0, 0.0))
    assert "unit 2" in m2.address and path in m2.address


async def test_rtu_faults_are_counted_logged_once_and_recover(caplog: pytest.LogCaptureFixture) -> None:
    twin = MeterTwin(MAPS["sdm630"])
    twin.set((5.0, 5.0, 5.0), import_kwh=10.0)
    async with TwinServer({4: twin}) as server:
        path = await server.start_rtu()
        spec = ModbusSpec(model="sdm630", serial=path, unit=4, timeout_s=0.2)
        async with ModbusMeter("garage", spec, FakeClock()) as meter:
            assert await meter.poll_once() is not None
            caplog.set_level(logging.INFO, logger="evpilot.meters.modbus")
            for fault, kind in (
                (TwinFault.CRC, MeterFault.CRC),
                (TwinFault.SILENT, MeterFault.TIMEOUT),
                (TwinFault.EXCEPTION, MeterFault.EXCEPTION),
            ):
                twin.fault = fault
                assert await meter.poll_once() is None
                assert await meter.poll_once() is None
                assert meter.health().errors[kind] == 2
            assert not meter.health().online
            assert meter.failures == 6 and meter.next_delay() == pytest.approx(10.0)
            # The valid reading from before the episode is kept (its age tells the engine it is stale).
            assert meter.full() is not None and meter.latest() is not None
            twin.fault = TwinFault.NONE
            assert await meter.poll_once() is not None
            assert meter.health().online
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "garage" in warnings[0].getMessage() and "crc" in warnings[0].getMessage()
    assert any("readings again" in r.getMessage() for r in caplog.records)


async def test_bad_values_are_rejected(tcp_twin: tuple[TwinServer, MeterTwin, str, int]) -> None:
    _server, twin, host, port = tcp_twin
    async with ModbusMeter("mains", ModbusSpec(model="sdm630", host=host, port=port), FakeClock()) as meter:
        good = await meter.poll_once()
        assert good is not None
        twin.set_values({Quantity.CURRENT_L2: math.nan})
        assert await meter.poll_once() is None
        twin.set_values({Quantity.CURRENT_L2: 4.0, Quantity.VOLTAGE_L1: math.inf})
        assert await meter.poll_once() is None
        twin.set_values({Quantity.VOLTAGE_L1: 230.0, Quantity.CURRENT_L1: 1e7})
        assert await meter.poll_once() is None
        twin.set_values({Quantity.CURRENT_L1: 16.0, Quantity.FREQUENCY: 5.0})
        assert await meter.poll_once() is None
        twin.set_values({Quantity.FREQUENCY: 50.0})
        assert await meter.poll_once() is not None
        errors = meter.health().errors
        assert errors[MeterFault.NON_FINITE] == 2 and errors[MeterFault.ABSURD] == 2
        assert meter.full() == good


async def test_energy_running_backwards_is_rejected_until_it_holds(
    tcp_twin: tuple[TwinServer, MeterTwin, str, int],
) -> None:
    _server, twin, host, port = tcp_twin
    async with ModbusMeter("mains", ModbusSpec(model="sdm630", host=host, port=port), FakeClock()) as meter:
        assert (await meter.poll_once()) is not None
        twin.set_values({Quantity.IMPORT_KWH: 99.0})
        for _ in range(BACKWARDS_ACCEPT - 1):
            assert await meter.poll_once() is None
        assert meter.health().errors[MeterFault.BACKWARDS] == BACKWARDS_ACCEPT - 1
        # A counter that stays lower is a replaced or reset meter: taken as the new baseline.
        reading = await meter.poll_once()
        assert reading is not None and reading.import_kwh == pytest.approx(99.0)
        twin.set_values({Quantity.IMPORT_KWH: 99.5})
        assert await meter.poll_once() is not None


async def test_run_polls_and_the_tick_reads_the_cache(
    tcp_twin: tuple[TwinServer, MeterTwin, str, int],
) -> None:
    _server, twin, host, port = tcp_twin
    clock = FakeClock()
    meter: MeterDriver = build("mains", ModbusSpec(model="sdm630", host=host, port=port, poll_s=0.05), clock)
    task = asyncio.create_task(meter.run())
    try:
        for _ in range(200):
            if meter.latest() is not None:
                break
            await asyncio.sleep(0.01)
        first = meter.latest()
        assert first is not None and first.currents == pytest.approx((16.0, -4.0, 2.0))
        twin.set((20.0, 1.0, 1.0), import_kwh=101.0)
        clock.now += 1
        for _ in range(200):
            latest = meter.latest()
            if latest is not None and latest.currents[0] == pytest.approx(20.0):
                break
            await asyncio.sleep(0.01)
        latest = meter.latest()
        assert latest is not None and latest.currents == pytest.approx((20.0, 1.0, 1.0))
        assert latest.taken_at == clock.now
        assert meter.driver == "modbus" and meter.model == "sdm630" and meter.health().reads >= 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_unreachable_endpoint_backs_off_and_recovers() -> None:
    twin = MeterTwin(MAPS["em340"])
    twin.set((3.0, 3.0, 3.0))
    async with TwinServer({1: twin}) as server:
        host, port = await server.start_tcp()
    # The port is closed now.
    spec = ModbusSpec(model="em340", host=host, port=port, timeout_s=0.2)
    async with ModbusMeter("pv", spec, FakeClock()) as meter:
        assert await meter.poll_once() is None
        assert await meter.poll_once() is None  # within the backoff: fails fast, no new connect
        errors = meter.health().errors
        assert errors[MeterFault.UNREACHABLE] == 2
        assert meter._bus is not None
        assert "next attempt" in (meter.health().last_error or "")
        async with TwinServer({1: twin}) as again:
            await again.start_tcp(host, port)
            meter._bus._retry_at = 0.0  # skip the wait instead of sleeping through it
            assert await meter.poll_once() is not None


async def test_custom_map_from_the_config_reads_a_twin() -> None:
    registers = {
        "current_l1": {"address": 100, "function": 3, "type": "int16", "scale": 0.01},
        "power_l1": {"address": 101, "function": 3, "type": "int32", "scale": 1},
        "voltage_l1": {"address": 103, "function": 3, "type": "uint16", "scale": 0.1},
    }
    spec = ModbusSpec.from_mapping(
        {"type": "modbus", "model": "custom", "host": "127.0.0.1", "registers": registers}
    )
    twin = MeterTwin(spec.register_map())
    twin.set((-7.5,), (231.5,), import_kwh=0)
    async with TwinServer({1: twin}) as server:
        _host, port = await server.start_tcp()
        spec = ModbusSpec(model="custom", host="127.0.0.1", port=port, registers=registers)
        async with ModbusMeter("sub", spec, FakeClock()) as meter:
            reading = await meter.poll_once()
    assert reading is not None
    assert reading.currents == pytest.approx((-7.5, 0.0, 0.0))
    assert reading.voltages[0] == pytest.approx(231.5)


async def _cli(*argv: str) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evpilot",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_scan_names_models_over_tcp_full_range() -> None:
    twins = {
        2: MeterTwin(MAPS["sdm630"]),
        9: MeterTwin(MAPS["iem3155"]),
        30: MeterTwin(MAPS["em24"]),
        200: MeterTwin(MAPS["eem_ma370"]),
        247: MeterTwin(MAPS["sdm120"]),
    }
    for t in twins.values():
        t.set((6.0, 6.0, 6.0), import_kwh=1.0)
    async with TwinServer(twins) as server:
        host, port = await server.start_tcp()
        code, out, err = await _cli(
            "meters", "scan", "--host", host, "--port", str(port), "--timeout", "0.02"
        )
    assert code == 0, err
    assert "unit 2: sdm630 — identity register" in out
    assert "unit 9: iem3155 — identity register" in out
    assert "unit 30: em24 — plausible reading" in out
    assert "unit 200: eem_ma370 — identity register" in out
    assert "unit 247: sdm120 — identity register" in out
    assert out.count("unit ") == 5
    assert "247/247" in err and "5 found" in err


async def test_cli_scan_and_read_over_rtu() -> None:
    twin = MeterTwin(MAPS["orno_we517"])
    twin.set((9.0, -2.0, 0.5), import_kwh=55.5, export_kwh=1.5)
    async with TwinServer({3: twin}) as server:
        path = await server.start_rtu()
        code, out, err = await _cli("meters", "scan", "--serial", path, "--units", "1-4", "--timeout", "0.1")
        assert code == 0, err
        assert "unit 3: orno_we517 — plausible reading" in out
        assert "4/4" in err
        code, out, err = await _cli(
            "meters", "read", "--serial", path, "--model", "orno_we517", "--unit", "3"
        )
        assert code == 0, err
        assert "L2: -2.00 A" in out and "import: 55.500 kWh" in out
        code, out, err = await _cli("meters", "read", "--serial", path, "--model", "sdm630", "--unit", "3")
        assert code == 1 and "exception_response" in err
        code, _out, err = await _cli("meters", "read", "--serial", path, "--model", "sdm999", "--unit", "3")
        assert code == 2 and "unknown meter model" in err


async def test_cli_scan_reports_nothing_found() -> None:
    async with TwinServer({}) as server:
        host, port = await server.start_tcp()
        code, _out, err = await _cli("meters", "scan", "--host", host, "--port", str(port), "--units", "1-3")
    assert code == 1 and "no Modbus device answered" in err


async def test_bus_pool_is_per_endpoint() -> None:
    a = buses.acquire(buses.Endpoint("127.0.0.1", 1502))
    b = buses.acquire(buses.Endpoint("127.0.0.1", 1502))
    c = buses.acquire(buses.Endpoint("127.0.0.1", 1503))
    assert a is b and a is not c and a.users == 2
    for x in (a, b, c):
        buses.release(x)
    assert buses.acquire(buses.Endpoint("127.0.0.1", 1502)) is not a


async def test_twin_follows_the_simulators_mains_meter_through_real_modbus() -> None:
    from types import SimpleNamespace

    from evpilot.devices.modbus.twin import follow_forever
    from evpilot.sim.site import MainsMeterReading

    state = {"i": (10.0, 12.0, -3.0)}

    def source() -> MainsMeterReading:
        i = state["i"]
        v = (231.0, 229.5, 230.2)
        return MainsMeterReading(7.0, v, i, (i[0] * v[0], i[1] * v[1], i[2] * v[2]), 12.5, 3.25, 50.01)

    twin = MeterTwin(MAPS["dtsu666"])
    feeder = asyncio.create_task(follow_forever(twin, source, 0.01))
    try:
        async with TwinServer({1: twin}) as server:
            host, port = await server.start_tcp()
            # The registry hands the driver its config model; attribute names are the contract.
            config = SimpleNamespace(
                type="modbus",
                model="dtsu666",
                host=host,
                port=port,
                unit=1,
                serial=None,
                baudrate=9600,
                parity="N",
                stopbits=1,
                registers=None,
                poll_s=1.0,
                timeout_s=None,
            )
            async with build("mains", config, FakeClock()) as meter:
                first = await meter.poll_once()
                state["i"] = (1.0, 2.0, 3.0)
                await asyncio.sleep(0.05)
                second = await meter.poll_once()
    finally:
        feeder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await feeder
    assert meter.spec.timeout_s == 1.0
    assert first is not None and first.currents == pytest.approx((10.0, 12.0, -3.0), abs=1e-3)
    assert first.import_kwh == pytest.approx(12.5) and first.frequency == pytest.approx(50.01, abs=0.01)
    assert second is not None and second.currents == pytest.approx((1.0, 2.0, 3.0), abs=1e-3)


async def test_sim_twins_serve_the_simulated_meter_on_loopback() -> None:
    import socket

    from evpilot.devices.modbus.simtwins import SimTwins, TwinPlanError
    from evpilot.sim.site import MainsMeterReading

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = {"i": (4.0, -2.0, 1.0)}

    def source() -> MainsMeterReading:
        i, v = state["i"], (230.0, 230.0, 230.0)
        return MainsMeterReading(1.0, v, i, (i[0] * 230, i[1] * 230, i[2] * 230), 3.0, 1.0, 50.0)

    mains = ModbusSpec(model="sdm630", host="127.0.0.1", port=port, unit=1)
    garage = ModbusSpec(model="em340", host="127.0.0.1", port=port, unit=2)
    twins = SimTwins(source, [mains, garage])
    await twins.start()
    try:
        async with (
            ModbusMeter("mains", mains, FakeClock()) as m1,
            ModbusMeter("garage", garage, FakeClock()) as m2,
        ):
            r1, r2 = await m1.poll_once(), await m2.poll_once()
            assert r1 is not None and r1.currents == pytest.approx((4.0, -2.0, 1.0))
            assert r2 is not None and r2.currents == pytest.approx((4.0, -2.0, 1.0))
            state["i"] = (9.0, 9.0, 9.0)
            twins.update()
            r1 = await m1.poll_once()
            assert r1 is not None and r1.currents == pytest.approx((9.0, 9.0, 9.0))
    finally:
        await twins.stop()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = SimTwins(source, [ModbusSpec(model="sdm630", host="127.0.0.1", port=busy.getsockname()[1])])
        with pytest.raises(TwinPlanError, match="cannot listen"):
            await taken.start()
    with pytest.raises(TwinPlanError, match="loopback"):
        SimTwins(source, [ModbusSpec(model="sdm630", host="192.0.2.1")])
    with pytest.raises(TwinPlanError, match="two meters"):
        SimTwins(source, [mains, mains])
