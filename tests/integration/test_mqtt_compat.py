"""SmartEVSE- and ESP32-EVSE-compatible MQTT topics, driven by the seeds' own command lines."""

from __future__ import annotations

import asyncio
import json
import shlex

import httpx
import pytest

from evpilot.api.app import create_app
from evpilot.config import ConfigError, parse_config
from tests.integration.mqtt_helpers import Broker, mosquitto_client, mqtt_config, recorder, running, until

# Seed 001, verbatim.
SEED_SUB = "mosquitto_sub -v -h ip-of-mosquitto-server -u username -P password  -t '#'"
SEED_OVERRIDE = (
    "mosquitto_pub  -h ip-of-mosquitto-server -u username -P password"
    " -t 'SmartEVSE-xxxxx/Set/CurrentOverride' -m 150"
)
SEED_MAINS = (
    "mosquitto_pub  -h ip-of-mosquitto-server -u username -P password"
    " -t 'SmartEVSE-xxxxx/Set/MainsMeter' -m L1:L2:L3"
)


def seed_line(line: str, port: int, **replace: str) -> list[str]:
    """A seed command line pointed at the test broker, with placeholders filled in."""
    for old, new in replace.items():
        line = line.replace(old, new)
    args = shlex.split(line.replace("ip-of-mosquitto-server", "127.0.0.1"))
    return [mosquitto_client(args[0]), "-p", str(port), *args[1:]]


