"""Authentication on every HTTP API: the role table of every mutating route, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from evpilot import cli
from evpilot.api.app import create_app
from evpilot.api.auth import Authenticator, split_token
from evpilot.api.server import server_config, tls_options
from evpilot.config import ConfigError
from evpilot.control.clock import ManualClock
from evpilot.control.runtime import Runtime
from evpilot.security import FREE_FAILURES, BadTls, Throttle, hash_password
from evpilot.store.sqlite import Store
from tests.helpers import free_port, make_config, self_signed
from tests.integration.test_native_schema import _validate, native_operations

PASSWORD = "correct horse"
HASH = hash_password(PASSWORD)
USERS = [{"name": r, "password_hash": HASH, "role": r} for r in ("viewer", "operator", "admin")]
CONFIG: dict[str, Any] = {
    "auth": {"users": USERS},
    "site": {"circuits": [{"name": "garage", "limit": 32, "meter": "api"}]},
    # cp2 has a card reader (learning: any swipe is taken) and a socket with a lock.
    "chargers": [
        {"id": "cp1", "name": "Garage", "circuit": "garage"},
        {"id": "cp2", "name": "Drive", "rfid": "learn", "lock": "solenoid", "fixed_cable": False},
    ],
    "sim": {"first_spike_s": None, "spike_rate_h": 0},
}
WHO = (None, "viewer", "operator", "admin")
RANK = {"viewer": 0, "operator": 1, "admin": 2}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}

# (method, route path, concrete URL, JSON body or None, least role). Device facades serve every route
# at the root (default charger) and under /chargers/{cid}; `_both` adds the per-charger row.
Row = tuple[str, str, str, Any, str]
_NATIVE: list[tuple[str, str, Any, str]] = [
    ("POST", "/api/logout", None, "viewer"),
    ("POST", "/api/chargers/{cid}/start", {}, "operator"),
    ("POST", "/api/chargers/{cid}/stop", None, "operator"),
    ("PUT", "/api/chargers/{cid}/enabled", {"enabled": False}, "operator"),
    ("PUT", "/api/chargers/{cid}/current_limit", {"current": 10}, "operator"),
    ("PUT", "/api/chargers/{cid}/caps", {"energy_kwh": 5}, "operator"),
    ("PUT", "/api/chargers/{cid}/auto_charge", {"auto_charge": False}, "operator"),
    ("PUT", "/api/chargers/{cid}/mode", {"mode": "solar"}, "operator"),
    ("PUT", "/api/chargers/{cid}/phase_mode", {"phase_mode": "auto"}, "operator"),
    ("POST", "/api/chargers/{cid}/reset", None, "operator"),
    ("POST", "/api/chargers/{cid}/unlock", None, "operator"),
    ("PUT", "/api/chargers/{cid}/rfid", {"mode": "disabled"}, "operator"),
    ("PUT", "/api/chargers/{cid}/switch", {"closed": False}, "operator"),
    ("POST", "/api/cards", {"uid": "04A2B3C4"}, "admin"),
    ("DELETE", "/api/cards/{uid}", None, "admin"),
    ("DELETE", "/api/cards", None, "admin"),
    ("POST", "/api/sim/chargers/{cid}/card", {"uid": "04A2B3C4"}, "admin"),
    ("PUT", "/api/sim/chargers/{cid}/switch", {"closed": False}, "admin"),
    ("POST", "/api/chargers/{cid}/swipe", {"uid": "04A2B3C5"}, "operator"),
    ("PUT", "/api/sim/chargers/{cid}/lock", {"jammed": False}, "admin"),
    ("PUT", "/api/settings", {"mode": "solar"}, "admin"),
    ("PUT", "/api/meters/mains", {"currents": [1, 2, 3]}, "admin"),
    ("PUT", "/api/meters/circuits/{name}", {"currents": [1, 2, 3]}, "admin"),
    ("PUT", "/api/site/limit", {"amps": 20}, "admin"),
    ("PUT", "/api/site/grid_relay", {"open": True}, "admin"),
    ("POST", "/api/sim/chargers/{cid}/plug", {}, "admin"),  # cp2: no car yet
    ("POST", "/api/sim/chargers/{cid}/unplug", None, "admin"),
    ("POST", "/api/sim/chargers/{cid}/fault", {"rcm": True}, "admin"),
    ("PUT", "/api/sim/house", {"currents": [3, 3, 3]}, "admin"),
    ("PUT", "/api/sim/pv", {"power_w": 1234}, "admin"),
    ("PUT", "/api/sim/ambient", {"temperature_c": 33}, "admin"),
    ("PUT", "/api/sim/mains_meter", {"online": False}, "admin"),
]


def _cid(path: str) -> str:
    return "cp2" if path.endswith(("/plug", "/swipe", "/lock", "/unlock")) else "cp1"


NATIVE: list[Row] = [
    (m, p, p.format(cid=_cid(p), name="garage", uid="04A2B3C4"), body, role) for m, p, body, role in _NATIVE
]
ROOTED: list[tuple[str, str, str, Any, str]] = [
    # ESP32-EVSE
    ("POST", "/api/v1/state", "", {"enabled": False}, "operator"),
    ("POST", "/api/v1/state/enabled", "", False, "operator"),
    ("POST", "/api/v1/state/available", "", False, "operator"),
    ("POST", "/api/v1/state/charging-current", "", 10, "operator"),
    ("POST", "/api/v1/state/consumption-limit", "", 3_600_000, "operator"),
    ("POST", "/api/v1/state/charging-time-limit", "", 600, "operator"),
    ("POST", "/api/v1/state/under-power-limit", "", 500, "operator"),
    ("POST", "/api/v1/state/authorize", "", None, "operator"),
    ("POST", "/api/v1/state/reset-total-consumption", "", None, "operator"),
    # SECC
    ("PUT", "/api/v1/limits", "", {"enabled": False}, "operator"),
    # SmartEVSE: charger commands, then site settings and meter feeds
    ("POST", "/settings", "?mode=2", None, "operator"),
    ("POST", "/settings", "?current_main=20", None, "admin"),
    ("POST", "/settings", "?mode=2&current_max_sum_mains=50", None, "admin"),
    ("POST", "/currents", "?L1=10&L2=10&L3=10", None, "admin"),
    ("POST", "/ev_meter", "?L1=10&L2=10&L3=10", None, "admin"),
    # Shelly: a frame, and methods by name (GET changes state too, as on the device)
    (
        "POST",
        "/rpc",
        "",
        {"id": 1, "method": "Boolean.Set", "params": {"id": 200, "value": False}},
        "operator",
    ),
    ("POST", "/rpc/{method}", "/rpc/Boolean.Set", {"id": 200, "value": False}, "operator"),
    ("GET", "/rpc/{method}", "/rpc/Number.Set?id=200&value=8", None, "operator"),
    ("GET", "/rpc/{method}", "/rpc/Shelly.GetStatus", None, "viewer"),
]


def _rows() -> list[Row]:
    rows = list(NATIVE)
    for method, path, extra, body, role in ROOTED:
        url = extra if extra.startswith("/") else path + extra
        rows.append((method, path, url, body, role))
        rows.append((method, "/chargers/{cid}" + path, "/chargers/cp2" + url, body, role))
    return rows


ROWS = _rows()


def _state_changing_routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) of the app's OpenAPI document that may change state."""
    found = set()
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            # Shelly's RPC by name changes state on GET as well.
            if method.upper() in MUTATING or path.endswith("/rpc/{method}"):
                found.add((method.upper(), path))
    found.discard(("POST", "/api/login"))  # public: how a user proves who they are
    return found


