"""The Shelly EM driver against real HTTP servers: the simulated Pro 3EM / EM, evpilot itself, raw sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from evpilot.devices.shelly_em import (
    ShellyEmAuthError,
    ShellyEmMeter,
    ShellyEmProtocolError,
    ShellyEmTimeout,
    ShellyEmUnreachable,
)
from evpilot.sim.shelly_em import SimShellyEm
from evpilot.sim.site import MainsMeterReading
from tests.helpers import free_port, make_config, serve

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
