"""Oversized bodies are refused even without a Content-Length (chunked), and change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from tests.helpers import make_config, serve


async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    """Stream `parts` as a chunked body."""
    for part in parts:
        yield part


async def test_chunked_bodies_are_limited_and_small_ones_pass() -> None:
    async with serve(make_config(), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        headers = {"content-type": "application/json"}
        r = await c.put(
            "/api/chargers/cp1/current_limit", content=chunks([b"x" * 1024] * 100), headers=headers
        )
        assert r.status_code == 413
        assert r.json()["error"] == "too_large"
        assert rt.charger("cp1").user_limit is None
        r = await c.put(
            "/api/chargers/cp1/current_limit", content=chunks([b'{"current": ', b"10}"]), headers=headers
        )
        assert r.status_code == 200, r.text
        assert rt.charger("cp1").user_limit == 10.0
        # The facades' own guards work the same way (ESP32-EVSE answers in its plain-text style).
        r = await c.post(
            "/api/v1/state/charging-current", content=chunks([b"1" * 4096] * 40), headers=headers
        )
        assert r.status_code == 413
        assert rt.charger("cp1").user_limit == 10.0
