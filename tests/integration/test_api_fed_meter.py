"""An API-fed mains meter drives a simulated car through a real running evpilot."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import evpilot_process

SPEED = 10.0
CONFIG: dict[str, Any] = {
    "site": {"mains_limit": 25, "mains_meter": "api", "meter_timeout_s": 11, "fallback_current": 8},
    "chargers": [{"id": "cp1", "max_current": 32}],
    "sim": {"pv_kwp": 0, "spike_rate_h": 0, "first_spike_s": None, "house_base": [0, 0, 0]},
}


def feed_until(
    client: httpx.Client, house: tuple[float, float, float], done: Any, timeout: float = 20.0
) -> dict[str, Any]:
    """Act as the meter: report house + the car's own draw until `done(charger)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        doc = client.get("/api/chargers/cp1").json()
        mains = [h + a for h, a in zip(house, doc["amperage"], strict=True)]
        r = client.put("/api/meters/mains", json={"currents": mains})
        assert r.status_code == 200, r.text
        if done(doc):
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)


def test_api_fed_mains_meter_drives_the_car(tmp_path: Path) -> None:
    with (
        evpilot_process(tmp_path, CONFIG, speed=SPEED) as (base, _proc),
        httpx.Client(base_url=base, timeout=5) as client,
    ):
        # House draws 10 A per phase: 15 A left for the car.
        doc = feed_until(
            client,
            (10, 10, 10),
            lambda d: d["current"]["signaled"] == 15.0 and d["limit_source"] == "mains",
        )
        assert doc["amperage"][0] <= 15.05
        # A heavy load on L1: the car drops at once to what L1 leaves.
        doc = feed_until(
            client, (17, 4, 4), lambda d: d["current"]["allocated"] == 8.0 and d["limit_source"] == "mains"
        )
        site = client.get("/api/site").json()
        assert site["mains"]["fresh"] is True
        # The feed stops: after the 11 s timeout the charger falls back.
        deadline = time.monotonic() + 20
        while True:
            doc = client.get("/api/chargers/cp1").json()
            if doc["limit_source"] == "fallback":
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.05)
        assert doc["current"]["allocated"] <= 8.0
        assert client.get("/api/site").json()["fallback"] is True
        # Data returns: charging resumes under the meter's control.
        feed_until(client, (5, 5, 5), lambda d: d["current"]["allocated"] >= 19.9)


def test_bad_meter_feed_changes_nothing(tmp_path: Path) -> None:
    with (
        evpilot_process(tmp_path, CONFIG, speed=SPEED) as (base, _proc),
        httpx.Client(base_url=base, timeout=5) as client,
    ):
        before = client.get("/api/site").json()["mains"]
        for body in (
            {"currents": [1, 2]},
            {"currents": ["a", 1, 1]},
            {"currents": [1e9, 1, 1]},
            {"volts": [1, 2, 3]},
        ):
            r = client.put("/api/meters/mains", json=body)
            assert r.status_code in (400, 422), (body, r.text)
            assert r.json()["error"] == "invalid"
        assert client.get("/api/site").json()["mains"] == before
