"""Simulation speed: 24 h of the default site and of a 100-charger site at 1 s steps.

Runs the ticks through `Engine.run` (no asyncio, no HTTP; `--no-leap`: `Engine.step` in a plain loop)
and prints sim-seconds per wall-second, the wall and CPU time and the CPU time's ratio to the goal
(≤ 1.0 meets it): 24 h of the default site ≤ 0.5 CPU s, of the 100-charger fleet ≤ 15 CPU s (scaled
with `--hours` and `--chargers`).
`--digest` also prints a hash of every charger's signaled current at every tick, to check that an
optimization did not change behaviour (the digest costs a little time, so compare timings without it).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

from evpilot.config import AppConfig, parse_config
from evpilot.control.build import assemble

START = 1_700_000_000.0
DAY_S = 86400
# CPU seconds for 24 simulated hours
GOAL_DEFAULT_CPU_S = 0.5
GOAL_FLEET_CPU_S = 15.0


@dataclass(frozen=True, slots=True)
class Result:
    """What one run measured."""

    name: str
    sim_s: int
    wall_s: float
    cpu_s: float
    goal_cpu_s: float
    delivered_kwh: float
    digest: str | None


def default_config() -> AppConfig:
    """The site evpilot runs with no config: one charger, 25 A mains, PV, one car at start."""
    return AppConfig()


def fleet_config(chargers: int = 100, seed: int = 7) -> AppConfig:
    """A depot: `chargers` chargers on circuits of 10 under a 200 A mains, cars arriving all day."""
    rng = random.Random(seed)
    groups = max(1, (chargers + 9) // 10)
    circuits: list[dict[str, Any]] = [{"name": f"feeder{g}", "limit": 100} for g in range((groups + 4) // 5)]
    circuits += [{"name": f"c{g}", "limit": 63, "parent": f"feeder{g // 5}"} for g in range(groups)]
    cps: list[dict[str, Any]] = []
    cars: list[dict[str, Any]] = []
    for i in range(chargers):
        cid = f"cp{i:03d}"
        one_phase = i % 4 == 3
        cp: dict[str, Any] = {
            "id": cid,
            "circuit": f"c{i // 10}",
            "phases": 1 if one_phase else 3,
            "max_current": 32,
            "priority": 1 if i % 10 == 0 else 0,
        }
        if one_phase:
            cp["phase"] = (i % 3) + 1
        cps.append(cp)
        # Two visits a day: a morning/daytime car and an evening car that may stay overnight.
        t = rng.uniform(0, 8 * 3600)
        for _ in range(2):
            stay = rng.uniform(2 * 3600, 8 * 3600)
            cars.append(
                {
                    "charger": cid,
                    "at_s": round(t),
                    "unplug_at_s": round(t + stay),
                    "battery_kwh": rng.choice([40, 60, 77, 100]),
                    "soc": round(rng.uniform(10, 70), 1),
                    "max_current": rng.choice([16, 32]),
                    "phases": 1 if one_phase or rng.random() < 0.2 else 3,
                }
            )
            t += stay + rng.uniform(600, 4 * 3600)
    return parse_config(
        {
            # A depot cannot give every charger MIN at once, so with a stale meter or a lost controller
            # the chargers stop: all of them at 6 A would overload the mains and the feeders.
            "site": {"mains_limit": 200, "circuits": circuits, "fallback_current": 0},
            "chargers": [{**cp, "safe_current": 0} for cp in cps],
            "sim": {"seed": seed, "pv_kwp": 50, "house_base": [20, 18, 22], "cars": cars},
        }
    )


def run(
    name: str, config: AppConfig, seconds: int, goal_cpu_s: float, digest: bool, leap: bool = True
) -> Result:
    """Simulate `seconds` of `config` at 1 s ticks (`Engine.run`: settled chargers asleep, steady
    stretches leapt over; `leap` False: every tick a full `step`); returns the timing and key outputs."""
    parts = assemble(config, START)
    engine = parts.engine
    sim = parts.sim
    assert sim is not None
    chargers = list(engine.chargers.values())
    h = hashlib.blake2b(digest_size=16) if digest else None
    pack = struct.Struct(f"<{len(chargers)}d").pack
    end = START + seconds

    def hash_row(now: float) -> None:
        assert h is not None
        h.update(pack(*[c.signaled for c in chargers]))

    c0 = time.process_time()
    t0 = time.perf_counter()
    if leap:
        engine.run(START, end, 1.0, hash_row if h is not None else None)
    else:
        for k in range(1, seconds + 1):
            engine.step(START + k)
            if h is not None:
                hash_row(START + k)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    delivered = sum(p.energy_kwh for p in sim.pilots.values())
    return Result(name, seconds, wall, cpu, goal_cpu_s, delivered, h.hexdigest() if h is not None else None)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print a table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, default=24.0, help="simulated hours per run (default 24)")
    p.add_argument("--chargers", type=int, default=100, help="chargers in the fleet run (default 100)")
    p.add_argument("--only", choices=["default", "fleet"], help="run only one of the two sites")
    p.add_argument("--digest", action="store_true", help="also hash signaled currents per tick")
    p.add_argument(
        "--no-leap", action="store_true", help="run every tick as a full step (no sleeping chargers, no leap)"
    )
    args = p.parse_args(argv)
    seconds = int(args.hours * 3600)
    scale = seconds / DAY_S
    runs = []
    if args.only in (None, "default"):
        runs.append(("default site (1 charger)", default_config(), GOAL_DEFAULT_CPU_S * scale))
    if args.only in (None, "fleet"):
        goal = GOAL_FLEET_CPU_S * scale * args.chargers / 100
        runs.append((f"fleet ({args.chargers} chargers)", fleet_config(args.chargers), goal))
    head = f"{'site':28} {'sim s':>7} {'wall s':>8} {'cpu s':>7} {'sim s/wall s':>13} {'goal cpu s':>11}"
    print(f"{head} {'cpu ratio':>10}  kWh")
    for name, config, goal in runs:
        r = run(name, config, seconds, goal, args.digest, not args.no_leap)
        line = (
            f"{r.name:28} {r.sim_s:7d} {r.wall_s:8.2f} {r.cpu_s:7.2f} {r.sim_s / r.wall_s:13.0f} "
            f"{r.goal_cpu_s:11.2f} {r.cpu_s / r.goal_cpu_s:10.2f}  {r.delivered_kwh:.4f}"
        )
        if r.digest is not None:
            line += f"  digest {r.digest}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
