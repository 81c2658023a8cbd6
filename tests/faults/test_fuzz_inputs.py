"""The fuzz payloads that broke evpilot: each gets the API's own error, changes nothing, kills nothing."""

from __future__ import annotations

import json
from typing import Any

import aiomqtt
import httpx
import pytest
import websockets

from evpilot import inputs
from evpilot.control.runtime import Runtime
from tests.helpers import make_config, serve
from tests.integration.conftest import broker  # noqa: F401 - the fixture
from tests.integration.mqtt_helpers import Broker, mqtt_config, recorder, running, until

DEEP = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"a":' * 5000 + "1" + "}" * 5000


def settled(rt: Runtime) -> tuple[Any, ...]:
    """What a refused command must leave as it was."""
    ch = rt.charger("cp1")
    return (ch.user_limit, ch.enabled, ch.mode, ch.phase_mode, rt.engine.site.mode, rt.api_meter.latest())


@pytest.mark.parametrize(
    "text",
    ["1_0", "٣", "１２", "0x10", " 5", "5 ", "5\n", "nan", "inf", "Infinity", "1e308", "1e400", "", "+"],
)
def test_the_number_parser_refuses_everything_but_ascii_decimals(text: str) -> None:
    for case in (text, "1" * 41, "1\u00a0", "\u20035", "1\u2028"):
        with pytest.raises(inputs.NumberError):
            inputs.parse_float(case)
        with pytest.raises(inputs.NumberError):
            inputs.parse_int(case)


def test_negative_zero_is_refused_as_an_integer_and_read_as_zero_as_a_decimal() -> None:
    with pytest.raises(inputs.NumberError):
        inputs.parse_int("-0")
    for text in ("-0", "-0.0", "-0e3"):
        value = inputs.parse_float(text)
        assert value == 0.0 and str(value) == "0.0"
    assert inputs.parse_int("+16") == 16 and inputs.parse_float("-.5e1") == -5.0


@pytest.mark.parametrize(
    "doc", ["NaN", "[Infinity]", '{"a": -Infinity}', "1e400", "-1" + "0" * 400, DEEP, DEEP_OBJECT, b"\xff"]
)
def test_the_json_reader_refuses_non_finite_huge_and_deep_documents(doc: str | bytes) -> None:
    with pytest.raises(inputs.JsonError):
        inputs.read_json(doc)


def test_the_json_reader_counts_depth_outside_strings_only() -> None:
    doc = {"s": "[" * 5000, "n": [[[1]]]}
    assert inputs.read_json(json.dumps(doc)) == doc


# ---- MQTT: a real broker ----------------------------------------------------------------------------


async def test_mqtt_overflowing_and_foreign_numbers_are_refused_and_the_bridge_lives_on(
    broker: Broker,  # noqa: F811
) -> None:
    config = mqtt_config(
        broker,
        {"site": {"mains_meter": "api"}},
        esp32evse={"cp1": "evse"},
        smartevse={"prefix": "SmartEVSE-{serial}", "serials": {"cp1": "xxxxx"}},
    )
    bad = [
        ("evse/current/set", "1e308"),  # ended the bridge with OverflowError
        ("evse/current/set", "-1e308"),
        ("evse/current/set", "1e400"),
        ("evpilot/cp1/current/set", "١٢"),
        ("evpilot/cp1/current/set", "１２"),
        ("evpilot/cp1/current/set", "1_6"),
        ("evpilot/cp1/energy_cap/set", "Infinity"),
        ("SmartEVSE-xxxxx/Set/CurrentOverride", "-0"),
        ("SmartEVSE-xxxxx/Set/EnableC2", "²"),  # str.isdigit() but not int(): a ValueError
        ("SmartEVSE-xxxxx/Set/EnableC2", "٣"),
        ("SmartEVSE-xxxxx/Set/MainsMeter", "١٠:0:0"),
        ("SmartEVSE-xxxxx/Set/HomeBatteryCurrent", "9" * 30),
    ]
    async with (
        running(config) as (rt, bridge),
        recorder(broker.port, "evpilot/cp1/error") as (rec, client),
    ):
        bridge.refusal_window_s = 0.0  # a note per refusal here (no per-topic rate limit)
        before = settled(rt)
        for topic, payload in bad:
            await client.publish(topic, payload.encode(), qos=1)
        await until(lambda: bridge.rejected >= len(bad), what=f"{len(bad)} refusals (got {bridge.rejected})")
        assert settled(rt) == before
        notes = lambda: [json.loads(p) for t, p, _r in rec.messages if t == "evpilot/cp1/error"]  # noqa: E731
        await rec.wait(lambda: len(notes()) >= len(bad), what="an error note per refusal")
        assert {n["topic"] for n in notes()} == {t for t, _p in bad}
        # The bridge still takes commands.
        await client.publish("evse/current/set", b"12", qos=1)
        await until(lambda: rt.charger("cp1").user_limit == 12.0, what="12 A after the fuzz")
        assert bridge.accepted >= 1


