"""One SmartEVSE vocabulary: `/settings` (REST) and the SmartEVSE MQTT topics say the same thing."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from evpilot.api.app import create_app
from evpilot.api.mqtt import MqttBridge
from evpilot.api.smartevse import settings_doc
from evpilot.control.runtime import Runtime
from evpilot.core import sources
from evpilot.core.charger import ErrorFlag
from tests.integration.mqtt_helpers import Broker, mqtt_config, recorder, running, until
from tests.integration.test_mqtt_compat import pub

SE1, SE2 = "SmartEVSE/1001", "SmartEVSE/1002"


@asynccontextmanager
async def both(
    broker: Broker, extra: dict[str, object] | None = None
) -> AsyncIterator[tuple[Runtime, MqttBridge, httpx.AsyncClient]]:
    """Two chargers behind one runtime, spoken to over MQTT and over REST."""
    data: dict[str, object] = {"chargers": [{"id": "cp1"}, {"id": "cp2"}], **(extra or {})}
    config = mqtt_config(broker, data, smartevse={"serials": {"cp1": "1001", "cp2": "1002"}})
    async with running(config, speed=1) as (rt, bridge):
        transport = httpx.ASGITransport(app=create_app(rt, manage_runtime=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield rt, bridge, c


def mqtt_view(bridge: MqttBridge, cid: str) -> dict[str, str]:
    """What the SmartEVSE topics of `cid` would carry now, by topic leaf."""
    rt = bridge.rt
    site = rt.site_view()
    outs = bridge.smartevse.render(rt.charger_view(cid), site, rt.clock.now()) + bridge.smartevse.render_site(
        site
    )
    return {o.topic.rsplit("/", 1)[1]: o.payload for o in outs}


@pytest.mark.parametrize(
    ("letter", "signaled", "state_id", "state"),
    [
        ("B", 0.0, 9, "Charging Stopped"),
        ("B", 16.0, 1, "Connected to EV"),
        ("C", 0.0, 10, "Stop Charging"),
        ("C", 16.0, 2, "Charging"),
        ("D", 0.0, 10, "Stop Charging"),
        ("D", 16.0, 3, "D"),
    ],
)
async def test_state_names_are_the_firmwares_on_both(
    broker: Broker, letter: str, signaled: float, state_id: int, state: str
) -> None:
    async with both(broker) as (rt, bridge, _c):
        ch = rt.charger("cp1")
        ch.letter, ch.signaled, ch.commanded = letter, signaled, signaled
        evse = settings_doc(rt, "cp1")["evse"]
        assert (evse["state_id"], evse["state"]) == (state_id, state)
        assert mqtt_view(bridge, "cp1")["State"] == state


async def test_waiting_for_solar_and_errors_read_the_same(broker: Broker) -> None:
    async with both(broker) as (rt, bridge, _c):
        ch = rt.charger("cp1")
        ch.letter, ch.signaled, ch.commanded, ch.allocation_source = "B", 0.0, 0.0, sources.SOLAR
        evse = settings_doc(rt, "cp1")["evse"]
        waiting = ("Charging Stopped - Waiting for Solar", "None", 0)
        assert (evse["state"], evse["error"], evse["error_id"]) == waiting
        view = mqtt_view(bridge, "cp1")
        assert (view["State"], view["Error"]) == (evse["state"], evse["error"])

        # Each source maps to the firmware's own code: the solar budget (however fed) is NO_SUN, a
        # stale meter's fallback CT_NOCOMM, a fuse, cap or shortage LESS_6A.
        codes = {
            sources.IMPORT: (waiting[0], "None"),
            sources.BATTERY: (waiting[0], "None"),
            sources.stale("garage"): ("Charging Stopped", "Communication Error"),
            sources.FALLBACK: ("Charging Stopped", "Communication Error"),
            sources.circuit("garage"): ("Charging Stopped", "No Power Available"),
            sources.site("user"): ("Charging Stopped", "No Power Available"),
            sources.SHORTAGE: ("Charging Stopped", "No Power Available"),
        }
        for source, (state, error) in codes.items():
            ch.allocation_source = source
            evse = settings_doc(rt, "cp1")["evse"]
            assert (evse["state"], evse["error"]) == (state, error), source
            view = mqtt_view(bridge, "cp1")
            assert (view["State"], view["Error"]) == (state, error), source

        ch.allocation_source = sources.circuit("garage")

        ch.errors = ch.errors | {ErrorFlag.TEMPERATURE_HIGH, ErrorFlag.RCM_TRIGGERED}
        evse = settings_doc(rt, "cp1")["evse"]
        assert (evse["error"], evse["error_id"]) == ("RCM Tripped", 5)
        assert mqtt_view(bridge, "cp1")["Error"] == "RCM Tripped"


async def test_fallback_is_a_communication_error_on_both(broker: Broker) -> None:
    # An API mains meter never fed: the site runs on its fallback currents.
    async with both(broker, {"site": {"mains_meter": "api"}}) as (rt, bridge, c):
        await until(lambda: rt.engine.last is not None and rt.engine.last.fallback, what="fallback")
        evse = (await c.get("/settings")).json()["evse"]
        assert (evse["error"], evse["error_id"]) == ("Communication Error", 2)
        assert mqtt_view(bridge, "cp1")["Error"] == "Communication Error"


async def test_solar_stop_timer_and_loadbl_match(broker: Broker) -> None:
    async with both(broker) as (rt, bridge, c):
        memos = rt.engine.state.chargers
        await until(lambda: "cp2" in memos, what="the controller's memo of cp2")
        stop_s = rt.engine.site.solar.stop_min * 60
        memos["cp2"] = dataclasses.replace(memos["cp2"], solar_short_since=rt.clock.now() - 60)
        doc = settings_doc(rt, "cp2")
        view = mqtt_view(bridge, "cp2")
        assert stop_s - 62 <= doc["evse"]["solar_stop_timer"] <= stop_s - 60
        assert int(view["SolarStopTimer"]) == doc["evse"]["solar_stop_timer"]
        for cid, role in (("cp1", 1), ("cp2", 2)):
            assert (await c.get(f"/chargers/{cid}/settings")).json()["evse"]["loadbl"] == role
            assert mqtt_view(bridge, cid)["LoadBl"] == str(role)


async def test_home_battery_current_is_dA_on_both(broker: Broker) -> None:
    async with both(broker) as (rt, _bridge, c), recorder(broker.port, f"{SE1}/#") as (rec, _r):
        r = await c.post("/currents?battery_current=-25")
        assert r.status_code == 200 and r.json()["battery_current"] == -25
        assert rt.engine.battery.current == -2.5
        await rec.wait_topic(f"{SE1}/HomeBatteryCurrent", "-25")

        await pub(broker.port, f"{SE1}/Set/HomeBatteryCurrent", "40")
        await until(lambda: rt.engine.battery.current == 4.0, what="4.0 A from 40 dA")
        assert (await c.get("/settings")).json()["home_battery"]["current"] == 40
        await rec.wait_topic(f"{SE1}/HomeBatteryCurrent", "40")


@pytest.mark.parametrize(
    ("rest", "mqtt", "cleared"), [(1, "Normal", False), (2, "Solar", True), (3, "Smart", True)]
)
async def test_a_mode_change_treats_the_override_alike(
    broker: Broker, rest: int, mqtt: str, cleared: bool
) -> None:
    async with both(broker) as (rt, _bridge, c):
        cp1, cp2 = rt.charger("cp1"), rt.charger("cp2")
        for cid in ("cp1", "cp2"):
            r = await c.post(f"/chargers/{cid}/settings?mode=1&override_current=100")
            assert r.status_code == 200, r.text
        assert cp1.override == cp2.override == 10.0
        r = await c.post(f"/chargers/cp1/settings?mode={rest}")
        assert r.status_code == 200, r.text
        await pub(broker.port, f"{SE2}/Set/Mode", mqtt)
        await until(lambda: cp2.mode == cp1.mode, what=f"cp2 in {mqtt}")
        assert cp1.override == cp2.override == (None if cleared else 10.0)