def test_every_state_changing_route_is_in_the_table() -> None:
    rt = Runtime(make_config(CONFIG), ManualClock())
    routes = _state_changing_routes(create_app(rt, manage_runtime=False))
    table = {(m, p) for m, p, _, _, _ in ROWS}
    missing = routes - table
    assert not missing, f"state-changing routes missing from the auth table: {sorted(missing)}"
    assert not table - routes, f"table rows for routes that do not exist: {sorted(table - routes)}"


def _basic(user: str | None, password: str = PASSWORD) -> dict[str, str]:
    if user is None:
        return {}
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {raw}"}


def _snapshot(rt: Runtime) -> str:
    """Everything a command or feed could change (the clock stands still and no tick runs)."""
    sim = rt.sim
    doc: dict[str, Any] = {
        "chargers": [rt.charger_doc(cid) for cid in rt.engine.chargers],
        "site": rt.site_doc(),
        "site_caps": repr(rt.engine.site_caps) if hasattr(rt.engine, "site_caps") else None,
        "relay": rt.engine.grid_relay_open,
        "api_meter": repr(vars(rt.api_meter)),
        "circuits": {n: repr(vars(m)) for n, m in rt.engine.circuit_meters.items()},
        # Cards, RFID modes, switch inputs, the cable lock's setting and state, simulated actuators.
        "access": [rt.access.doc(cid) for cid in rt.engine.chargers],
        "cards": rt.access.cards_doc(),
        "actuators": {c: repr(vars(a.actuator)) for c, a in rt.access.chargers.items() if a.actuator},
    }
    if sim is not None:
        doc["sim"] = [sim.house.override, sim.pv.override, sim.params.ambient_c]
        doc["pilots"] = {c: (p.rcm_fault, p.diode_fault) for c, p in sim.pilots.items()}
        doc["sim_meter"] = None if rt.sim_meter is None else rt.sim_meter.enabled
    return json.dumps(doc, sort_keys=True, default=repr)


