"""The MQTT facade against a real mosquitto broker: telemetry, commands, validation, reconnects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
import httpx

from evpilot.control.runtime import Runtime
from tests.helpers import serve
from tests.integration.mqtt_helpers import Broker, mqtt_config, recorder, running, until


def settings(rt: Runtime) -> dict[str, Any]:
    """Everything a command could change."""
    out: dict[str, Any] = {"site_mode": rt.engine.site.mode, "capacity": rt.engine.site.capacity_limit}
    out["battery"] = rt.engine.battery.current
    out["mains"] = rt.api_meter.latest()
    for cid, ch in rt.engine.chargers.items():
        out[cid] = (
            ch.enabled,
            ch.auto_charge,
            ch.user_limit,
            ch.override,
            ch.mode,
            ch.phase_mode,
            ch.energy_cap_kwh,
            ch.time_cap_min,
            ch.start_requested,
        )
    return out


async def test_state_published_on_change_retained_and_after_rest_commands(broker: Broker) -> None:
    config = mqtt_config(broker)
    async with recorder(broker.port, "evpilot/#") as (rec, _c), serve(config, speed=20) as (base, rt):
        await rec.wait_topic("evpilot/status", "online")
        await rec.wait_topic("evpilot/cp1/work_state", "charger_charging")
        doc = json.loads(await rec.wait_topic("evpilot/cp1/state"))
        assert doc["id"] == "cp1" and doc["state"] == "C2"
        await rec.wait(lambda: float(rec.text("evpilot/cp1/power") or 0) > 4000, what="power > 4 kW")
        await rec.wait_topic("evpilot/cp1/charging", "ON")
        site = json.loads(await rec.wait_topic("evpilot/site/state"))
        assert site["mode"] == "smart"
        await rec.wait(lambda: float(rec.text("evpilot/site/mains_l1") or 0) > 0, what="mains L1")
        # A change made through another API shows up on MQTT at once.
        async with httpx.AsyncClient(base_url=base) as http:
            r = await http.put("/api/chargers/cp1/current_limit", json={"current": 11.5})
            assert r.status_code == 200
        await rec.wait_topic("evpilot/cp1/current", "11.5")
        await rec.wait(lambda: rt.charger("cp1").signaled == 11.5, what="signaled 11.5")
        await rec.wait_topic("evpilot/cp1/signaled_current", "11.5")
    # A client that subscribes later gets the retained state and availability.
    async with recorder(broker.port, "evpilot/#") as (late, _c):
        await late.wait_topic("evpilot/cp1/current", "11.5")
        assert any(t == "evpilot/cp1/state" and retained for t, _p, retained in late.messages)
        # The clean shutdown above published `offline`.
        await late.wait_topic("evpilot/status", "offline")


async def test_native_commands_apply_and_publish_back(broker: Broker) -> None:
    config = mqtt_config(broker, {"chargers": [{"id": "cp1", "contactor2": "auto"}, {"id": "cp2"}]})
    async with running(config) as (rt, bridge), recorder(broker.port, "evpilot/#") as (rec, client):
        cases = [
            ("cp1/enabled/set", "OFF", "cp1/enabled", "OFF", lambda: not rt.charger("cp1").enabled),
            ("cp1/enabled/set", "on", "cp1/enabled", "ON", lambda: rt.charger("cp1").enabled),
            ("cp1/current/set", "12.5", "cp1/current", "12.5", lambda: rt.charger("cp1").user_limit == 12.5),
            ("cp1/current/set", "none", "cp1/current", "32", lambda: rt.charger("cp1").user_limit is None),
            ("cp1/mode/set", "solar", "cp1/mode", "solar", lambda: rt.charger("cp1").mode == "solar"),
            ("cp1/mode/set", "site", "cp1/mode", "site", lambda: rt.charger("cp1").mode is None),
            (
                "cp1/phases/set",
                "1",
                "cp1/phases",
                "always_1p",
                lambda: rt.charger("cp1").phase_mode == "always_1p",
            ),
            ("cp1/phases/set", "auto", "cp1/phases", "auto", lambda: rt.charger("cp1").phase_mode == "auto"),
            (
                "cp2/energy_cap/set",
                "5.5",
                "cp2/energy_cap",
                "5.5",
                lambda: rt.charger("cp2").energy_cap_kwh == 5.5,
            ),
            (
                "cp2/energy_cap/set",
                "0",
                "cp2/energy_cap",
                "0",
                lambda: rt.charger("cp2").energy_cap_kwh is None,
            ),
            ("cp2/time_cap/set", "90", "cp2/time_cap", "90", lambda: rt.charger("cp2").time_cap_min == 90),
            (
                "cp2/auto_charge/set",
                "false",
                "cp2/auto_charge",
                "OFF",
                lambda: not rt.charger("cp2").auto_charge,
            ),
            ("cp2/start/set", "PRESS", None, None, lambda: rt.charger("cp2").start_requested),
            ("cp2/stop/set", "PRESS", None, None, lambda: not rt.charger("cp2").start_requested),
            ("site/mode/set", "solar", "site/mode", "solar", lambda: rt.engine.site.mode == "solar"),
            (
                "site/capacity/set",
                "40",
                "site/capacity_limit",
                "40",
                lambda: rt.engine.site.capacity_limit == 40,
            ),
        ]
        for topic, payload, state_topic, value, check in cases:
            await client.publish(f"evpilot/{topic}", payload, qos=1)
            await until(check, what=f"{topic} {payload}")
            if state_topic is not None:
                await rec.wait_topic(f"evpilot/{state_topic}", value)
        assert bridge.rejected == 0
        assert bridge.accepted == len(cases)


MALFORMED = [
    ("evpilot/cp1/current/set", b"abc", "cp1", "not a number"),
    ("evpilot/cp1/current/set", b"", "cp1", "not a number"),
    ("evpilot/cp1/current/set", b"99", "cp1", "out of range"),
    ("evpilot/cp1/current/set", b"5.9", "cp1", "out of range"),
    ("evpilot/cp1/current/set", b"-7", "cp1", "out of range"),
    ("evpilot/cp1/current/set", b"nan", "cp1", "not a number"),
    ("evpilot/cp1/current/set", b"1e400", "cp1", "not a number"),
    ("evpilot/cp1/current/set", b"12.55", "cp1", "multiple of 0.1"),
    ("evpilot/cp1/current/set", b"1" * 300, "cp1", "too long"),
    ("evpilot/cp1/current/set", b"\xff\xfe12", "cp1", "not UTF-8"),
    ("evpilot/cp1/current/set", b"12\x00", "cp1", "control characters"),
    ("evpilot/cp1/enabled/set", b"maybe", "cp1", "not one of ON"),
    ("evpilot/cp1/mode/set", b"turbo", "cp1", "not one of"),
    ("evpilot/cp1/phases/set", b"2", "cp1", "not one of"),
    ("evpilot/cp1/energy_cap/set", b"1001", "cp1", "out of range"),
    ("evpilot/cp1/time_cap/set", b"-1", "cp1", "out of range"),
    ("evpilot/cp1/start/set", b"now please", "cp1", "payload must be"),
    ("evpilot/cp1/bogus/set", b"1", "cp1", "unknown command"),
    ("evpilot/nope/current/set", b"10", None, "no charger 'nope'"),
    ("evpilot/site/mode/set", b"fast", "site", "not one of"),
    ("evpilot/site/capacity/set", b"5", "site", "out of range"),
    ("evpilot/site/bogus/set", b"5", "site", "unknown site command"),
    ("SmartEVSE/cp1/Set/CurrentOverride", b"abc", "cp1", "not an integer"),
    ("SmartEVSE/cp1/Set/CurrentOverride", b"50", "cp1", "outside"),
    ("SmartEVSE/cp1/Set/CurrentOverride", b"330", "cp1", "outside"),
    ("SmartEVSE/cp1/Set/Mode", b"Turbo", "cp1", "not one of"),
    ("SmartEVSE/cp1/Set/Mode", b"smart", "cp1", "not one of"),
    ("SmartEVSE/cp1/Set/CurrentMaxSumMains", b"5", "cp1", "outside"),
    ("SmartEVSE/cp1/Set/MainsMeter", b"100:100", "cp1", "is not L1:L2:L3"),
    ("SmartEVSE/cp1/Set/MainsMeter", b"2000:0:0", "cp1", "outside"),
    ("SmartEVSE/cp1/Set/EVMeter", b"1:2:3", "cp1", "is not L1:L2:L3:W:Wh"),
    ("SmartEVSE/cp1/Set/EVMeter", b"60:60:1000:0:0", "cp1", "0..999"),
    ("SmartEVSE/cp1/Set/HomeBatteryCurrent", b"ten", "cp1", "not an integer"),
    ("SmartEVSE/cp1/Set/HomeBatteryCurrent", b"10001", "cp1", "out of range"),
    ("SmartEVSE/cp1/Set/EnableC2", b"7", "cp1", "outside 0-4"),
    ("SmartEVSE/cp1/Set/EnableC2", b"Sometimes", "cp1", "is not 0-4"),
    ("SmartEVSE/cp1/Set/ColorOff", b"1,2,3", "cp1", "not supported"),
    ("SmartEVSE/cp1/Set/Bogus", b"1", "cp1", "unknown SmartEVSE topic"),
    ("evse/current/set", b"abc", "cp1", "not a number"),
    ("evse/current/set", b"100", "cp1", "out of range"),
    ("evse/enabled/set", b"perhaps", "cp1", "not one of ON"),
    ("evse/reboot/set", b"1", "cp1", "unknown ESP32-EVSE command"),
]


async def test_malformed_payloads_are_refused_with_an_error_topic_and_change_nothing(broker: Broker) -> None:
    config = mqtt_config(broker, {"site": {"mains_meter": "api"}}, esp32evse={"cp1": "evse"})
    async with running(config) as (rt, bridge), recorder(broker.port, "evpilot/#") as (rec, client):
        bridge.refusal_window_s = 0.0  # every refusal gets its note here (no per-topic rate limit)
        before = settings(rt)
        for n, (topic, payload, cid, reason) in enumerate(MALFORMED, start=1):
            await client.publish(topic, payload, qos=1)
            await until(lambda n=n: bridge.rejected == n, what=f"rejection of {topic} {payload!r}")
            where = f"evpilot/{cid}/error" if cid else "evpilot/error"

            def has_reason(where: str = where, reason: str = reason, topic: str = topic) -> bool:
                text = rec.text(where)
                return (
                    text is not None
                    and reason in json.loads(text)["error"]
                    and json.loads(text)["topic"] == topic
                )

            await rec.wait(has_reason, what=f"{where} says {reason!r}")
        assert bridge.accepted == 0
        assert settings(rt) == before
        # The error notes are retained for whoever looks later.
        assert any(t == "evpilot/cp1/error" and r for t, _p, r in rec.messages) or rec.text(
            "evpilot/cp1/error"
        )
    async with recorder(broker.port, "evpilot/cp1/error") as (late, _c):
        note = json.loads(await late.wait_topic("evpilot/cp1/error"))
        assert note["topic"] == "evse/reboot/set"


async def test_burst_of_1000_commands_leaves_the_last_valid_one(broker: Broker) -> None:
    config = mqtt_config(broker)
    async with running(config) as (rt, bridge), recorder(broker.port, "evpilot/cp1/current") as (rec, client):
        payloads = [f"{6 + (i % 250) / 10:.1f}" for i in range(997)] + ["16.7", "abc", "99"]
        await asyncio.gather(*(client.publish("evpilot/cp1/current/set", p, qos=1) for p in payloads))
        await until(lambda: bridge.accepted + bridge.rejected == 1000, timeout=60, what="1000 commands")
        assert bridge.rejected == 2
        assert rt.charger("cp1").user_limit == 16.7
        await rec.wait_topic("evpilot/cp1/current", "16.7")


async def test_reconnect_after_broker_restart_loses_no_command(broker: Broker) -> None:
    # A long first backoff: the commands below reach the broker while evpilot is still away.
    config = mqtt_config(broker, reconnect_min_s=2.0)
    async with running(config) as (rt, bridge):
        assert bridge.connects == 1
        broker.stop()
        await until(lambda: not bridge.connected.is_set(), what="the bridge noticing the broker is gone")
        broker.start()
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-commander") as client:
            queued = not bridge.connected.is_set()
            await client.publish("evpilot/cp1/current/set", "13.3", qos=1)
            await client.publish("evpilot/cp1/mode/set", "solar", qos=1)
            await client.publish("SmartEVSE/cp1/Set/CurrentOverride", "140", qos=1)
        assert queued, "evpilot reconnected before the commands were sent; the test proves nothing"
        await asyncio.wait_for(bridge.connected.wait(), 30)
        ch = rt.charger("cp1")
        await until(
            lambda: ch.user_limit == 13.3 and ch.mode == "solar" and ch.override == 14.0, what="queued"
        )
        assert bridge.connects == 2
        # Subscriptions and retained state are back: a live command round-trips.
        async with recorder(broker.port, "evpilot/#") as (rec, client):
            await rec.wait_topic("evpilot/status", "online")
            await rec.wait_topic("evpilot/cp1/mode", "solar")
            await client.publish("evpilot/cp1/current/set", "8.8", qos=1)
            await rec.wait_topic("evpilot/cp1/current", "8.8")


async def test_periodic_refresh_republishes_unchanged_values(broker: Broker) -> None:
    config = mqtt_config(broker, refresh_s=1)
    async with running(config, speed=1), recorder(broker.port, "evpilot/cp1/phases") as (rec, _c):
        # `phases` never changes here: a live (non-retained) copy can only come from the refresh.
        await rec.wait(lambda: any(not r for _t, _p, r in rec.messages), 10, "a refreshed copy")
