"""Bad input to each device facade: answered in that API's own convention, and nothing changes."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import httpx

from evpilot.control.runtime import Runtime
from tests.helpers import make_config, serve

AUTH = "Basic " + base64.b64encode(b"admin:pw").decode()
JSON = "application/json"


@dataclass(frozen=True)
class Case:
    """One bad request and the answer it must get."""

    name: str
    method: str
    path: str
    status: int
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: dict[str, Any] | None = None  # JSON body expected (subset) for JSON APIs


def fingerprint(rt: Runtime) -> Any:
    """Everything a command through a facade could change."""
    chargers = {
        cid: (
            ch.enabled,
            ch.available,
            ch.authorized,
            ch.user_limit,
            ch.override,
            ch.energy_cap_kwh,
            ch.time_cap_min,
            ch.under_power_w,
            ch.mode,
            ch.phase_mode,
            ch.config,
            {k: (v.value, v.expires_at) for k, v in ch.leases.items()},
        )
        for cid, ch in rt.engine.chargers.items()
    }
    return chargers, rt.engine.site, rt.api_meter.latest(), rt.engine.battery.current, rt.engine.battery.at


async def check_all(client: httpx.AsyncClient, rt: Runtime, cases: list[Case], text: bool) -> None:
    for case in cases:
        before = fingerprint(rt)
        r = await client.request(case.method, case.path, content=case.body, headers=case.headers)
        where = f"{case.name}: {r.status_code} {r.text[:200]!r}"
        assert r.status_code == case.status, where
        kind = r.headers.get("content-type", "").split(";")[0]
        if text:
            assert kind == "text/plain", where
        else:
            assert kind == JSON, where
            if case.expect is not None:
                doc = r.json()
                assert {k: doc.get(k) for k in case.expect} == case.expect, where
        assert fingerprint(rt) == before, f"{case.name}: state changed"


def esp(name: str, path: str, body: bytes | None, status: int, **headers: str) -> Case:
    hdrs = {"content-type": JSON, "authorization": AUTH}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return Case(name, "POST", path, status, body, {k: v for k, v in hdrs.items() if v})


ESP32_CASES = [
    esp("wrong type: enabled as string", "/api/v1/state/enabled", b'"yes"', 400),
    esp("wrong type: current as bool", "/api/v1/state/charging-current", b"true", 400),
    esp("wrong type: limit as string", "/api/v1/state/consumption-limit", b'"100"', 400),
    esp("wrong type: object for a scalar", "/api/v1/state/available", b'{"available": true}', 400),
    esp("wrong type: state body not an object", "/api/v1/state", b"[1]", 400),
    esp("out of range: current under 6 A", "/api/v1/state/charging-current", b"5.9", 400),
    esp("out of range: current over MAX", "/api/v1/state/charging-current", b"32.1", 400),
    esp("out of range: NaN", "/api/v1/state/charging-current", b"NaN", 400),
    esp("out of range: huge (found by fuzzing)", "/api/v1/state/charging-current", b"1e308", 400),
    esp("out of range: negative energy", "/api/v1/state/consumption-limit", b"-1", 400),
    esp("out of range: time limit", "/api/v1/state/charging-time-limit", b"1e9", 400),
    esp("out of range: under-power", "/api/v1/state/under-power-limit", b"1e6", 400),
    esp("out of range in a batch", "/api/v1/state", b'{"enabled": false, "chargingCurrent": 99}', 400),
    esp("no known field", "/api/v1/state", b'{"foo": 1}', 400),
    esp("unknown charger", "/chargers/nope/api/v1/state/enabled", b"false", 404),
    esp("malformed JSON", "/api/v1/state", b'{"enabled": fal', 400),
    esp("not JSON: text/plain", "/api/v1/state/enabled", b"false", 415, content_type="text/plain"),
    esp("not JSON: no content type", "/api/v1/state/enabled", b"false", 415, content_type=""),
    esp("oversized body (60 KB)", "/api/v1/state", b"[" + b"0," * 30_000 + b"0]", 413),
    esp("oversized body (100 KB)", "/api/v1/state", b" " * 100_000 + b"false", 413),
    esp("missing auth", "/api/v1/state/enabled", b"false", 401, authorization=""),
    esp("wrong password", "/api/v1/state/enabled", b"false", 401, authorization="Basic YWRtaW46bm8="),
    esp("garbled auth", "/api/v1/state/enabled", b"false", 401, authorization="Basic !!!"),
    Case("missing auth on GET", "GET", "/api/v1/state", 401),
]


async def test_esp32evse_bad_inputs() -> None:
    config = make_config({"esp32evse": {"username": "admin", "password": "pw"}})
    async with serve(config, speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        await check_all(c, rt, ESP32_CASES, text=True)
        r = await c.post("/api/v1/state/enabled", content=b"false", headers={"authorization": ""})
        assert r.headers["www-authenticate"] == 'Basic realm="Users"'
        ok = await c.post(
            "/api/v1/state/enabled", content=b"false", headers={"content-type": JSON, "authorization": AUTH}
        )
        assert (ok.status_code, ok.text, rt.charger("cp1").enabled) == (200, "OK", False)


NA = "Value not allowed!"


def sm(
    name: str, path: str, status: int, expect: dict[str, Any] | None = None, body: bytes | None = None
) -> Case:
    return Case(name, "POST", path, status, body, {}, expect)


SMARTEVSE_CASES = [
    sm("wrong type: mode", "/settings?mode=abc", 400, {"mode": NA}),
    sm("wrong type: float current", "/settings?override_current=1e3", 400, {"override_current": NA}),
    sm("out of range: mode", "/settings?mode=4", 400, {"mode": NA}),
    sm("out of range: override under MIN", "/settings?override_current=59", 400, {"override_current": NA}),
    sm("out of range: override over MAX", "/settings?override_current=330", 400, {"override_current": NA}),
    sm("out of range: MIN", "/settings?current_min=5", 400, {"current_min": NA}),
    sm("out of range: MIN high", "/settings?current_min=17", 400, {"current_min": NA}),
    sm("out of range: capacity", "/settings?current_max_sum_mains=5", 400, {"current_max_sum_mains": NA}),
    sm("out of range: capacity timer", "/settings?max_sum_mains_timer=61", 400, {"max_sum_mains_timer": NA}),
    sm("out of range: stop timer", "/settings?stop_timer=61", 400, {"stop_timer": False}),
    sm("out of range: solar start", "/settings?solar_start_current=49", 400, {"solar_start_current": NA}),
    sm("out of range: solar import", "/settings?solar_max_import=-1", 400, {"solar_max_import": NA}),
    sm("out of range: C2 mode", "/settings?enable_C2=5", 400, {"enable_C2": NA}),
    sm("one bad among good", "/settings?mode=1&current_min=99&stop_timer=5", 400, {"current_min": NA}),
    sm("currents: incomplete", "/currents?L1=10&L2=20", 400),
    sm("currents: wrong type", "/currents?L1=abc&L2=1&L3=1", 400, {"L1": NA}),
    sm("currents: out of range", "/currents?L1=100001&L2=1&L3=1", 400, {"L1": NA}),
    sm("currents: battery out of range", "/currents?battery_current=99999", 400, {"battery_current": NA}),
    sm("currents: nothing", "/currents", 400),
    sm("ev_meter: incomplete", "/ev_meter?L1=10&L2=10", 400),
    sm("ev_meter: wrong type", "/ev_meter?L1=x&L2=1&L3=1", 400, {"L1": NA}),
    sm("ev_meter: negative energy", "/ev_meter?import_active_energy=-5", 400, {"import_active_energy": NA}),
    sm("ev_meter: nothing", "/ev_meter", 400),
    sm("unknown charger", "/chargers/nope/settings?mode=1", 404),
    sm("malformed query value", "/settings?mode=%ff%fe", 400, {"mode": NA}),
    sm("oversized body", "/settings?mode=1", 413, body=b"x" * 20_000),
    Case("unknown charger on GET", "GET", "/chargers/nope/settings", 404),
]


async def test_smartevse_bad_inputs() -> None:
    config = make_config({"site": {"mains_meter": "api"}})
    async with serve(config, speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        await check_all(c, rt, SMARTEVSE_CASES, text=False)
        assert (await c.post("/settings?mode=1")).status_code == 200
        assert rt.charger("cp1").mode == "normal"


def lim(name: str, body: bytes, status: int, path: str = "/api/v1/limits") -> Case:
    return Case(name, "PUT", path, status, body, {"content-type": JSON})


SECC_CASES = [
    lim("wrong type: amperage as string", b'{"amperageLimit": "10"}', 400),
    lim("wrong type: enabled as string", b'{"enabled": "yes"}', 400),
    lim("wrong type: body not an object", b"[]", 400),
    lim("out of range: amperage", b'{"amperageLimit": 80.5}', 400),
    lim("out of range: negative amperage", b'{"amperageLimit": -1}', 400),
    lim("out of range: power", b'{"powerLimit": 55201}', 400),
    lim("out of range: timeout 0", b'{"amperageLimit": 10, "timeout": 0}', 400),
    lim("out of range: timeout", b'{"amperageLimit": 10, "timeout": 86400001}', 400),
    lim("unknown field", b'{"foo": 1}', 400),
    lim("unknown charger", b'{"amperageLimit": 10}', 404, "/chargers/nope/api/v1/limits"),
    lim("malformed JSON", b'{"amperageLimit": 1', 400),
    lim("oversized body (20 KB)", b" " * 20_000 + b"{}", 413),
    lim("oversized body (100 KB)", b" " * 100_000 + b"{}", 413),
    Case("unknown charger on GET", "GET", "/chargers/nope/api/v1/charging", 404),
]


async def test_secc_bad_inputs() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        await check_all(c, rt, SECC_CASES, text=False)
        for case in SECC_CASES:
            r = await c.request(case.method, case.path, content=case.body, headers=case.headers)
            assert "error" in r.json(), case.name
        ok = await c.put("/api/v1/limits", json={"amperageLimit": 10})
        assert ok.status_code == 200 and rt.charger("cp1").leases["lease"].value == 10