@contextlib.asynccontextmanager
async def _server(
    config: dict[str, Any], data: Path | None = None, **extra: Any
) -> AsyncIterator[tuple[str, Runtime]]:
    """The app on a real socket, with a clock that stands still and no control loop running."""
    clock = ManualClock()
    clock.speed = 1.0  # shown by GET /api/settings (JSON has no infinity)
    store = Store(data / "evpilot.sqlite3" if data is not None else ":memory:")
    rt = Runtime(make_config(config), clock, store)
    app = create_app(rt, manage_runtime=False)
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, **extra))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    scheme = "https" if "ssl_certfile" in extra else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}", rt
    finally:
        server.should_exit = True
        await task
        store.close()


async def _send(client: httpx.AsyncClient, row: Row, headers: dict[str, str]) -> httpx.Response:
    method, _, url, body, _ = row
    if body is None:
        return await client.request(method, url, headers=headers)
    return await client.request(method, url, headers=headers, content=json.dumps(body))


async def test_the_role_table_holds_on_every_facade_and_a_refusal_changes_nothing() -> None:
    async with _server(CONFIG) as (base, rt), httpx.AsyncClient(base_url=base) as client:
        for row in ROWS:
            need = row[4]
            for who in WHO:
                headers = {**_basic(who), "content-type": "application/json"}
                before = _snapshot(rt)
                r = await _send(client, row, headers)
                what = f"{row[0]} {row[2]} as {who}: {r.status_code} {r.text[:200]}"
                if who is None:
                    assert r.status_code == 401, what
                    assert r.headers["www-authenticate"].startswith("Basic "), what
                elif RANK[who] < RANK[need]:
                    assert r.status_code == 403, what
                    assert f"needs {need}" in r.text, what  # in the facade's own body format
                else:
                    assert r.status_code not in (401, 403, 429), what
                    continue
                assert _snapshot(rt) == before, f"a refused request changed state: {what}"


async def test_every_permitted_command_takes_effect() -> None:
    # The same table as admin from a fresh start: every command does what it says (2xx), so the
    # refusals above are refusals of real commands.
    async with _server(CONFIG) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        for row in ROWS:
            if row[1].endswith(("/ev_meter", "/currents")):
                # Refused by design here: evpilot meters the EV itself; the mains meter is simulated.
                continue
            r = await _send(client, row, {**_basic("admin"), "content-type": "application/json"})
            assert r.status_code < 300, f"{row[0]} {row[2]}: {r.status_code} {r.text[:200]}"


