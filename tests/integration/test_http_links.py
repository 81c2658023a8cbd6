"""The ESP32-EVSE, Shelly Top AC and SmartEVSE drivers against evpilot's own facades (real sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from evpilot.control.runtime import Runtime
from evpilot.devices.base import Setpoint
from evpilot.devices.http_links import Esp32EvseLink, ShellyTopAcLink, SmartEvseLink
from evpilot.devices.netlink import NetLink
from tests.helpers import free_port, make_config, serve

DEVICE: dict[str, Any] = {
    "site": {"mains_limit": 40},
    "chargers": [{"id": "cp1", "max_current": 16}],
    "sim": {"pv_kwp": 0, "spike_rate_h": 0, "first_spike_s": None, "house_base": [1, 1, 1]},
}


def setpoint(amps: float) -> Setpoint:
    return Setpoint(amps, 3, float("inf"), 6.0)


async def until(check: Callable[[], bool], what: str, tries: int = 200) -> None:
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


Factory = Callable[[str, int], NetLink]


def esp32(host: str, port: int) -> NetLink:
    return Esp32EvseLink("cp1", host, _clock, port, "user", "secret", poll_s=0.1)


def shelly(host: str, port: int) -> NetLink:
    return ShellyTopAcLink("cp1", host, _clock, port, "pw", poll_s=0.1)


def shelly_ws(host: str, port: int) -> NetLink:
    # Polling slower than the test waits: the WebSocket's NotifyStatus must carry the readings.
    return ShellyTopAcLink("cp1", host, _clock, port, None, poll_s=0.1)


def smartevse(host: str, port: int) -> NetLink:
    return SmartEvseLink("cp1", host, _clock, port, poll_s=0.1)


def _clock() -> float:
    return asyncio.get_running_loop().time()


def user_limit(rt: Runtime) -> float | None:
    ch = rt.engine.chargers["cp1"]
    return ch.user_limit if ch.user_limit is not None else ch.override


DEVICE_AUTH: dict[str, dict[str, Any]] = {
    "esp32evse": {"esp32evse": {"username": "user", "password": "secret"}},
    "shelly": {"shelly": {"password": "pw"}},
    "smartevse": {},
    "shelly_ws": {},
}


@pytest.mark.parametrize(
    ("kind", "factory"),
    [("esp32evse", esp32), ("shelly", shelly), ("shelly_ws", shelly_ws), ("smartevse", smartevse)],
)
async def test_link_drives_the_facade_and_reads_it_back(kind: str, factory: Factory) -> None:
    async with serve(make_config({**DEVICE, **DEVICE_AUTH[kind]}), speed=20) as (base, rt):
        port = int(base.rsplit(":", 1)[1])
        link = factory("127.0.0.1", port)
        task = asyncio.create_task(link.run())
        try:
            ch = rt.engine.chargers["cp1"]
            link.send(setpoint(10))
            await until(lambda: user_limit(rt) == 10 and ch.enabled, "the device takes 10 A")
            await until(lambda: ch.letter == "C" and max(ch.currents) > 9, "the car charges")
            await until(
                lambda: (r := link.latest()) is not None and r.state == "C" and max(r.currents) > 9,
                "the link reads the charge back",
            )
            reading = link.latest()
            assert reading is not None and reading.energy_kwh is not None
            assert link.online and link.status(_clock())["errors"] == 0
            link.send(setpoint(12.34))
            await until(lambda: user_limit(rt) == 12.3, "0.1 A steps")
            link.send(setpoint(3))  # below 6 A: stop
            await until(lambda: max(ch.currents) < 0.5, "the device stops")
            await until(lambda: (r := link.latest()) is not None and max(r.currents) < 0.5, "read back")
            assert link.delivered == 0
            link.send(setpoint(8))
            await until(lambda: max(ch.currents) > 7, "the device charges again")
            if kind == "shelly_ws":
                assert isinstance(link, ShellyTopAcLink) and link.notifications > 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_unreachable_device_is_counted_backed_off_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    link = Esp32EvseLink("cp1", "127.0.0.1", _clock, port, poll_s=0.1, timeout_s=0.5)
    link.send(setpoint(10))
    for _ in range(5):
        assert not await link.exchange()
    status = link.status(_clock())
    assert status["online"] is False and status["last_seen_s"] is None and status["errors"] == 5
    assert status["error_counts"] == {"unreachable": 5}
    assert [r.levelname for r in caplog.records if r.name == "evpilot.links"] == ["WARNING"]
    # 0.1, 0.2, 0.4, 0.8 ... capped at 10 s
    assert link.next_delay() == pytest.approx(1.6)
    link.failures = 20
    assert link.next_delay() == 10
    await link.close()