async def run(args: list[str]) -> str:
    """Run a client binary to completion; returns its stdout."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode in (0, 27), f"{args[0]} failed ({proc.returncode}): {err.decode()}"
    return out.decode()


async def pub(port: int, topic: str, payload: str) -> None:
    """mosquitto_pub one message (QoS 0, like the seed's examples)."""
    await run(
        [mosquitto_client("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-m", payload]
    )


async def test_smartevse_seed_commands_and_topics(broker: Broker) -> None:
    config = mqtt_config(
        broker,
        {"site": {"mains_meter": "api"}},
        smartevse={"prefix": "SmartEVSE-{serial}", "serials": {"cp1": "xxxxx"}},
        # Like the firmware, unchanging values such as NrOfPhases are not retained: a refresh resends them.
        refresh_s=2,
    )
    se = "SmartEVSE-xxxxx"
    async with (
        running(config, speed=20) as (rt, bridge),
        recorder(broker.port, f"{se}/#", "evpilot/#") as (rec, _c),
    ):
        ch = rt.charger("cp1")
        await rec.wait_topic(f"{se}/connected", "online")
        await rec.wait_topic(f"{se}/MaxCurrent", "320")
        await rec.wait_topic(f"{se}/Access", "Allow")

        await run(seed_line(SEED_OVERRIDE, broker.port))
        await until(lambda: ch.override == 15.0, what="override 15.0 A")
        await rec.wait_topic(f"{se}/ChargeCurrentOverride", "150")

        await run(seed_line(SEED_MAINS, broker.port, **{"L1:L2:L3": "100:120:80"}))
        await until(lambda: rt.api_meter.latest() is not None, what="the API mains reading")
        reading = rt.api_meter.latest()
        assert reading is not None and reading.currents == (10.0, 12.0, 8.0)
        await rec.wait_topic(f"{se}/MainsCurrentL2", "120")
        await rec.wait_topic("evpilot/site/fallback", "OFF")
        # No new reading within 11 s (simulated; speed 20): the site falls back, SmartEVSE says so.
        await rec.wait_topic("evpilot/site/fallback", "ON")
        await rec.wait_topic(f"{se}/Error", "Communication Error")

        for payload, mode, enabled, shown in [
            ("Solar", "solar", True, "Solar"),
            ("Off", "solar", False, "Off"),
            ("Normal", "normal", True, "Normal"),
        ]:
            await pub(broker.port, f"{se}/Set/Mode", payload)
            await until(lambda m=mode, e=enabled: ch.mode == m and ch.enabled == e, what=f"Mode {payload}")
            await rec.wait_topic(f"{se}/Mode", shown)
        await rec.wait_topic(f"{se}/Access", "Allow")

        await pub(broker.port, f"{se}/Set/EnableC2", "Always Off")
        await until(lambda: ch.phase_mode == "always_1p", what="EnableC2 Always Off")
        await rec.wait_topic(f"{se}/EnableC2", "Always Off")
        await pub(broker.port, f"{se}/Set/EnableC2", "3")
        await rec.wait_topic(f"{se}/EnableC2", "Always On")
        assert ch.phase_mode == "always_3p"

        # dA, as on the firmware (one dA variable behind this topic and REST `battery_current`).
        await pub(broker.port, f"{se}/Set/HomeBatteryCurrent", "100")
        await until(lambda: rt.engine.battery.current == 10, what="home battery 10 A")
        await rec.wait_topic(f"{se}/HomeBatteryCurrent", "100")

        await pub(broker.port, f"{se}/Set/CurrentMaxSumMains", "100")
        await until(lambda: rt.engine.site.capacity_limit == 100, what="capacity 100 A")
        await pub(broker.port, f"{se}/Set/CurrentMaxSumMains", "0")
        await until(lambda: rt.engine.site.capacity_limit is None, what="capacity off")

        lifetime = ch.lifetime_kwh
        await pub(broker.port, f"{se}/Set/EVMeter", "60:61:62:4140:123456")
        await until(lambda: ch.currents == (6.0, 6.1, 6.2), what="EV meter currents")
        await rec.wait_topic(f"{se}/EVCurrentL3", "62")
        # Switching to the API meter must not count its whole counter as charged energy.
        assert ch.lifetime_kwh - lifetime < 0.5
        after = ch.lifetime_kwh
        # 20 Wh more after at least 4 s of clock time: plausible at MAX (a jump beyond is refused).
        await asyncio.sleep(0.2)
        await pub(broker.port, f"{se}/Set/EVMeter", "60:61:62:4140:123476")
        await until(lambda: ch.lifetime_kwh - after >= 0.0199, what="20 Wh more from the EV meter")
        assert ch.lifetime_kwh - after < 0.5

        assert await rec.wait_topic(f"{se}/NrOfPhases") in ("1", "3")
        assert rec.text(f"{se}/State") in (
            "Ready to Charge",
            "Connected to EV",
            "Charging",
            "Charging Stopped",
            "Stop Charging",
            "D",
        )
        assert bridge.rejected == 0

        # The seed's mosquitto_sub line shows every topic.
        shown = await run([*seed_line(SEED_SUB, broker.port), "-W", "2"])
        lines = [ln.split(" ", 1)[0] for ln in shown.splitlines()]
        assert f"{se}/Mode" in lines and f"{se}/ChargeCurrentOverride" in lines


async def test_smartevse_default_prefix(broker: Broker) -> None:
    config = mqtt_config(
        broker, {"chargers": [{"id": "cp1"}, {"id": "cp2"}]}, smartevse={"serials": {"cp2": "1234"}}
    )
    async with running(config) as (rt, _bridge), recorder(broker.port, "SmartEVSE/#") as (rec, _c):
        await rec.wait_topic("SmartEVSE/cp1/Mode", "Smart")
        await rec.wait_topic("SmartEVSE/1234/Mode", "Smart")
        await pub(broker.port, "SmartEVSE/1234/Set/CurrentOverride", "100")
        await until(lambda: rt.charger("cp2").override == 10.0, what="cp2 override")
        assert rt.charger("cp1").override is None


async def test_esp32evse_bridge_contract(broker: Broker) -> None:
    config = mqtt_config(broker, esp32evse={"cp1": "Garage1"})
    assert config.mqtt.esp32evse == {"cp1": "garage1"}
    async with running(config) as (rt, _bridge), recorder(broker.port, "garage1/#") as (rec, _c):
        ch = rt.charger("cp1")
        doc = json.loads(await rec.wait_topic("garage1/state"))
        assert set(doc) == {
            "state",
            "charging",
            "enabled",
            "error",
            "power",
            "current",
            "session_energy",
            "temperature",
        }
        assert doc["state"] in ("A", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F")
        assert isinstance(doc["charging"], bool) and isinstance(doc["error"], bool)
        await pub(broker.port, "garage1/enabled/set", "off")
        await until(lambda: not ch.enabled, what="disabled")
        await rec.wait(lambda: json.loads(rec.text("garage1/state") or "{}").get("enabled") is False)
        await pub(broker.port, "garage1/enabled/set", "ON")
        await until(lambda: ch.enabled, what="enabled")
        await pub(broker.port, "garage1/current/set", "12.34")
        await until(lambda: ch.user_limit == 12.3, what="12.3 A")
        await rec.wait(lambda: json.loads(rec.text("garage1/state") or "{}").get("current") == 12.3)
    # The state document is retained.
    async with recorder(broker.port, "garage1/state") as (late, _c):
        await late.wait(
            lambda: any(t == "garage1/state" and r for t, _p, r in late.messages), what="retained"
        )


@pytest.mark.parametrize("ident", ["my-evse", "evse 1", "evse.1", "", "évse"])
def test_esp32evse_identifier_is_validated_like_the_seed(ident: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"mqtt": {"url": "mqtt://127.0.0.1", "esp32evse": {"cp1": ident}}})
    assert "a-z and 0-9" in str(err.value)


def test_mqtt_config_errors_name_the_key() -> None:
    bad = [
        ({"url": "http://broker"}, "mqtt:// or mqtts://"),
        ({"url": "mqtt://:1883"}, "no host"),
        ({"url": "mqtt://host:99999"}, "port"),
        ({"url": "mqtt://h", "topic_prefix": "a/#"}, "topic_prefix"),
        ({"url": "mqtt://h", "esp32evse": {"cp9": "evse"}}, "unknown charger"),
        ({"url": "mqtt://h", "smartevse": {"prefix": "SmartEVSE"}}, "{serial}"),
    ]
    for mqtt, expected in bad:
        with pytest.raises(ConfigError) as err:
            parse_config({"mqtt": mqtt})
        assert expected in str(err.value), (mqtt, str(err.value))
    ok = parse_config({"mqtt": {"url": "mqtts://user:p%40ss@broker.lan"}})
    assert ok.mqtt.url is not None


@pytest.mark.parametrize(("sent", "kept"), [("7.56", 7.6), ("7.55", 7.6), ("7.54", 7.5), ("12.34", 12.3)])
async def test_esp32evse_current_is_rounded_alike_over_rest_and_mqtt(
    broker: Broker, sent: str, kept: float
) -> None:
    config = mqtt_config(broker, {"chargers": [{"id": "cp1"}, {"id": "cp2"}]}, esp32evse={"cp2": "evse2"})
    async with running(config) as (rt, _bridge):
        transport = httpx.ASGITransport(app=create_app(rt, manage_runtime=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            r = await c.post("/chargers/cp1/api/v1/state/charging-current", json=float(sent))
            assert r.status_code == 200, r.text
        await pub(broker.port, "evse2/current/set", sent)
        await until(lambda: rt.charger("cp2").user_limit is not None, what="the MQTT current")
        assert rt.charger("cp1").user_limit == rt.charger("cp2").user_limit == kept