# ---- WebSockets -------------------------------------------------------------------------------


def _ws(base: str) -> str:
    return base.replace("http", "ws", 1)


async def test_sockets_need_credentials_and_only_operators_command_on_them() -> None:
    async with _server(CONFIG) as (base, rt):
        for path in ("/api/ws", "/chargers/cp1/api/ws", "/rpc", "/chargers/cp1/rpc"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(_ws(base) + path):
                    pass
            assert refused.value.response.status_code == 401, path
        with pytest.raises(InvalidStatus) as refused:
            async with connect(_ws(base) + "/rpc", additional_headers=_basic("viewer")):
                pass
        assert refused.value.response.status_code == 403
        before = rt.charger("cp1").enabled
        async with connect(_ws(base) + "/api/ws", additional_headers=_basic("viewer")) as ws:
            await ws.send("setEnabled\nfalse")
            while True:
                frame = json.loads(await ws.recv())
                if frame["topic"] == "error":
                    break
        assert "needs operator" in frame["message"]["detail"]
        assert rt.charger("cp1").enabled == before
        async with connect(_ws(base) + "/api/ws", additional_headers=_basic("operator")) as ws:
            await ws.send("setEnabled\nfalse")
            for _ in range(200):
                if not rt.charger("cp1").enabled:
                    break
                await asyncio.sleep(0.02)
        assert rt.charger("cp1").enabled is False
        # The dashboard's way: a login token offered as the `bearer.<token>` subprotocol.
        async with httpx.AsyncClient(base_url=base) as client:
            r = await client.post("/api/login", json={"name": "viewer", "password": PASSWORD})
        proto = f"bearer.{r.json()['token']}"
        async with connect(_ws(base) + "/api/ws", subprotocols=[proto]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == proto
            assert json.loads(await ws.recv())["topic"]
        with pytest.raises(InvalidStatus) as refused:
            async with connect(_ws(base) + "/api/ws", subprotocols=["bearer.forged"]):  # type: ignore[list-item]
                pass
        assert refused.value.response.status_code == 401


# ---- tokens, login, throttle ----------------------------------------------------------------------


async def test_api_tokens_from_the_cli_work_until_revoked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(
            ["auth", "token", "create", "--role", "operator", "--name", "ha", "--data-dir", str(tmp_path)]
        )
        == 0
    )
    token = capsys.readouterr().out.strip()
    assert token.startswith("evp_")
    store = Store(tmp_path / "evpilot.sqlite3")
    try:
        (record,) = store.tokens()
    finally:
        store.close()
    assert record.role == "operator" and record.name == "ha"
    parts = split_token(token)
    assert parts is not None and parts[0] == record.id
    # Only a hash of the secret is stored.
    for file in tmp_path.glob("evpilot.sqlite3*"):
        assert parts[1].encode() not in file.read_bytes()
    async with _server(CONFIG, data=tmp_path) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        bearer = {"authorization": f"Bearer {token}"}
        assert (await client.post("/api/chargers/cp1/stop", headers=bearer)).status_code == 200
        r = await client.put("/api/settings", json={"mode": "solar"}, headers=bearer)
        assert r.status_code == 403
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert (
            await client.get("/api/site", headers={"authorization": f"Bearer {forged}"})
        ).status_code == 401
        assert cli.main(["auth", "token", "revoke", record.id, "--data-dir", str(tmp_path)]) == 0
        assert (await client.get("/api/site", headers=bearer)).status_code == 401
    assert cli.main(["auth", "token", "revoke", record.id, "--data-dir", str(tmp_path)]) == 1


async def test_login_gives_a_session_token_that_logout_ends() -> None:
    async with _server(CONFIG) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        r = await client.post("/api/login", json={"name": "operator", "password": PASSWORD})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["role"] == "operator" and doc["expires_in_s"] == 12 * 3600
        bearer = {"authorization": f"Bearer {doc['token']}"}
        assert (await client.get("/api/chargers/cp1", headers=bearer)).status_code == 200
        out = await client.post("/api/logout", headers=bearer)
        assert out.status_code == 200 and out.json() == {"ended": True}
        openapi = (await client.get("/openapi.json")).json()
        ops = native_operations(openapi)
        assert _validate(openapi, ops[("POST", "/api/login")], doc) == []
        assert _validate(openapi, ops[("POST", "/api/logout")], out.json()) == []
        assert (await client.get("/api/chargers/cp1", headers=bearer)).status_code == 401
        r = await client.post("/api/login", json={"name": "operator", "password": "nope"})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = await client.post("/api/login", json={"name": "operator"})
        assert r.status_code == 422


async def test_failed_logins_are_throttled_with_a_growing_delay_and_logged_without_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "evpilot.auth")
    async with _server(CONFIG) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        for _ in range(FREE_FAILURES):
            r = await client.get("/api/site", headers=_basic("admin", "guess-123"))
            assert r.status_code == 401
        r = await client.post("/api/login", json={"name": "admin", "password": "guess-456"})
        assert r.status_code == 401  # the sixth failure starts the wait
        for attempt in (
            client.get("/api/site", headers=_basic("admin")),
            client.get("/settings", headers=_basic("admin")),
        ):
            r = await attempt
            # Even the right password waits: a guesser cannot tell a hit while throttled.
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        r = await client.post("/api/login", json={"name": "admin", "password": PASSWORD})
        assert r.status_code == 429 and "retry-after" in r.headers
    text = caplog.text
    assert "bad credentials for 'admin'" in text and "too many failed logins" in text
    assert "guess-" not in text and PASSWORD not in text


