"""The native API documents every response body in /openapi.json, and its answers match those schemas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from evpilot.core import commands as cmd
from evpilot.store.sqlite import Store
from tests.helpers import make_config, serve

METHODS = ("get", "put", "post", "delete", "patch")


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    return schema


def _described(doc: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A schema that says what the body holds (not `{}`, not an object of anything)."""
    schema = _resolve(doc, schema)
    if "anyOf" in schema:
        return all(_described(doc, s) for s in schema["anyOf"] if s.get("type") != "null")
    if schema.get("type") == "array":
        return _described(doc, schema.get("items", {}))
    if schema.get("type") == "object":
        return bool(schema.get("properties")) and schema.get("additionalProperties") is False
    return bool(schema.get("type") or schema.get("enum") or schema.get("const") is not None)


def native_operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path template) -> the schema of its 2xx JSON body, for every native operation."""
    ops: dict[tuple[str, str], dict[str, Any]] = {}
    for path, item in doc["paths"].items():
        # /api/v1/ is the SECC facade (seed 002's API), not evpilot's own.
        if not path.startswith("/api/") or path.startswith("/api/v1/"):
            continue
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            for status, response in op["responses"].items():
                if status.startswith("2"):
                    # JSON, else the one media type it declares (the CSV export).
                    content = response.get("content", {})
                    media = content.get("application/json") or next(iter(content.values()), {})
                    schema = media.get("schema", {})
                    ops[(method.upper(), path)] = schema
    return ops


async def test_every_native_response_has_a_schema() -> None:
    async with serve(make_config(), speed=1) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        doc = (await client.get("/openapi.json")).json()
    ops = native_operations(doc)
    assert len(ops) >= 25
    missing = sorted(f"{m} {p}" for (m, p), schema in ops.items() if not _described(doc, schema))
    assert missing == []


def test_the_schema_check_refuses_an_undescribed_body() -> None:
    doc: dict[str, Any] = {"components": {"schemas": {"X": {"type": "object", "additionalProperties": True}}}}
    assert not _described(doc, {})
    assert not _described(doc, {"$ref": "#/components/schemas/X"})
    assert not _described(doc, {"type": "array", "items": {"type": "object", "additionalProperties": True}})
    assert _described(
        doc, {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    )


# Every native operation with a body that exercises it (path template, concrete path, JSON body).
CALLS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/api/health", "/api/health", None),
    ("GET", "/api/site", "/api/site", None),
    ("GET", "/api/chargers", "/api/chargers", None),
    ("GET", "/api/chargers/{cid}", "/api/chargers/cp1", None),
    ("GET", "/api/chargers/{cid}/charging", "/api/chargers/cp1/charging", None),
    ("POST", "/api/chargers/{cid}/start", "/api/chargers/cp1/start", {"id_tag": "card-1"}),
    ("POST", "/api/chargers/{cid}/stop", "/api/chargers/cp1/stop", None),
    ("PUT", "/api/chargers/{cid}/enabled", "/api/chargers/cp1/enabled", {"enabled": True}),
    ("PUT", "/api/chargers/{cid}/current_limit", "/api/chargers/cp1/current_limit", {"current": 12.5}),
    ("PUT", "/api/chargers/{cid}/caps", "/api/chargers/cp1/caps", {"energy_kwh": 20, "time_min": 90}),
    ("PUT", "/api/chargers/{cid}/auto_charge", "/api/chargers/cp1/auto_charge", {"auto_charge": True}),
    ("PUT", "/api/chargers/{cid}/mode", "/api/chargers/cp1/mode", {"mode": "smart"}),
    ("PUT", "/api/chargers/{cid}/phase_mode", "/api/chargers/cp1/phase_mode", {"phase_mode": "not_present"}),
    ("POST", "/api/chargers/{cid}/reset", "/api/chargers/cp1/reset", None),
    ("GET", "/api/settings", "/api/settings", None),
    ("PUT", "/api/settings", "/api/settings", {"mode": "smart"}),
    ("PUT", "/api/meters/mains", "/api/meters/mains", {"currents": [3, 4, 5], "battery_current": -2}),
    ("PUT", "/api/meters/circuits/{name}", "/api/meters/circuits/garage", {"currents": [1, 2, 3]}),
    ("PUT", "/api/site/limit", "/api/site/limit", {"amps": 20, "source": "lease", "timeout_s": 600}),
    ("PUT", "/api/site/grid_relay", "/api/site/grid_relay", {"open": False}),
    ("POST", "/api/sim/chargers/{cid}/fault", "/api/sim/chargers/cp2/fault", {"rcm": False}),
    ("PUT", "/api/sim/house", "/api/sim/house", {"currents": [2, 2, 2]}),
    ("PUT", "/api/sim/pv", "/api/sim/pv", {"power_w": 1500}),
    ("PUT", "/api/sim/ambient", "/api/sim/ambient", {"temperature_c": 21}),
    ("PUT", "/api/sim/mains_meter", "/api/sim/mains_meter", {"online": True}),
    ("POST", "/api/sim/chargers/{cid}/unplug", "/api/sim/chargers/cp1/unplug", None),
    ("POST", "/api/sim/chargers/{cid}/plug", "/api/sim/chargers/cp1/plug", {"soc": 50}),
    ("GET", "/api/sessions", "/api/sessions", None),
    ("GET", "/api/commands", "/api/commands", None),
    ("GET", "/api/meters", "/api/meters", None),
    ("GET", "/api/ocpp/stations", "/api/ocpp/stations", None),
    ("POST", "/api/cards", "/api/cards", {"uid": "04a2b3c4", "name": "Anna", "energy_kwh": 20}),
    ("GET", "/api/cards", "/api/cards", None),
    ("GET", "/api/cards/{uid}", "/api/cards/04A2B3C4", None),
    ("PUT", "/api/chargers/{cid}/rfid", "/api/chargers/cp2/rfid", {"mode": "learn"}),
    ("POST", "/api/chargers/{cid}/swipe", "/api/chargers/cp2/swipe", {"uid": "11223344"}),
    ("PUT", "/api/chargers/{cid}/switch", "/api/chargers/cp2/switch", {"closed": True}),
    ("GET", "/api/chargers/{cid}/access", "/api/chargers/cp2/access", None),
    ("POST", "/api/sim/chargers/{cid}/card", "/api/sim/chargers/cp2/card", {"uid": "55667788"}),
    ("PUT", "/api/sim/chargers/{cid}/switch", "/api/sim/chargers/cp2/switch", {"closed": False}),
    ("PUT", "/api/sim/chargers/{cid}/lock", "/api/sim/chargers/cp2/lock", {"jammed": False}),
    ("POST", "/api/chargers/{cid}/unlock", "/api/chargers/cp2/unlock", None),
    ("DELETE", "/api/cards/{uid}", "/api/cards/11223344", None),
    ("DELETE", "/api/cards", "/api/cards", None),
    ("GET", "/api/history", "/api/history?step=60", None),
    ("GET", "/api/sessions.csv", "/api/sessions.csv?charger=cp1", None),
    ("GET", "/api/sessions/totals", "/api/sessions/totals?by=month", None),
    # Once more with the state the calls above left: a session, leases, caps, a stored session.
    ("GET", "/api/site", "/api/site", None),
    ("GET", "/api/chargers", "/api/chargers", None),
]


AUTH_OPS = {("POST", "/api/login"), ("POST", "/api/logout")}


def _validate(doc: dict[str, Any], schema: dict[str, Any], body: Any) -> list[str]:
    validator = jsonschema_rs.validator_for({**schema, "components": doc["components"]})
    return [str(e) for e in validator.iter_errors(body)]


async def test_native_responses_match_their_schemas(tmp_path: Path) -> None:
    config = make_config(
        {
            "site": {"mains_limit": 40, "circuits": [{"name": "garage", "limit": 32, "meter": "api"}]},
            "chargers": [
                {"id": "cp1", "name": "Garage Süd", "circuit": "garage"},
                {
                    "id": "cp2",
                    "circuit": "garage",
                    "phases": 1,
                    "rfid": "enable_all",
                    "fixed_cable": False,
                    "lock": "solenoid",
                    "schedules": [{"start": "22:00", "stop": "06:00", "days": ["sat", "sun"]}],
                },
            ],
        }
    )
    store = Store(tmp_path / "evpilot.db")
    try:
        async with (
            serve(config, speed=1, store=store) as (base, rt),
            httpx.AsyncClient(base_url=base) as client,
        ):
            doc = (await client.get("/openapi.json")).json()
            ops = native_operations(doc)
            rt.apply(cmd.SetLease("cp1", "secc", 16.0, rt.clock.now() + 60), "test")
            seen: set[tuple[str, str]] = set()
            for method, template, path, body in CALLS:
                response = await client.request(method, path, json=body)
                assert response.status_code in (200, 201), (method, path, response.text)
                csv = response.headers["content-type"].startswith("text/csv")
                problems = _validate(doc, ops[(method, template)], response.text if csv else response.json())
                assert problems == [], (method, path, problems)
                seen.add((method, template))
            sessions = (await client.get("/api/sessions")).json()
            commands = (await client.get("/api/commands")).json()
            charger = (await client.get("/api/chargers/cp1")).json()
            site = (await client.get("/api/site")).json()
    finally:
        store.close()
    # OCPP-only operations are exercised by test_ocpp_responses_match_their_schemas; login and logout
    # need `auth` in the config: tests/integration/test_auth.py checks their bodies.
    assert seen | {op for op, _ in OCPP_CALLS} == set(ops) - AUTH_OPS, sorted(set(ops) - seen)
    # The calls above reached the parts of the documents that are often empty.
    assert sessions and sessions[0]["charger_id"] == "cp1"
    # The access holds (cp2 locked or out of its window: 0 A) are commands too (origin lock, schedule).
    applied = next(c for c in commands if c["origin"] == "test")
    assert {c["origin"] for c in commands} >= {"lock", "test"}
    assert applied == {
        "at": applied["at"],
        "origin": "test",
        "command": "set_lease",
        "fields": {
            "charger": "cp1",
            "name": "secc",
            "amps": 16.0,
            "expires_at": applied["fields"]["expires_at"],
        },
    }
    assert charger["limits"]["leases"]["secc"]["amps"] == 16.0
    assert charger["session"] is not None and charger["name"] == "Garage Süd"
    assert site["site_limits"]["lease"]["expires_in_s"] is not None and "sim" in site
    assert site["mains"]["voltages"] is not None and site["overloads"] and "mains" in site["meters"]


@pytest.mark.parametrize(
    "body",
    [
        {"unexpected": 1},
        {"id": 3},
    ],
)
async def test_a_wrong_body_fails_the_charger_schema(body: dict[str, Any]) -> None:
    """The validation above can fail: a charger document with a stray or mistyped field does not pass."""
    async with serve(make_config(), speed=1) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        doc = (await client.get("/openapi.json")).json()
        good = (await client.get("/api/chargers/cp1")).json()
    schema = native_operations(doc)[("GET", "/api/chargers/{cid}")]
    assert _validate(doc, schema, good) == []
    assert _validate(doc, schema, {**good, **body}) != []
    assert re.search("Charger", schema.get("$ref", ""))


# Operations that answer differently (or only) for an OCPP charger with its wallbox connected.
OCPP_CALLS: list[tuple[tuple[str, str], dict[str, Any] | None]] = [
    (("POST", "/api/chargers/{cid}/start"), {"id_tag": "card-1"}),
    (("POST", "/api/chargers/{cid}/stop"), None),
    (("PUT", "/api/chargers/{cid}/enabled"), {"enabled": True}),
    (("POST", "/api/chargers/{cid}/unlock"), None),
    (("GET", "/api/ocpp/stations"), None),
]


async def test_ocpp_responses_match_their_schemas() -> None:
    from tests.integration.test_ocpp_backend import backend_port, config, wallbox

    async with (
        serve(make_config(config()), speed=1) as (base, rt),
        httpx.AsyncClient(base_url=base) as client,
    ):
        doc = (await client.get("/openapi.json")).json()
        ops = native_operations(doc)
        async with wallbox(await backend_port(rt)) as cp:
            await cp.status("Preparing")
            await cp.wait_profile(lambda p: True)
            for (method, template), body in OCPP_CALLS:
                path = template.replace("{cid}", "w7")
                response = await client.request(method, path, json=body)
                assert response.status_code == 200, (method, path, response.text)
                answer = response.json()
                assert _validate(doc, ops[(method, template)], answer) == [], (method, path)
                if "chargers" in template:
                    assert answer["ocpp"]["status"] in ("Accepted", "Unlocked", "NoTransaction"), answer
                else:
                    assert answer[0]["connectors"]["1"]["profile"] is not None and answer[0]["boot"]
