"""One body reader, one error envelope, one number reader: the same refusal in every facade's convention."""

from __future__ import annotations

import json

import httpx
import pytest

from evpilot.api.edge import Problem, Refusal, boolean, integer, number
from evpilot.core.errors import CommandError
from tests.helpers import make_config, serve

ENVELOPE = {"error", "detail", "problems"}


def test_the_envelope_names_each_problem_and_the_single_field() -> None:
    one = Refusal(400, "invalid", [Problem("current", "33 A is out of range", (6.0, 32.0))]).envelope()
    assert one == {
        "error": "invalid",
        "detail": "current: 33 A is out of range",
        "problems": [
            {"field": "current", "detail": "33 A is out of range", "allowed": {"min": 6.0, "max": 32.0}}
        ],
        "field": "current",
    }
    two = Refusal(422, "invalid", [Problem("a", "x"), Problem("b", "y")]).envelope()
    assert two["detail"] == "a: x; b: y" and "field" not in two
    whole = Refusal(404, "http", [Problem("", "Not Found")]).envelope()
    assert whole["detail"] == "Not Found" and "field" not in whole


@pytest.mark.parametrize("bad", [True, False, "10", None, [1], {"v": 1}, 2**60, float("nan"), float("inf")])
def test_number_refuses_what_is_not_a_finite_number(bad: object) -> None:
    with pytest.raises(CommandError) as info:
        number("limit", bad)
    assert info.value.field == "limit" and "must be a number" in info.value.message


def test_number_range_and_integer_and_boolean() -> None:
    assert number("x", 7, 6, 32) == 7.0 and isinstance(number("x", 7), float)
    with pytest.raises(CommandError) as info:
        number("x", 33, 6, 32, " A")
    assert info.value.allowed == (6, 32) and "allowed 6 to 32 A" in info.value.message
    assert integer("n", 3, 0, 4) == 3
    for bad in (3.0, True, "3"):
        with pytest.raises(CommandError):
            integer("n", bad, 0, 4)
    with pytest.raises(CommandError):
        integer("n", 5, 0, 4)
    assert boolean("b", False) is False
    with pytest.raises(CommandError):
        boolean("b", 0)


async def test_one_refusal_in_each_facades_convention() -> None:
    async with serve(make_config()) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        big = b" " * 70_000 + b"{}"
        json_type = {"content-type": "application/json"}
        # Oversized bodies: the envelope (native, SECC), the firmware's text (ESP32), an RPC error (Shelly).
        native = await c.put("/api/chargers/cp1/current_limit", content=big, headers=json_type)
        secc = await c.put("/api/v1/limits", content=big, headers=json_type)
        assert native.status_code == secc.status_code == 413
        for r in (native, secc):
            doc = r.json()
            assert set(doc) >= ENVELOPE and doc["error"] == "too_large" and doc["field"] == "body", doc
        esp = await c.post("/api/v1/state/charging-current", content=big, headers=json_type)
        assert (esp.status_code, esp.text) == (413, "JSON size must be less than 50KB!")
        shelly = await c.post("/rpc/Number.Set", content=big, headers=json_type)
        assert shelly.status_code == 413 and shelly.json()["code"] == -103

        # Unknown charger: the same envelope from the native API and SECC.
        for path in ("/api/chargers/nope", "/chargers/nope/api/v1/limits"):
            doc = (await c.get(path)).json()
            assert set(doc) >= ENVELOPE and doc["error"] == "not_found" and doc["field"] == "charger", doc

        # A boolean where a number belongs: one number reader, each facade's words around it.
        esp = await c.post("/api/v1/state/charging-current", content=b"true", headers=json_type)
        assert esp.status_code == 400 and esp.text.endswith("chargingCurrent: must be a number")
        rpc = await c.post("/rpc/Number.Set", json={"id": 200, "value": True})
        assert rpc.json() == {"code": -103, "message": "Argument 'value' must be a number"}
        secc = await c.put("/api/v1/limits", json={"amperageLimit": True})
        assert secc.status_code == 400 and secc.json()["field"] == "amperageLimit"

        # A body not declared as JSON: the native API and ESP32-EVSE say so, each in its own words.
        native = await c.put("/api/chargers/cp1/current_limit", content=b'{"current": 10}')
        assert native.status_code == 415 and native.json()["field"] == "content-type"
        esp = await c.post("/api/v1/state/charging-current", content=b"10")
        assert (esp.status_code, esp.text) == (415, "Not JSON body")
        # The SECC API reads any body as JSON, as before.
        ok = await c.put("/api/v1/limits", content=json.dumps({"amperageLimit": 10}).encode())
        assert ok.status_code == 200 and rt.charger("cp1").leases["lease"].value == 10
