"""Bad input to the Shelly facade: each answered with a Shelly error object, and nothing changes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

from evpilot.api.shelly import ShellyFacade
from evpilot.control.runtime import Runtime
from tests.helpers import make_config, serve

Q = '"service:0"'
OVERSIZED = b'{"id": 1, "method": "Shelly.GetStatus", "pad": "' + b"x" * 70_000 + b'"}'


def _facade(rt: Runtime) -> ShellyFacade:
    for listener in [*rt.listeners, *rt.view_listeners]:
        owner = getattr(listener, "__self__", None)
        if isinstance(owner, ShellyFacade):
            return owner
    raise AssertionError("no Shelly facade")


def snapshot(rt: Runtime) -> dict[str, Any]:
    """Everything a Shelly call can change."""
    facade = _facade(rt)
    out: dict[str, Any] = {}
    for cid, ch in rt.engine.chargers.items():
        out[cid] = (
            ch.user_limit,
            ch.start_requested,
            ch.auto_charge,
            ch.energy_cap_kwh,
            ch.time_cap_min,
            ch.enabled,
            sorted(ch.leases),
            facade.balance.settings.get(cid),
            facade.devices[cid].cfg_rev,
        )
    return out


# (label, HTTP method, path, body, expected HTTP status, expected Shelly error code)
GET_CASES: list[tuple[str, str, str, bytes | None, int, int]] = [
    (
        "wrong type: string value",
        "GET",
        f'/rpc/Number.Set?owner={Q}&role="current_limit"&value="ten"',
        None,
        400,
        -103,
    ),
    ("wrong type: bool for number", "GET", "/rpc/Number.Set?id=200&value=true", None, 400, -103),
    ("wrong type: number for bool", "GET", "/rpc/Boolean.Set?id=200&value=1", None, 400, -103),
    ("wrong type: id as string", "GET", '/rpc/Number.Set?id="200"&value=10', None, 400, -103),
    ("out of range: below MIN", "GET", "/rpc/Number.Set?id=200&value=5", None, 400, -103),
    ("out of range: above MAX", "GET", "/rpc/Number.Set?id=200&value=33", None, 400, -103),
    ("out of range: negative", "GET", "/rpc/Number.Set?id=200&value=-1", None, 400, -103),
    ("off the 0.1 A step", "GET", "/rpc/Number.Set?id=200&value=6.05", None, 400, -103),
    ("unknown method", "GET", "/rpc/Charger.Explode", None, 404, 404),
    ("no Set on an enum", "GET", '/rpc/Enum.Set?id=200&value="charger_free"', None, 404, 404),
    ("unknown role", "GET", f'/rpc/Number.Set?owner={Q}&role="nope"&value=10', None, 400, -105),
    ("role of another type", "GET", f'/rpc/Number.GetStatus?owner={Q}&role="work_state"', None, 400, -105),
    (
        "unknown owner",
        "GET",
        '/rpc/Number.Set?owner="service:1"&role="current_limit"&value=10',
        None,
        400,
        -105,
    ),
    ("unknown id", "GET", "/rpc/Number.Set?id=299&value=10", None, 400, -105),
    ("missing id", "GET", "/rpc/Number.Set?value=10", None, 400, -103),
    ("missing value", "GET", "/rpc/Number.Set?id=200", None, 400, -103),
    ("read-only number", "GET", "/rpc/Number.Set?id=201&value=1", None, 400, -103),
    ("unknown argument", "GET", "/rpc/Number.Set?id=200&value=10&extra=1", None, 400, -103),
    (
        "unquoted string",
        "GET",
        "/rpc/Number.Set?owner=service:0&role=current_limit&value=10",
        None,
        400,
        -103,
    ),
    ("unknown charger", "GET", "/chargers/nope/rpc/Number.Set?id=200&value=10", None, 404, -105),
    ("unknown service id", "GET", "/rpc/Service.GetConfig?id=1", None, 400, -105),
    ("negative page offset", "GET", "/rpc/Shelly.GetComponents?offset=-1", None, 400, -103),
    ("bad include", "GET", '/rpc/Shelly.GetComponents?include=["x"]', None, 400, -103),
    ("malformed JSON body", "POST", "/rpc/Number.Set", b'{"id": 200, "value":', 400, -103),
    ("body not an object", "POST", "/rpc/Number.Set", b"[200, 10]", 400, -103),
    (
        "frame for another method",
        "POST",
        "/rpc/Number.Set",
        b'{"method": "Boolean.Set", "params": {}}',
        400,
        -103,
    ),
    ("malformed JSON frame", "POST", "/rpc", b'{"id": 1, "method": ', 400, -103),
    ("frame not an object", "POST", "/rpc", b'"Shelly.GetStatus"', 400, -103),
    ("oversized frame", "POST", "/rpc", OVERSIZED, 413, -103),
    ("oversized body", "POST", "/chargers/cp2/rpc/Number.Set", OVERSIZED, 413, -103),
]

SET_CONFIG_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("enable without em_ip", {"config": {"auto_balance": {"enable": True}}}, -103),
    ("enable with a bad IPv4", {"config": {"auto_balance": {"enable": True, "em_ip": "300.1.2.3"}}}, -103),
    ("em_ip a host name", {"config": {"auto_balance": {"em_ip": "meter.local"}}}, -103),
    ("em_ip a number", {"config": {"auto_balance": {"em_ip": 10}}}, -103),
    ("max_current too high", {"config": {"auto_balance": {"max_current": 500}}}, -103),
    ("enable not a boolean", {"config": {"auto_balance": {"enable": "yes", "em_ip": "10.0.0.2"}}}, -103),
    ("auto_balance not an object", {"config": {"auto_balance": "on"}}, -103),
    ("unknown auto_balance field", {"config": {"auto_balance": {"port": 81}}}, -103),
    ("energy cap above 1000 kWh", {"config": {"global_charge_limit": 1001}}, -103),
    ("time cap below 0", {"config": {"global_time_limit": -1}}, -103),
    ("time cap a string", {"config": {"global_time_limit": "60"}}, -103),
    ("auto_charge a string", {"config": {"auto_charge": "true"}}, -103),
    ("unknown config field", {"config": {"boost": True}}, -103),
    ("config not an object", {"config": [1]}, -103),
    ("unknown service", {"id": 1, "config": {"auto_charge": False}}, -105),
    ("all or nothing", {"config": {"auto_charge": False, "global_time_limit": 2000}}, -103),
]


async def test_bad_http_input_table() -> None:
    config = make_config({"chargers": [{"id": "cp1"}, {"id": "cp2", "max_current": 16}]})
    async with serve(config, speed=1) as (base, rt), httpx.AsyncClient(base_url=base) as client:
        before = snapshot(rt)
        failures = []
        for label, method, path, body, status, code in GET_CASES:
            resp = await client.request(method, path, content=body)
            doc = resp.json()
            error = doc.get("error", doc) if path.endswith("/rpc") else doc
            if resp.status_code != status or error.get("code") != code or not error.get("message"):
                failures.append(f"{label}: HTTP {resp.status_code} {resp.text[:200]}")
            if snapshot(rt) != before:
                failures.append(f"{label}: state changed")
        for label, params, code in SET_CONFIG_CASES:
            for target in ("/rpc/Service.SetConfig", "/chargers/cp2/rpc/Service.SetConfig"):
                resp = await client.post(target, json=params)
                if resp.status_code != 400 or resp.json().get("code") != code:
                    failures.append(
                        f"SetConfig {label} on {target}: HTTP {resp.status_code} {resp.text[:200]}"
                    )
            frame = {"id": 5, "src": "t", "method": "Service.SetConfig", "params": params}
            resp = await client.post("/rpc", json=frame)
            reply = resp.json()
            if resp.status_code != 200 or reply.get("error", {}).get("code") != code or reply.get("id") != 5:
                failures.append(f"SetConfig frame {label}: HTTP {resp.status_code} {resp.text[:200]}")
            if snapshot(rt) != before:
                failures.append(f"SetConfig {label}: state changed")

        # a body sent in chunks (no Content-Length) is cut off at the limit as well
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(OVERSIZED), 8192):
                yield OVERSIZED[i : i + 8192]

        resp = await client.post("/rpc/Shelly.GetStatus", content=chunks())
        # Refused like a sized one: 413 with the Shelly error object.
        if resp.status_code != 413 or resp.json().get("code") != -103:
            failures.append(f"chunked oversized body: HTTP {resp.status_code} {resp.text[:200]}")
        assert not failures, "\n".join(failures)
        assert snapshot(rt) == before


async def test_bad_websocket_frames() -> None:
    async with (
        serve(make_config(), speed=1) as (base, rt),
        aiohttp.ClientSession() as session,
        session.ws_connect(base.replace("http", "ws") + "/rpc") as ws,
    ):
        before = snapshot(rt)
        await ws.send_str('{"id": 1, "method": ')
        assert (await ws.receive_json(timeout=10))["error"]["code"] == -103
        await ws.send_str('["not", "a", "frame"]')
        assert (await ws.receive_json(timeout=10))["error"]["code"] == -103
        await ws.send_str("x" * 70_000)
        assert (await ws.receive_json(timeout=10))["error"]["code"] == -103
        cases = [
            ("Number.Set", {"id": 200, "value": "10"}, -103),
            ("Number.Set", {"id": 200, "value": 100}, -103),
            ("Boolean.Set", {"id": 200, "value": "true"}, -103),
            ("Boolean.Set", {"owner": "service:0", "role": "phase_info", "value": True}, -105),
            ("Object.Set", {"id": 200, "value": {}}, 404),
            ("Shelly.GetStatus", [1, 2], -103),
        ]
        for i, (method, params, code) in enumerate(cases, start=10):
            await ws.send_json({"id": i, "src": "bad", "method": method, "params": params})
            reply = await ws.receive_json(timeout=10)
            assert reply["id"] == i and reply["error"]["code"] == code, (method, params, reply)
        # errors only: the connection never became a status subscriber
        await ws.send_json({"id": 99, "src": "bad", "method": "Shelly.GetDeviceInfo"})
        assert "result" in await ws.receive_json(timeout=10)
        assert snapshot(rt) == before


def _digest(challenge: str, method: str, uri: str, password: str, nc: str = "00000001") -> str:
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    ha1 = hashlib.sha256(f"admin:{fields['realm']}:{password}".encode()).hexdigest()
    ha2 = hashlib.sha256(f"{method}:{uri}".encode()).hexdigest()
    cnonce = "0a4f113b"
    response = hashlib.sha256(f"{ha1}:{fields['nonce']}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (
        f'Digest username="admin", realm="{fields["realm"]}", nonce="{fields["nonce"]}", uri="{uri}", '
        f'algorithm=SHA-256, qop=auth, nc={nc}, cnonce="{cnonce}", response="{response}"'
    )


async def test_missing_or_wrong_auth_is_401_and_changes_nothing() -> None:
    config = make_config({"shelly": {"password": "pw"}})
    async with serve(config, speed=1) as (base, rt), httpx.AsyncClient(base_url=base) as client:
        before = snapshot(rt)
        assert (await client.get("/shelly")).json()["auth_en"] is True
        assert (await client.get("/rpc/Shelly.GetDeviceInfo")).status_code == 200
        set_url = f'/rpc/Number.Set?owner={Q}&role="current_limit"&value=10'
        resp = await client.get(set_url)
        assert resp.status_code == 401 and resp.json()["code"] == 401
        challenge = resp.headers["WWW-Authenticate"]
        assert 'realm="shellytopac-' in challenge and "algorithm=SHA-256" in challenge
        resp = await client.post(
            "/rpc", json={"id": 1, "method": "Number.Set", "params": {"id": 200, "value": 10}}
        )
        assert resp.status_code == 401
        bogus = {"realm": "x", "username": "admin", "nonce": "1", "cnonce": "c", "response": "0", "nc": 1}
        frame = {"id": 1, "method": "Boolean.Set", "params": {"id": 200, "value": True}, "auth": bogus}
        assert (await client.post("/rpc", json=frame)).status_code == 401
        # a wrong password through aiohttp's digest client
        async with (
            aiohttp.ClientSession(middlewares=(aiohttp.DigestAuthMiddleware("admin", "nope"),)) as wrong,
            wrong.get(base + "/rpc/Number.Set?id=200&value=10") as r,
        ):
            assert r.status == 401
        # a valid authorisation works once; replaying it is refused
        uri = "/rpc/Shelly.GetStatus"
        header = _digest(challenge, "GET", uri, "pw")
        assert (await client.get(uri, headers={"Authorization": header})).status_code == 200
        assert (await client.get(uri, headers={"Authorization": header})).status_code == 401
        # the header is bound to its URI
        header = _digest(challenge, "GET", uri, "pw", nc="00000002")
        assert (await client.get(set_url, headers={"Authorization": header})).status_code == 401
        # WebSocket: a frame without auth gets Shelly's 401 error with a digest challenge
        async with aiohttp.ClientSession() as session, session.ws_connect(base + "/rpc") as ws:
            await ws.send_json(
                {"id": 1, "src": "x", "method": "Number.Set", "params": {"id": 200, "value": 10}}
            )
            reply = await ws.receive_json(timeout=10)
            assert reply["error"]["code"] == 401
            challenge_doc = json.loads(reply["error"]["message"])
            assert challenge_doc["auth_type"] == "digest" and challenge_doc["algorithm"] == "SHA-256"
            await ws.send_json(
                {
                    "id": 2,
                    "src": "x",
                    "method": "Number.Set",
                    "params": {"id": 200, "value": 10},
                    "auth": {**bogus, "realm": challenge_doc["realm"], "nonce": challenge_doc["nonce"]},
                }
            )
            assert (await ws.receive_json(timeout=10))["error"]["code"] == 401
            # a public call answers, but does not subscribe an unauthenticated client to status
            await ws.send_json({"id": 3, "src": "x", "method": "Shelly.GetDeviceInfo"})
            assert "result" in await ws.receive_json(timeout=10)
            await ws.send_json({"id": 4, "src": "x", "method": "Shelly.GetStatus"})
            assert (await ws.receive_json(timeout=10))["id"] == 4
        assert snapshot(rt) == before
