"""ThingsBoard (seed 004): telemetry with exactly the seed's fields, and RPC, against mosquitto."""

from __future__ import annotations

import json
from typing import Any

import pytest

from evpilot.api.thingsboard import ThingsBoardDevice
from evpilot.config import ConfigError, parse_config
from evpilot.control.clock import ScaledClock
from evpilot.control.runtime import Runtime
from tests.helpers import make_config, serve
from tests.integration.mqtt_helpers import Broker, recorder, until

SEED_FIELDS = {
    "session",
    "charging",
    "enabled",
    "available",
    "error",
    "consumption",
    "power",
    "temperature",
    "uptime",
    "currentL1",
    "currentL2",
    "currentL3",
    "voltageL1",
    "voltageL2",
    "voltageL3",
}


def config(broker: Broker, interval_s: float = 1) -> dict[str, Any]:
    board = {"url": broker.url, "token": "A1_TEST_TOKEN", "interval_s": interval_s}
    return {
        "chargers": [{"id": "cp1", "max_current": 16, "thingsboard": board}, {"id": "cp2"}],
        "sim": {"pv_kwp": 0, "spike_rate_h": 0, "first_spike_s": None},
    }


async def test_telemetry_carries_exactly_the_seed_fields(broker: Broker) -> None:
    cfg = make_config(config(broker))
    async with (
        recorder(broker.port, "v1/devices/me/telemetry") as (rec, _client),
        serve(cfg, speed=20) as (_, rt),
    ):
        await rec.wait(lambda: len(rec.messages) >= 2, what="two telemetry messages")
        doc = json.loads(rec.messages[-1][1])
        assert set(doc) == SEED_FIELDS
        d = rt.charger_doc("cp1")
        assert doc["enabled"] is True and doc["available"] is True and doc["error"] is False
        assert isinstance(doc["consumption"], int) and isinstance(doc["power"], int)
        assert doc["session"] is (d["state"][0] in "BCD")
        assert all(isinstance(doc[f"voltageL{i}"], float) for i in (1, 2, 3))


async def rpc(rec: Any, client: Any, request_id: int, request: object) -> dict[str, Any]:
    topic = f"v1/devices/me/rpc/response/{request_id}"
    payload = request if isinstance(request, bytes) else json.dumps(request).encode()
    await client.publish(f"v1/devices/me/rpc/request/{request_id}", payload, qos=1)
    await rec.wait(lambda: rec.text(topic) is not None, what=topic)
    doc: dict[str, Any] = json.loads(rec.text(topic))
    return doc


async def test_rpc_methods_answer_and_bad_requests_change_nothing(broker: Broker) -> None:
    async with recorder(broker.port, "v1/devices/me/rpc/response/+") as (rec, client):
        cfg = make_config(config(broker, interval_s=60))
        rt = Runtime(cfg, ScaledClock(20))
        await rt.start()
        board = cfg.chargers[0].thingsboard
        assert board is not None
        device = ThingsBoardDevice(rt, "cp1", board)
        await device.start()
        try:
            await until(device.connected.is_set, what="connected")
            ch = rt.engine.chargers["cp1"]
            assert await rpc(rec, client, 1, {"method": "getEnabled", "params": {}}) == {"value": True}
            assert await rpc(rec, client, 2, {"method": "getChargingCurrent", "params": {}}) == {"value": 16}
            assert await rpc(rec, client, 3, {"method": "setChargingCurrent", "params": 10.46}) == {
                "value": 10.5
            }
            assert ch.user_limit == 10.5
            assert await rpc(rec, client, 4, {"method": "getChargingCurrent"}) == {"value": 10.5}
            assert await rpc(rec, client, 5, {"method": "setEnabled", "params": False}) == {"value": False}
            assert ch.enabled is False
            assert [(c["origin"], c["command"]) for c in rt.recent_commands] == [
                ("thingsboard", "set_user_limit"),
                ("thingsboard", "set_enabled"),
            ]
            assert await rpc(rec, client, 6, {"method": "getEnabled"}) == {"value": False}
            # Bad params, unknown methods and garbage: an error response, nothing changed.
            for i, request in enumerate(
                [
                    {"method": "setChargingCurrent", "params": "ten"},
                    {"method": "setChargingCurrent", "params": 99},
                    {"method": "setChargingCurrent", "params": 3},
                    {"method": "setChargingCurrent", "params": True},
                    {"method": "setEnabled", "params": "yes"},
                    {"method": "setEnabled"},
                    {"method": "reboot", "params": {}},
                    {"params": 1},
                    b"not json",
                ],
                start=10,
            ):
                answer = await rpc(rec, client, i, request)
                assert set(answer) == {"error"} and answer["error"], (request, answer)
            assert ch.user_limit == 10.5 and ch.enabled is False
            assert "unknown method 'reboot'" in (await rpc(rec, client, 30, {"method": "reboot"}))["error"]
            # The seed's setEnabled takes the bare value; {"value": ...} is accepted too.
            assert await rpc(rec, client, 31, {"method": "setEnabled", "params": {"value": True}}) == {
                "value": True
            }
            assert ch.enabled is True
            assert rt.engine.chargers["cp2"].user_limit is None  # the other charger is not this device
            assert device.answered == 17
        finally:
            await device.stop()
            await rt.stop()


@pytest.mark.parametrize(
    ("board", "key", "fragment"),
    [
        ({"url": "http://tb:1883", "token": "t"}, "chargers.0.thingsboard.url", "mqtt:// or mqtts://"),
        ({"url": "mqtt://u:p@tb:1883", "token": "t"}, "chargers.0.thingsboard.url", "no user or password"),
        ({"url": "mqtt://tb:1883", "token": ""}, "chargers.0.thingsboard.token", "String should have"),
        ({"url": "mqtt://tb:1883", "token": "a b"}, "chargers.0.thingsboard.token", "String should match"),
        (
            {"url": "mqtt://tb:1883", "token": "t", "interval_s": 0},
            "chargers.0.thingsboard.interval_s",
            "Input",
        ),
        ({"url": "mqtt://tb:1883"}, "chargers.0.thingsboard.token", "Field required"),
    ],
)
def test_thingsboard_config_refusals(board: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"chargers": [{"id": "cp1", "thingsboard": board}]})
    assert any(k == key and fragment in m for k, m in info.value.errors), info.value.errors
