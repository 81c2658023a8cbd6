"""Fuzz the Shelly facade of a running evpilot process: no 5xx, always a Shelly result or error object."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import evpilot_process

METHODS = [
    "Shelly.GetDeviceInfo",
    "Shelly.GetStatus",
    "Shelly.GetConfig",
    "Shelly.GetComponents",
    "Shelly.ListMethods",
    "Sys.GetStatus",
    "Sys.GetConfig",
    "Service.GetConfig",
    "Service.GetStatus",
    "Service.SetConfig",
    "Enum.GetStatus",
    "Enum.GetConfig",
    "Number.GetStatus",
    "Number.GetConfig",
    "Number.Set",
    "Boolean.GetStatus",
    "Boolean.GetConfig",
    "Boolean.Set",
    "Object.GetStatus",
    "Object.GetConfig",
]
KEYS = ["id", "owner", "role", "value", "config", "offset", "dynamic_only", "include", "keys", "auto_balance"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
)
scalars = scalars | st.sampled_from(
    ["service:0", "current_limit", "start_charging", "work_state", "10.0.0.9"]
)
json_values = st.recursive(
    scalars | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
params = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)
methods = st.sampled_from(METHODS) | st.text(min_size=1, max_size=24)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("shelly-fuzz")
    with evpilot_process(tmp, {"chargers": [{"id": "cp1"}, {"id": "cp2", "max_current": 16}]}) as (
        url,
        _proc,
    ):
        yield url


def _check(resp: httpx.Response) -> Any:
    assert resp.status_code < 500, resp.text
    if resp.status_code in (307, 308):  # a method such as "." or ".." normalises to another path
        return None
    return resp.json()


def _limits_sane(client: httpx.Client) -> None:
    for cid in ("cp1", "cp2"):
        doc = client.get(f"/chargers/{cid}/rpc/Number.GetStatus?id=200").json()
        assert 6 <= doc["value"] <= (32 if cid == "cp1" else 16)


@settings(max_examples=80)
@given(method=methods, args=params, charger=st.sampled_from(["", "/chargers/cp2", "/chargers/zz"]))
def test_frames_never_fail_the_server(base: str, method: str, args: dict[str, Any], charger: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        frame = {"id": 1, "src": "fuzz", "method": method, "params": args}
        doc = _check(client.post(f"{charger}/rpc", json=frame))
        assert ("result" in doc) != ("error" in doc) or "code" in doc
        if "error" in doc:
            assert isinstance(doc["error"]["code"], int) and doc["error"]["message"]
        _check(client.post(f"{charger}/rpc/{quote(method, safe='')}", json=args))
        query = "&".join(f"{quote(k)}={quote(json.dumps(v))}" for k, v in args.items())
        got = _check(client.get(f"{charger}/rpc/{quote(method, safe='')}?{query}"))
        if isinstance(got, dict) and "code" in got:
            assert isinstance(got["code"], int) and got["message"]
        _limits_sane(client)


@settings(max_examples=40)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_raw_bodies_and_queries(base: str, raw: bytes) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        _check(client.post("/rpc", content=raw))
        _check(client.post("/rpc/Number.Set", content=raw))
        _check(client.get("/rpc/Number.Set?" + quote(raw, safe="=&")))
        _limits_sane(client)
