"""The SmartEVSE MQTT driver (`mqtt_prefix`) against evpilot's SmartEVSE topics on a real mosquitto."""

from __future__ import annotations

import asyncio

from evpilot.config import parse_mqtt_url
from evpilot.devices.base import Setpoint
from evpilot.devices.http_links import SmartEvseMqttLink
from evpilot.devices.netlink import LinkFault
from tests.integration.mqtt_helpers import Broker, mqtt_config, running, until

DEVICE = {
    "chargers": [{"id": "cp1", "max_current": 16}],
    "sim": {"pv_kwp": 0, "spike_rate_h": 0, "first_spike_s": None, "house_base": [1, 1, 1]},
}


def clock() -> float:
    return asyncio.get_running_loop().time()


async def test_mqtt_link_reads_the_topics_and_sets_override_and_mode(broker: Broker) -> None:
    config = mqtt_config(broker, DEVICE, smartevse={"serials": {"cp1": "1234"}})
    async with running(config, speed=20) as (rt, _bridge):
        link = SmartEvseMqttLink("ev", "SmartEVSE/1234", parse_mqtt_url(broker.url), clock, poll_s=0.1)
        task = asyncio.create_task(link.run())
        try:
            ch = rt.engine.chargers["cp1"]
            await until(lambda: link.online and link.latest() is not None, what="first reading")
            link.send(Setpoint(10, 3, float("inf"), 6))
            await until(lambda: ch.override == 10, what="override 10 A")
            await until(lambda: max(ch.currents) > 9, what="the car draws 10 A")
            await until(lambda: (r := link.latest()) is not None and r.state == "C" and max(r.currents) > 9)
            link.send(Setpoint(0, 3, float("inf"), 6))
            await until(lambda: not ch.enabled or rt.engine.mode_of(ch) == "off", what="mode off")
            await until(lambda: max(ch.currents) < 0.5, what="stopped")
            link.send(Setpoint(7.5, 3, float("inf"), 6))
            await until(lambda: ch.override == 7.5 and max(ch.currents) > 7, what="on again at 7.5 A")
            assert link.errors == {}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_mqtt_link_without_a_device_is_silent() -> None:
    link = SmartEvseMqttLink("ev", "SmartEVSE/1", (False, "127.0.0.1", 1, None, None), clock)
    assert not await link.exchange()
    assert link.errors == {LinkFault.UNREACHABLE: 1} and not link.online
    link.take("SmartEVSE/1/State", b"Charging")
    link.take("SmartEVSE/1/connected", b"offline")
    link.take("SmartEVSE/1/Set/Mode", b"Off")  # a command topic is not a reading
    assert "Set/Mode" not in link.values
