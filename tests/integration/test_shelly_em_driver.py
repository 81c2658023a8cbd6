"""The Shelly EM driver against real HTTP servers: the simulated Pro 3EM / EM, evpilot itself, raw sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from evpilot.control.autobalance import AutoBalanceSettings, node_name
from evpilot.control.clock import ScaledClock
from evpilot.control.runtime import Runtime
from evpilot.devices.meter import MeterFault
from evpilot.devices.shelly_em import (
    ShellyEmAuthError,
    ShellyEmDriver,
    ShellyEmMeter,
    ShellyEmProtocolError,
    ShellyEmTimeout,
    ShellyEmUnreachable,
)
from evpilot.sim.shelly_em import SimShellyEm
from evpilot.sim.site import MainsMeterReading
from tests.helpers import free_port, make_config, serve
from tests.integration.mqtt_helpers import until

READING = MainsMeterReading(
    taken_at=0.0,
    voltages=(231.0, 229.5, 230.2),
    currents=(10.0, -2.0, 3.25),
    powers=(2310.0, -459.0, 748.2),
    import_kwh=1.0,
    export_kwh=0.0,
    frequency=50.0,
)


@pytest.fixture
async def pro3em() -> AsyncIterator[SimShellyEm]:
    em = SimShellyEm(lambda: READING, "3em")
    await em.start()
    yield em
    await em.stop()


async def test_pro3em_reading_with_signed_currents(pro3em: SimShellyEm) -> None:
    meter = ShellyEmMeter("127.0.0.1", pro3em.port)
    try:
        reading = await meter.read()
    finally:
        await meter.close()
    assert meter.kind == "em"
    # The meter reports magnitudes; exporting phase B comes back negative from the power's sign.
    assert reading.currents == (10.0, -2.0, 3.25)
    assert reading.voltages == (231.0, 229.5, 230.2)
    assert reading.powers == (2310.0, -459.0, 748.2)


async def test_em1_is_found_after_em_has_no_handler() -> None:
    em = SimShellyEm(lambda: READING, "em1")
    await em.start()
    meter = ShellyEmMeter("127.0.0.1", em.port)
    try:
        first = await meter.read()
        asked = em.requests
        second = await meter.read()
    finally:
        await meter.close()
        await em.stop()
    assert meter.kind == "em1"
    assert first.currents == second.currents == (10.0,)
    assert asked == 2 and em.requests == 3  # EM.GetStatus is not asked again once EM1 is known


async def test_unreachable_meter() -> None:
    meter = ShellyEmMeter("127.0.0.1", free_port(), timeout_s=2.0)
    try:
        with pytest.raises(ShellyEmUnreachable):
            await meter.read()
    finally:
        await meter.close()


async def test_silent_meter_times_out() -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        await release.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    meter = ShellyEmMeter("127.0.0.1", port, timeout_s=0.3)
    try:
        with pytest.raises(ShellyEmTimeout):
            await meter.read()
    finally:
        release.set()
        await meter.close()
        server.close()
        await server.wait_closed()


async def test_garbage_and_missing_channel_are_protocol_errors() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    meter = ShellyEmMeter("127.0.0.1", port)
    try:
        with pytest.raises(ShellyEmProtocolError):
            await meter.read()
    finally:
        await meter.close()
        server.close()

    empty = SimShellyEm(lambda: None, "3em")
    await empty.start()
    meter = ShellyEmMeter("127.0.0.1", empty.port)
    try:
        with pytest.raises(ShellyEmProtocolError):
            await meter.read()
    finally:
        await meter.close()
        await empty.stop()


async def test_password_protected_device_is_an_auth_error() -> None:
    # evpilot's own Shelly facade with a password answers 401 like a protected meter would.
    async with serve(make_config({"shelly": {"password": "pw"}}), speed=1) as (base, _rt):
        meter = ShellyEmMeter("127.0.0.1", int(base.rsplit(":", 1)[1]))
        try:
            with pytest.raises(ShellyEmAuthError):
                await meter.read()
        finally:
            await meter.close()


async def test_the_driver_caches_readings_stamped_with_the_clock_and_counts_faults() -> None:
    em = SimShellyEm(lambda: READING, "em1")
    await em.start()
    now = [500.0]
    driver = ShellyEmDriver("auto_balance:cp1", "127.0.0.1", lambda: now[0], em.port, poll_s=0.05)
    assert driver.latest() is None and driver.full() is None
    await driver.poll()
    full = driver.full()
    assert full is not None and full.taken_at == 500.0 and driver.model == "em1" and driver.channels == 1
    assert full.currents == (10.0, 0.0, 0.0) and full.powers == (2310.0, None, None)
    assert driver.latest() == full.reading() and driver.health().online
    await em.stop()
    now[0] = 510.0
    await driver.poll()  # the meter is gone: counted, the last reading kept (it ages)
    health = driver.health()
    assert not health.online and health.errors == {MeterFault.UNREACHABLE: 1} and health.last_error
    assert driver.full() is full
    task = asyncio.create_task(driver.run())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert driver.health().errors[MeterFault.UNREACHABLE] > 1


async def test_auto_balance_runs_in_the_runtime_without_any_facade() -> None:
    em_port = free_port()
    config = make_config({"shelly": {"sim_em_port": em_port, "em_port": em_port, "em_poll_s": 0.05}})
    rt = Runtime(config, ScaledClock(10.0))
    await rt.start()
    try:
        assert len(rt.listeners) == 0  # no app, no facade: nothing else runs auto_balance
        rt.auto_balance.configure("cp1", AutoBalanceSettings(True, "127.0.0.1", 20.0, True))
        node = next(c for c in rt.engine.site.circuits if c.name == node_name("cp1"))
        assert node.limit == 20.0 and node.metered and node.parent is None
        assert node.fuse == rt.engine.site.mains_limit
        await until(lambda: rt.auto_balance.status("cp1")["reason"] == "ok", what="a fresh EM reading")
        assert rt.engine.circuit_meters[node_name("cp1")].latest() is not None
    finally:
        await rt.stop()