def test_the_throttle_delay_doubles_and_success_forgets() -> None:
    now = [0.0]
    throttle = Throttle(lambda: now[0])
    waits = []
    for _ in range(FREE_FAILURES + 4):
        throttle.failed("10.0.0.9")
        waits.append(throttle.retry_after("10.0.0.9"))
    assert waits[:FREE_FAILURES] == [None] * FREE_FAILURES
    assert waits[FREE_FAILURES:] == [1.0, 2.0, 4.0, 8.0]
    assert throttle.retry_after("10.0.0.10") is None
    now[0] = 100.0
    assert throttle.retry_after("10.0.0.9") is None
    throttle.failed("10.0.0.9")
    assert throttle.retry_after("10.0.0.9") == 16.0
    throttle.succeeded("10.0.0.9")
    assert throttle.retry_after("10.0.0.9") is None


async def test_a_session_lapses_after_its_ttl() -> None:
    now = [0.0]
    cfg = make_config({**CONFIG, "auth": {"users": USERS, "session_ttl_s": 60}}).auth
    assert cfg is not None
    auth = Authenticator(cfg, None, lambda: now[0])
    principal = await auth.password("viewer", PASSWORD)
    assert principal is not None and await auth.password("viewer", "wrong") is None
    token, ttl = auth.login(principal)
    assert ttl == 60 and await auth.bearer(token) is not None
    now[0] = 61.0
    assert await auth.bearer(token) is None


def test_the_config_checks_users() -> None:
    with pytest.raises(ConfigError) as err:
        make_config(
            {"auth": {"users": [{"name": "a", "password_hash": "plain-text-password!", "role": "admin"}]}}
        )
    assert err.value.errors[0][0] == "auth.users.0.password_hash"
    with pytest.raises(ConfigError) as err:
        make_config({"auth": {"users": [{"name": "a", "password_hash": HASH, "role": "root"}]}})
    assert err.value.errors[0][0] == "auth.users.0.role"
    with pytest.raises(ConfigError) as err:
        make_config({"auth": {"users": [USERS[0], USERS[0]]}})
    assert "unique" in err.value.errors[0][1]


