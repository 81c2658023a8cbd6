"""The sample configs in examples/ pass `evpilot config check` and run without overloading a fuse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evpilot.config import parse_config
from evpilot.control.build import assemble

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
START = 1_700_000_000.0


def test_there_are_the_four_examples() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"home-pv", "garage-two-chargers", "capacity-tariff", "small-depot"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_config_check_accepts_the_example(path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "evpilot", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == f"{path}: ok"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_example_site_runs_within_its_fuses(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if doc.get("sim", {}).get("modbus_twins"):
        # Its mains meter is the simulator's, read over Modbus by a task this loop does not run
        # (test_modbus_site runs that path); here the engine reads the same simulated meter directly.
        doc["site"]["mains_meter"] = "sim"
        doc["sim"]["modbus_twins"] = False
    config = parse_config(doc)
    parts = assemble(config, START)
    sim = parts.sim
    assert sim is not None
    limit = config.site.mains_limit
    over = [0, 0, 0]
    delivered = 0.0
    for t in range(900):
        parts.engine.step(START + t)
        for p, amps in enumerate(sim.mains_currents):
            over[p] = over[p] + 1 if amps > limit + 0.05 else 0
            # The house alone may exceed nothing here; the chargers never keep a phase over for 6 s.
            assert over[p] < 7, f"{path.stem}: L{p + 1} over {limit} A for 7 s at t={t}"
    delivered = sum(ch.lifetime_kwh for ch in parts.engine.chargers.values())
    assert delivered > 0.1, f"{path.stem}: no energy delivered in 15 minutes"
