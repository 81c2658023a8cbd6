"""`sim.enabled: false`: evpilot runs a real meter with no simulator loaded, and /api/sim/* is not found."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.fixture_http import FixtureServer, fixture
from tests.helpers import free_port

SRC = Path(__file__).resolve().parents[2] / "src"

SCRIPT = r"""
import asyncio, json, sys

import httpx, uvicorn

import evpilot.cli  # everything the command imports
from evpilot.api.app import create_app
from evpilot.api.server import server_config
from evpilot.config import parse_config
from evpilot.control.clock import ScaledClock
from evpilot.control.runtime import Runtime


async def main() -> None:
    rt = Runtime(parse_config(json.loads(sys.argv[1])), ScaledClock(1.0), None)
    port = int(sys.argv[2])
    server = uvicorn.Server(server_config(create_app(rt), "127.0.0.1", port))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    out = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
        for _ in range(200):
            meters = (await c.get("/api/meters")).json()
            if meters and meters[0]["reading"] is not None:
                break
            await asyncio.sleep(0.05)
        out["meters"] = meters
        for _ in range(200):
            out["site"] = (await c.get("/api/site")).json()
            if out["site"]["mains"] is not None:
                break
            await asyncio.sleep(0.05)
        out["health"] = (await c.get("/api/health")).json()
        sim = [
            await c.post("/api/sim/chargers/cp1/plug", json={"soc": "bad"}),
            await c.put("/api/sim/house", json={"currents": [1, 2, 3]}),
            await c.put("/api/sim/mains_meter", json={"online": False}),
            await c.get("/api/sim/anything/else"),
        ]
        out["sim"] = [[r.status_code, r.json()] for r in sim]
    server.should_exit = True
    await task
    out["modules"] = sorted(
        m for m in sys.modules if m.startswith("evpilot.sim") or m == "evpilot.devices.sim"
    )
    print(json.dumps(out))


asyncio.run(main())
"""


async def test_no_simulator_loaded_real_meter_read_and_sim_routes_not_found() -> None:
    server = FixtureServer()
    server.json("/api/v1/data", fixture("homewizard_p1_3phase.json"))
    await server.start()
    config = {
        "sim": {"enabled": False},
        "site": {
            "mains_meter": {"type": "homewizard", "host": "127.0.0.1", "port": server.port, "poll_s": 0.2}
        },
        "chargers": [],
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SCRIPT,
            json.dumps(config),
            str(free_port()),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await server.stop()
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert doc["modules"] == []
    for status, body in doc["sim"]:
        assert status == 404
        assert body == {
            "error": "not_found",
            "detail": "the simulator is off (sim.enabled: false): /api/sim/ routes are not available",
        }
    [mains] = doc["meters"]
    assert mains["name"] == "mains" and mains["driver"] == "homewizard"
    assert mains["model"] == "ISKRA  2M550T-101"
    assert mains["address"] == f"127.0.0.1:{server.port}"
    assert mains["online"] is True and mains["errors"] == {}
    reading = mains["reading"]
    assert reading["currents"] == [-4.0, 2.0, 0.0]
    assert reading["import_kwh"] == 13779.338 and reading["powers"] == [-676.0, 133.0, 0.0]
    assert reading["age_s"] >= 0
    site = doc["site"]
    assert "sim" not in site
    assert site["mains"]["currents"] == [-4.0, 2.0, 0.0] and site["mains"]["voltages"] == [230.1] * 3
    assert site["meters"]["mains"]["currents"] == [-4.0, 2.0, 0.0]
    tasks = {t["name"]: t["state"] for t in doc["health"]["tasks"]}
    assert tasks["meter:mains"] == "running"
