"""`compute(snapshot, now)` time for 1 to 10,000 chargers on a 3-level circuit tree.

The site: mains → circuits → sub-circuits → chargers (10 chargers per sub-circuit, 10 sub-circuits
per circuit), three in four chargers 3-phase and the rest 1-phase spread over L1..L3, every car
wanting current in smart mode. The mains is sized so that it binds (about 12 A per charger and
phase) without pausing anyone. Each call is one tick: the clock moves 1 s, the mains reading is
fresh, the balancer state comes from the previous call and every car draws what it was given.
Prints the median and p99 wall time of the timed calls, the median CPU time (less disturbed by
other load on the machine) and the ratio to the goal (≤ 5 ms at 1,000).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

from evpilot.core.balancer import compute
from evpilot.core.charger import ChargerConfig
from evpilot.core.site import (
    Allocation,
    BalancerState,
    ChargerInput,
    CircuitConfig,
    Reading,
    SiteConfig,
    Snapshot,
)

START = 1_700_000_000.0
GOAL_MS_AT_1000 = 5.0


def build(n: int) -> tuple[SiteConfig, list[ChargerInput]]:
    """A site with `n` chargers on a mains → circuit → sub-circuit tree."""
    subs = max(1, (n + 9) // 10)
    tops = max(1, (subs + 9) // 10)
    circuits = [CircuitConfig(f"c{t}", 600.0) for t in range(tops)]
    circuits += [CircuitConfig(f"c{s // 10}.{s}", 100.0, f"c{s // 10}") for s in range(subs)]
    site = SiteConfig(mains_limit=max(25.0, 12.0 * n), circuits=tuple(circuits), mode="smart")
    inputs = []
    for i in range(n):
        one_phase = i % 4 == 3
        s = i // 10
        cfg = ChargerConfig(
            id=f"cp{i:05d}",
            max_current=32.0,
            phases=1 if one_phase else 3,
            phase=(i // 4) % 3 + 1,
            circuit=f"c{s // 10}.{s}",
        )
        inputs.append(
            ChargerInput(
                config=cfg,
                mode="smart",
                demand=2,
                limit=32.0,
                limit_source="max",
                measured=(0.0, 0.0, 0.0),
                phase_mode="not_present",
                active_phases=cfg.phases,
                charging=False,
            )
        )
    return site, inputs


def follow(inputs: list[ChargerInput], alloc: Allocation) -> list[ChargerInput]:
    """Every car now draws what it was allocated."""
    out = []
    for ci in inputs:
        a = alloc.chargers[ci.config.id].current
        measured = (a, a, a) if ci.config.phases == 3 else (a, 0.0, 0.0)
        out.append(replace(ci, measured=measured, charging=a > 0.5))
    return out


def bench(n: int, calls: int, warmup: int) -> tuple[list[float], list[float]]:
    """Time `calls` consecutive ticks (after `warmup` untimed ones): wall and CPU seconds per call."""
    site, inputs = build(n)
    state = BalancerState()
    house = (0.2 * site.mains_limit, 0.15 * site.mains_limit, 0.25 * site.mains_limit)
    times = []
    cpu = []
    for k in range(warmup + calls):
        now = START + k
        draw = [0.0, 0.0, 0.0]
        for ci in inputs:
            m = ci.measured
            if ci.config.phases == 3:
                draw = [draw[0] + m[0], draw[1] + m[1], draw[2] + m[2]]
            else:
                draw[ci.config.phase - 1] += m[0]
        mains = Reading((house[0] + draw[0], house[1] + draw[1], house[2] + draw[2]), now)
        snap = Snapshot(site=site, chargers=tuple(inputs), mains=mains, state=state)
        c0 = time.process_time()
        t0 = time.perf_counter()
        alloc = compute(snap, now)
        dt = time.perf_counter() - t0
        dc = time.process_time() - c0
        if k >= warmup:
            times.append(dt)
            cpu.append(dc)
        state = alloc.state
        inputs = follow(inputs, alloc)
    return times, cpu


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    """Run every size and print a table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,10,100,1000,10000", help="comma-separated charger counts")
    p.add_argument("--quick", action="store_true", help="fewer calls per size")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    head = f"{'chargers':>8} {'calls':>6} {'median ms':>10} {'p99 ms':>8} {'cpu ms':>7}"
    print(f"{head} {'µs/charger':>11}  goal")
    for n in sizes:
        budget = 20_000 if not args.quick else 2_000
        calls = max(10, min(2000, budget // max(1, n)))
        times, cpu = bench(n, calls, warmup=min(30, calls))
        med = statistics.median(times) * 1000
        tail = p99(times) * 1000
        med_cpu = statistics.median(cpu) * 1000
        goal = ""
        if n == 1000:
            goal = f"≤ {GOAL_MS_AT_1000:g} ms: ratio {med / GOAL_MS_AT_1000:.2f}"
        row = f"{n:8d} {calls:6d} {med:10.3f} {tail:8.3f} {med_cpu:7.3f} {med * 1000 / n:11.2f}"
        print(f"{row}  {goal}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