async def test_mqtt_1e308_is_named_in_the_error_topic(broker: Broker) -> None:  # noqa: F811
    config = mqtt_config(broker, esp32evse={"cp1": "evse"})
    async with running(config) as (rt, _bridge), recorder(broker.port, "evpilot/cp1/error") as (rec, _c):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="fuzz-1e308") as client:
            await client.publish("evse/current/set", b"1e308", qos=1)
        note = json.loads(await rec.wait_topic("evpilot/cp1/error"))
        assert note["payload"] == "1e308" and "not a number in range" in note["error"]
        assert rt.charger("cp1").user_limit is None


# ---- HTTP facades -----------------------------------------------------------------------------------


async def test_shelly_nan_and_infinite_frame_ids_get_a_shelly_error() -> None:
    async with serve(make_config(), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        for ident in ("NaN", "Infinity", "-Infinity", "1e400"):
            frame = '{"id": ' + ident + ', "src": "fuzz", "method": "Shelly.GetDeviceInfo"}'
            for path in ("/rpc", "/chargers/cp1/rpc"):
                r = await c.post(path, content=frame, headers={"content-type": "application/json"})
                assert r.status_code == 400, (path, ident, r.text)
                assert r.json()["error"]["code"] == -103 and r.json()["id"] is None
            # Set through GET with a non-finite value: refused, nothing set.
            r = await c.get("/rpc/Number.Set", params={"id": "200", "value": ident})
            assert r.status_code == 400 and r.json()["code"] == -103
        assert rt.charger("cp1").user_limit is None


@pytest.mark.parametrize(
    ("method", "path", "body", "convention"),
    [
        ("POST", "/rpc", '{"id": 1, "method": "Shelly.GetStatus", "params": ' + DEEP + "}", "shelly-frame"),
        ("POST", "/rpc/Shelly.GetStatus", DEEP_OBJECT, "shelly"),
        ("POST", "/chargers/cp1/rpc/Number.Set", '{"id": 200, "value": ' + DEEP + "}", "shelly"),
        ("POST", "/api/v1/state", DEEP_OBJECT, "esp32"),
        ("POST", "/api/v1/state/charging-current", DEEP, "esp32"),
        ("POST", "/api/v1/state", '{"chargingCurrent": 1e400}', "esp32"),
        ("POST", "/api/v1/state", '{"chargingCurrent": ' + "9" * 400 + "}", "esp32"),
        ("PUT", "/api/v1/limits", '{"amperageLimit": ' + DEEP + "}", "secc"),
        ("PUT", "/api/v1/limits", '{"amperageLimit": NaN}', "secc"),
        ("PUT", "/api/meters/mains", '{"currents": ' + DEEP + "}", "native"),
        ("PUT", "/api/chargers/cp1/current_limit", '{"current": 1e400}', "native"),
        ("PUT", "/api/chargers/cp1/current_limit", '{"current": Infinity}', "native"),
    ],
)
async def test_deep_non_finite_and_huge_json_gets_each_apis_own_error(
    method: str, path: str, body: str, convention: str
) -> None:
    config = make_config({"site": {"mains_meter": "api"}})
    async with serve(config, speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        before = settled(rt)
        r = await c.request(method, path, content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
        if convention == "shelly-frame":
            assert r.json()["error"]["code"] == -103
        elif convention == "shelly":
            assert r.json()["code"] == -103
        elif convention == "esp32":
            assert r.headers["content-type"].startswith("text/plain")
        elif convention == "secc":
            assert r.json()["error"] == "invalid"
        else:
            assert r.status_code == 422 and r.json()["error"] == "invalid"
        assert settled(rt) == before
        assert (await c.get("/api/site")).status_code == 200


async def test_deep_and_nan_shelly_websocket_frames_get_error_frames() -> None:
    async with serve(make_config(), speed=10) as (base, rt):
        url = base.replace("http://", "ws://") + "/rpc"
        async with websockets.connect(url, open_timeout=10, max_size=None) as ws:
            for frame in (
                '{"id": 1, "method": "Shelly.GetStatus", "params": ' + DEEP + "}",
                '{"id": NaN, "src": "fuzz", "method": "Shelly.GetDeviceInfo"}',
                '{"id": 2, "src": "fuzz", "method": "Number.Set", "params": {"id": 200, "value": Infinity}}',
            ):
                await ws.send(frame)
                reply = json.loads(await ws.recv())
                assert reply["error"]["code"] == -103, reply
            await ws.send('{"id": 3, "src": "fuzz", "method": "Shelly.GetDeviceInfo"}')
            reply = json.loads(await ws.recv())
            assert reply["id"] == 3 and "result" in reply
        assert rt.charger("cp1").user_limit is None


@pytest.mark.parametrize(
    "query",
    [
        "/currents?L1=%D9%A3&L2=0&L3=0",  # Arabic-Indic 3
        "/currents?L1=%EF%BC%91%EF%BC%92&L2=0&L3=0",  # fullwidth 12
        "/currents?L1=1_0&L2=0&L3=0",
        "/currents?L1=-0&L2=0&L3=0",
        "/currents?L1=%201&L2=0&L3=0",
        "/currents?L1=1%0A&L2=0&L3=0",
        "/currents?L1=0x10&L2=0&L3=0",
        "/settings?current_max_sum_mains=%EF%BC%91%EF%BC%92",
        "/settings?mode=%D9%A1",
        "/ev_meter?import_active_energy=1e308",
    ],
)
async def test_smartevse_query_numbers_are_ascii_decimals_only(query: str) -> None:
    config = make_config({"site": {"mains_meter": "api"}})
    async with serve(config, speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        before = settled(rt)
        r = await c.post(query)
        assert r.status_code == 400, r.text
        assert "Value not allowed!" in r.json().values()
        assert settled(rt) == before


@pytest.mark.parametrize("limit", ["1_0", "%D9%A3", "%EF%BC%91%EF%BC%92", "-0", "1e3", "%2010"])
async def test_native_query_numbers_are_ascii_decimals_only(limit: str) -> None:
    async with serve(make_config(), speed=10) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.get(f"/api/sessions?limit={limit}")
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "limit"
        assert (await c.get("/api/sessions?limit=10")).status_code == 200


async def test_secc_websocket_refuses_foreign_digits() -> None:
    async with serve(make_config(), speed=10) as (base, rt):
        url = base.replace("http://", "ws://") + "/api/ws"
        async with websockets.connect(url, open_timeout=10) as ws:
            await ws.send("setCurrentLimit\n１２")
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("topic") == "error":
                    break
            assert "number" in frame["message"]["detail"]
        assert rt.charger("cp1").leases.get("lease") is None


async def chunks(size: int) -> Any:
    """A request body sent chunked (no Content-Length)."""
    for _ in range(size // 4096):
        yield b" " * 4096


@pytest.mark.parametrize(
    ("path", "status_check"),
    [
        ("/rpc", lambda r: r.json()["code"] == -103),
        ("/chargers/cp1/rpc", lambda r: r.json()["code"] == -103),
        ("/rpc/Number.Set", lambda r: r.json()["code"] == -103),
        ("/api/v1/state", lambda r: "50KB" in r.text),
        ("/chargers/cp1/api/v1/state/charging-current", lambda r: "50KB" in r.text),
        ("/currents", lambda r: r.json()["error"] == "Request too large"),
        ("/api/chargers/cp1/start", lambda r: r.json()["error"] == "too_large"),
    ],
)
async def test_a_chunked_body_over_the_limit_gets_413_like_a_sized_one(path: str, status_check: Any) -> None:
    async with serve(make_config(), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        before = settled(rt)
        r = await c.post(path, content=chunks(200 * 1024), headers={"content-type": "application/json"})
        assert r.status_code == 413, (r.status_code, r.text)
        assert status_check(r), r.text
        sized = await c.post(path, content=b" " * 200 * 1024, headers={"content-type": "application/json"})
        assert sized.status_code == 413
        assert settled(rt) == before
