"""HomeWizard and Shelly meter drivers against a real HTTP server on loopback serving recorded answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from evpilot.control.clock import ManualClock
from evpilot.devices.homewizard import PATH, HomeWizardMeter
from evpilot.devices.meter import MeterFault
from evpilot.devices.polled import BACKWARDS_ACCEPT
from evpilot.devices.shelly_meter import ShellyMeter
from tests.fixture_http import FixtureServer, fixture
from tests.helpers import free_port

P1_3 = fixture("homewizard_p1_3phase.json")
P1_1 = fixture("homewizard_p1_1phase_magnitudes.json")


@pytest.fixture
async def server() -> AsyncIterator[FixtureServer]:
    srv = FixtureServer()
    await srv.start()
    yield srv
    await srv.stop()


@contextlib.asynccontextmanager
async def homewizard(port: int, clock: ManualClock, **kw: float) -> AsyncIterator[HomeWizardMeter]:
    meter = HomeWizardMeter("mains", "127.0.0.1", clock.now, port, **kw)
    try:
        yield meter
    finally:
        await meter.close()


async def test_homewizard_three_phases(server: FixtureServer) -> None:
    server.json(PATH, P1_3)
    clock = ManualClock()
    async with homewizard(server.port, clock) as meter:
        assert meter.latest() is None
        assert await meter.poll()
    full = meter.full()
    assert full is not None
    assert full.taken_at == clock.now()
    assert full.currents == (-4.0, 2.0, 0.0)
    assert full.voltages == (230.111, 230.111, 230.111)
    assert full.powers == (-676.0, 133.0, 0.0)
    assert full.power == -543.0
    assert (full.import_kwh, full.export_kwh) == (13779.338, 0.0)
    assert full.frequency is None
    assert meter.model == "ISKRA  2M550T-101".strip()
    assert meter.address == f"127.0.0.1:{server.port}"
    latest = meter.latest()
    assert latest is not None and latest.currents == full.currents and latest.taken_at == clock.now()
    assert meter.health().online and meter.health().reads == 1


async def test_homewizard_single_phase_magnitude_signed_by_power(server: FixtureServer) -> None:
    server.json(PATH, P1_1)
    async with homewizard(server.port, ManualClock()) as meter:
        assert await meter.poll()
    full = meter.full()
    assert full is not None
    # The firmware says 6 A while L1 exports 1380 W: the current is an export, so negative.
    assert full.currents == (-6.0, 0.0, 0.0)
    assert full.voltages == (231.2, None, None)
    assert full.powers == (-1380.0, None, None)
    assert full.frequency == 49.98
    assert full.export_kwh == 1200.5


async def test_homewizard_signs_a_magnitude_on_each_phase(server: FixtureServer) -> None:
    doc = dict(P1_3, active_current_l1_a=4, active_current_l2_a=-2)
    server.json(PATH, doc)
    async with homewizard(server.port, ManualClock()) as meter:
        assert await meter.poll()
    full = meter.full()
    assert full is not None and full.currents == (-4.0, 2.0, 0.0)


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        ({"active_current_l2_a": 5000}, MeterFault.ABSURD),
        ({"active_voltage_l3_v": 1200}, MeterFault.ABSURD),
        ({"active_current_l1_a": "4"}, MeterFault.PROTOCOL),
        ({"total_power_import_kwh": -1}, MeterFault.ABSURD),
    ],
)
async def test_homewizard_rejects_implausible_values(
    server: FixtureServer, change: dict[str, object], fault: MeterFault
) -> None:
    server.json(PATH, P1_3)
    async with homewizard(server.port, ManualClock()) as meter:
        assert await meter.poll()
        good = meter.full()
        server.json(PATH, {**P1_3, **change})
        assert not await meter.poll()
    assert meter.health().errors == {fault: 1}
    assert meter.full() is good  # the last good reading stays, aging towards stale


async def test_homewizard_protocol_faults(server: FixtureServer) -> None:
    async with homewizard(server.port, ManualClock()) as meter:
        server.raw(PATH, b"<html>busy</html>")
        assert not await meter.poll()
        server.json(PATH, [1, 2, 3])
        assert not await meter.poll()
        server.json(PATH, {"error": "api disabled"}, status=403)
        assert not await meter.poll()
        server.json(PATH, {"wifi_ssid": "x"})  # a water meter: no currents
        assert not await meter.poll()
    assert meter.health().errors == {MeterFault.PROTOCOL: 3, MeterFault.AUTH: 1}
    assert meter.full() is None


async def test_homewizard_energy_running_backwards_is_rejected_then_a_reset_accepted(
    server: FixtureServer,
) -> None:
    server.json(PATH, P1_3)
    async with homewizard(server.port, ManualClock()) as meter:
        assert await meter.poll()
        server.json(PATH, {**P1_3, "total_power_import_kwh": 13000.0})
        results = [await meter.poll() for _ in range(BACKWARDS_ACCEPT)]
    assert results == [False] * (BACKWARDS_ACCEPT - 1) + [True]
    assert meter.health().errors == {MeterFault.BACKWARDS: BACKWARDS_ACCEPT - 1}
    full = meter.full()
    assert full is not None and full.import_kwh == 13000.0


async def test_homewizard_timeout_unreachable_logged_once_per_episode_and_recovery(
    server: FixtureServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "evpilot.meters")
    server.json(PATH, P1_3, delay_s=1.0)
    async with homewizard(server.port, ManualClock(), timeout_s=0.2) as meter:
        assert not await meter.poll()
        assert not await meter.poll()
        assert meter.health().errors == {MeterFault.TIMEOUT: 2}
        server.json(PATH, P1_3)
        assert await meter.poll()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "meter mains" in warnings[0].getMessage()
    assert "no answer" in warnings[0].getMessage()
    assert any("readings again" in r.getMessage() for r in caplog.records)
    # Nobody listens on a fresh port: refused at once.
    async with homewizard(free_port(), ManualClock()) as meter:
        assert not await meter.poll()
    assert meter.health().errors == {MeterFault.UNREACHABLE: 1}
    assert meter.health().last_error is not None


async def test_backoff_doubles_up_to_the_cap() -> None:
    async with homewizard(free_port(), ManualClock(), poll_s=0.5) as meter:
        delays = []
        for _ in range(7):
            await meter.poll()
            delays.append(meter.next_delay())
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_homewizard_task_polls_and_recovers_by_itself(server: FixtureServer) -> None:
    clock = ManualClock()
    port = server.port
    meter = HomeWizardMeter("grid", "127.0.0.1", clock.now, port, poll_s=0.05, timeout_s=0.5)
    server.json(PATH, P1_3)
    task = asyncio.create_task(meter.run())
    try:
        for _ in range(200):
            if server.hits.get(PATH, 0) >= 2:
                break
            await asyncio.sleep(0.02)
        assert meter.latest() is not None
        await server.stop()
        for _ in range(200):
            if not meter.health().online:
                break
            await asyncio.sleep(0.02)
        assert not meter.health().online
        clock.advance(30)
        restarted = FixtureServer()
        restarted.json(PATH, {**P1_3, "active_current_l2_a": 7})
        await restarted.start(port)
        try:
            for _ in range(400):
                full = meter.full()
                if full is not None and full.currents[1] == 7.0:
                    break
                await asyncio.sleep(0.02)
            full = meter.full()
            assert full is not None and full.currents[1] == 7.0 and full.taken_at == clock.now()
            assert meter.health().online
        finally:
            await restarted.stop()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_shelly_pro3em_with_energy_counters(server: FixtureServer) -> None:
    server.json("/rpc/EM.GetStatus", fixture("shelly_pro3em_em_status.json"))
    server.json("/rpc/EMData.GetStatus", fixture("shelly_pro3em_emdata_status.json"))
    clock = ManualClock()
    meter = ShellyMeter("mains", "127.0.0.1", clock.now, server.port)
    try:
        assert await meter.poll()
    finally:
        await meter.close()
    full = meter.full()
    assert full is not None
    assert full.currents == (4.029, -4.027, 3.03)
    assert full.voltages == (236.1, 236.201, 236.402)
    assert full.powers == (951.2, -951.1, 715.4)
    assert full.power == pytest.approx(715.5)
    assert full.import_kwh == pytest.approx(8.55296)
    assert full.export_kwh == pytest.approx(0.8124)
    assert full.frequency == 50.0
    assert meter.model == "Pro 3EM"


async def test_shelly_em_channel_without_counters_then_timeout(server: FixtureServer) -> None:
    server.json("/rpc/EM1.GetStatus", fixture("shelly_em_em1_status.json"))
    clock = ManualClock()
    meter = ShellyMeter("ev:cp1", "127.0.0.1", clock.now, server.port, timeout_s=0.2)
    try:
        assert await meter.poll()
        full = meter.full()
        assert full is not None
        assert full.currents == (-2.081, 0.0, 0.0)
        assert full.voltages == (226.5, None, None)
        assert full.import_kwh is None
        assert meter.model == "EM"
        server.json("/rpc/EM1Data.GetStatus", fixture("shelly_em_em1data_status.json"))
        server.json("/rpc/EM1.GetStatus", fixture("shelly_em_em1_status.json"), delay_s=1.0)
        assert not await meter.poll()
    finally:
        await meter.close()
    assert meter.health().errors == {MeterFault.TIMEOUT: 1}


async def test_shelly_em_counters(server: FixtureServer) -> None:
    server.json("/rpc/EM1.GetStatus", fixture("shelly_em_em1_status.json"))
    server.json("/rpc/EM1Data.GetStatus", fixture("shelly_em_em1data_status.json"))
    meter = ShellyMeter("ev:cp1", "127.0.0.1", ManualClock().now, server.port)
    try:
        assert await meter.poll()
    finally:
        await meter.close()
    full = meter.full()
    assert full is not None
    assert (full.import_kwh, full.export_kwh) == (pytest.approx(12.34567), pytest.approx(2.3451))
