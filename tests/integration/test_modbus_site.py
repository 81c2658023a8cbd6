"""A simulated site read through real Modbus: `sim.modbus_twins` serves the simulated mains meter as a
pymodbus twin on loopback and the `modbus` driver from the registry reads it, as for a real meter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from evpilot.config import ConfigError, parse_config
from tests.helpers import free_port, serve

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sim-modbus.yaml"


def _example(port: int) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    doc["site"]["mains_meter"]["port"] = port
    # A steady house, no car: the meter's currents are the simulated house's.
    doc["sim"].update(pv_kwp=0, spike_rate_h=0, first_spike_s=None, cars=[])
    return doc


async def test_the_example_runs_its_mains_meter_through_modbus() -> None:
    config = parse_config(_example(free_port()))
    async with serve(config) as (base, rt), httpx.AsyncClient(base_url=base) as client:
        mains: dict[str, Any] = {}
        for _ in range(300):
            meters = (await client.get("/api/meters")).json()
            mains = next(m for m in meters if m["name"] == "mains")
            if mains["reading"] is not None:
                break
            await asyncio.sleep(0.02)
        assert mains["driver"] == "modbus" and mains["model"] == "sdm630"
        assert mains["address"].endswith("unit 1") and mains["online"] is True
        assert rt.sim is not None and rt.twins is not None
        sim = rt.sim.mains_meter()
        assert mains["reading"]["currents"] == pytest.approx(list(sim.currents), abs=0.05)
        assert mains["reading"]["voltages"] == pytest.approx(list(sim.voltages), abs=0.5)
        # The next control tick balances on it: GET /api/site shows the Modbus reading as the mains.
        for _ in range(300):
            site = (await client.get("/api/site")).json()
            if site["mains"] is not None:
                break
            await asyncio.sleep(0.02)
        assert site["mains"]["currents"] == pytest.approx(list(rt.sim.mains_meter().currents), abs=0.05)
    assert rt.twins is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sim": {"modbus_twins": True, "enabled": False}}, "sim.enabled is false"),
        ({"site": {"mains_meter": "sim"}}, "needs site.mains_meter as a Modbus TCP mapping"),
        (
            {"site": {"mains_meter": {"type": "modbus", "model": "sdm630", "host": "192.0.2.7"}}},
            "loopback only",
        ),
    ],
)
def test_modbus_twins_refusals_name_the_key(change: dict[str, Any], message: str) -> None:
    doc = _example(15020)
    for section, values in change.items():
        doc[section].update(values)
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert any(key == "sim.modbus_twins" and message in msg for key, msg in err.value.errors), (
        err.value.errors
    )


def test_an_unknown_modbus_model_is_refused_by_the_config() -> None:
    doc = _example(15020)
    doc["site"]["mains_meter"]["model"] = "sdm999"
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert any("unknown meter model 'sdm999'" in msg for _key, msg in err.value.errors), err.value.errors
