"""Two evpilot processes: one the OCPP backend with a site limit, one a charge point it balances (and
whose cable lock the backend's native API opens)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import evpilot_process, free_port


def test_the_backends_allocation_reaches_the_charge_point_as_a_profile(tmp_path: Path) -> None:
    port = free_port()
    for part in ("backend", "cp"):
        (tmp_path / part).mkdir()
    backend: dict[str, Any] = {
        "site": {"mains_limit": 25, "mains_meter": "api", "meter_timeout_s": 11},
        "chargers": [
            {"id": "bay1", "max_current": 32, "driver": {"type": "ocpp", "id": "EVPILOT-01", "connector": 1}}
        ],
        "sim": {"enabled": False},
        "ocpp_server": {"host": "127.0.0.1", "port": port},
    }
    charge_point: dict[str, Any] = {
        "site": {"mains_limit": 63},
        "chargers": [{"id": "cp1", "max_current": 32, "fixed_cable": False, "lock": "solenoid"}],
        "sim": {"pv_kwp": 0, "spike_rate_h": 0, "first_spike_s": None, "house_base": [0, 0, 0]},
        "ocpp": {"url": f"ws://127.0.0.1:{port}/ocpp/", "id": "EVPILOT-01", "meter_sample_s": 5},
    }
    with (
        evpilot_process(tmp_path / "backend", backend) as (b_url, _b),
        evpilot_process(tmp_path / "cp", charge_point) as (c_url, _c),
        httpx.Client(base_url=b_url, timeout=5) as b,
        httpx.Client(base_url=c_url, timeout=5) as c,
    ):

        def profile_amps() -> float | None:
            limits = c.get("/api/chargers/cp1").json()["limits"]["profiles"]
            found = [p["amps"] for p in limits.values()]
            return min(found) if found else None

        def feed_until(house: float, done: Any, timeout: float = 30) -> None:
            deadline = time.monotonic() + timeout
            while not done():
                draw = b.get("/api/chargers/bay1").json()["amperage"]
                r = b.put("/api/meters/mains", json={"currents": [house + a for a in draw]})
                assert r.status_code == 200, r.text
                assert time.monotonic() < deadline, (b.get("/api/ocpp/stations").json(), profile_amps())
                time.sleep(0.2)

        # The charge point connects and boots; the backend lists it and sends it its profile.
        feed_until(5.0, lambda: (p := profile_amps()) is not None and p >= 6)
        (st,) = b.get("/api/ocpp/stations").json()
        assert st["id"] == "EVPILOT-01" and st["connected"] and st["boot"] is not None
        # A mains change at the backend: 17 A of house load leaves 8 A; the charge point's engine
        # gets it as its OCPP profile limit.
        feed_until(17.0, lambda: profile_amps() == 8.0)
        assert c.get("/api/chargers/cp1").json()["current"]["signaled"] <= 8.0

        # The backend's native unlock reaches the charge point as UnlockConnector: its lock is forced
        # open, and the answer is the actuator's.
        r = b.post("/api/chargers/bay1/unlock")
        assert r.status_code == 200 and r.json()["ocpp"] == {
            "action": "UnlockConnector",
            "status": "Unlocked",
        }
        assert c.get("/api/chargers/cp1/access").json()["lock"]["state"] == "unlocked"
        forced = [(x["origin"], x["fields"]) for x in c.get("/api/commands").json()]
        assert ("ocpp", {"charger": "cp1", "setting": "force_unlock"}) in forced
