"""The simulated home charges a car, seen through real HTTP."""

from __future__ import annotations

import asyncio

import httpx

from tests.helpers import make_config, serve


async def test_default_site_charges_within_seconds() -> None:
    async with serve(make_config(), speed=20) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        for _ in range(100):
            doc = (await client.get("/api/chargers/cp1")).json()
            if doc["work_state"] == "charger_charging":
                break
            await asyncio.sleep(0.05)
        assert doc["work_state"] == "charger_charging"
        assert doc["state"] == "C2"
        assert doc["power_w"] > 4000