def test_cli_hash_reads_stdin_and_the_hash_verifies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    assert cli.main(["auth", "hash"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("$argon2id$") and PasswordHasher().verify(hashed, "s3cret pass")
    make_config({"auth": {"users": [{"name": "me", "password_hash": hashed, "role": "admin"}]}})


# ---- without auth ---------------------------------------------------------------------------------


async def test_without_auth_nothing_asks_for_credentials() -> None:
    config = {k: v for k, v in CONFIG.items() if k != "auth"}
    async with _server(config) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        assert (await client.post("/api/chargers/cp1/stop")).status_code == 200
        assert (await client.put("/api/settings", json={"mode": "solar"})).status_code == 200
        assert (await client.post("/settings?current_main=20")).status_code == 200
        r = await client.post("/api/login", json={"name": "admin", "password": PASSWORD})
        assert r.status_code == 404


def test_default_bind_is_loopback_and_an_exposed_server_without_auth_is_warned_about() -> None:
    plain = make_config({})
    assert plain.http.host == "127.0.0.1"
    assert cli.exposure_warning(plain, "127.0.0.1", 8080) is None
    assert cli.exposure_warning(plain, "::1", 8080) is None
    warning = cli.exposure_warning(plain, "0.0.0.0", 8080)
    assert warning is not None and "without authentication" in warning
    assert cli.exposure_warning(make_config(CONFIG), "0.0.0.0", 8080) is None


# ---- TLS ----------------------------------------------------------------------------------------


async def test_tls_serves_https_and_wss_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = {**CONFIG, "http": {"tls": {"cert": str(cert), "key": str(key)}}}
    options = tls_options(make_config(config).http.tls.cert, key)  # type: ignore[union-attr]
    context = ssl.create_default_context(cafile=str(cert))
    async with _server(config, **options) as (base, _rt):
        assert base.startswith("https://")
        async with httpx.AsyncClient(base_url=base, verify=context) as client:
            r = await client.get("/api/site", headers=_basic("viewer"))
            assert r.status_code == 200 and r.json()["chargers"] == ["cp1", "cp2"]
        async with httpx.AsyncClient(base_url=base.replace("https", "http", 1)) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get("/api/site", headers=_basic("viewer"))  # plain HTTP is not served
        wss = base.replace("https", "wss", 1) + "/api/ws"
        async with connect(wss, ssl=context, additional_headers=_basic("viewer")) as ws:
            assert json.loads(await ws.recv())["topic"]
    with pytest.raises(BadTls, match="no such file"):
        tls_options(tmp_path / "missing.pem", key)
    with pytest.raises(BadTls, match="cannot load"):
        tls_options(key, key)


async def test_shelly_keeps_its_digest_password_and_takes_the_same_users() -> None:
    config = {**CONFIG, "shelly": {"password": "device-pw"}}
    set_url = "/rpc/Number.Set?id=200&value=10"
    async with _server(config) as (base, rt), httpx.AsyncClient(base_url=base) as client:
        # No credentials: Shelly's own digest challenge, as the device answers.
        r = await client.get(set_url)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Digest ")
        before = _snapshot(rt)
        assert (await client.get(set_url, headers=_basic("viewer"))).status_code == 403
        assert _snapshot(rt) == before
        assert (await client.get(set_url, headers=_basic("operator"))).status_code == 200
        assert (await client.get("/rpc/Shelly.GetStatus", headers=_basic("viewer"))).status_code == 200
        digest = (aiohttp.DigestAuthMiddleware("admin", "device-pw"),)
        async with (
            aiohttp.ClientSession(middlewares=digest) as session,
            session.get(base + "/rpc/Number.Set?id=200&value=12") as resp,
        ):
            assert resp.status == 200


def test_run_refuses_an_unusable_certificate_before_it_starts(tmp_path: Path) -> None:
    config = {"http": {"tls": {"cert": str(tmp_path / "nope.pem"), "key": str(tmp_path / "nope.key")}}}
    path = tmp_path / "tls.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    args = [sys.executable, "-m", "evpilot", "run", "--config", str(path), "--data-dir", str(tmp_path / "d")]
    args += ["--http", f"127.0.0.1:{free_port()}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "config error: http.tls:" in done.stderr and "no such file" in done.stderr
    assert not (tmp_path / "d").exists()  # nothing was started
