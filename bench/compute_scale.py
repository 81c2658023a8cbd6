"""`compute(snapshot, now)` time for 1 to 10,000 chargers on a 3-level circuit tree.

The site: mains → circuits → sub-circuits → chargers (10 chargers per sub-circuit, 10 sub-circuits
per circuit), three in four chargers 3-phase and the rest 1-phase spread over L1..L3, every car
wanting current in smart mode. The mains is sized so that it binds (about 12 A per charger and
phase) without pausing anyone. Each call is one tick: the clock moves 1 s, the mains reading is
fresh, the balancer state comes from the previous call and every car draws what it was given.
Prints the median and p99 wall time of the timed calls, the median CPU time (less disturbed by
other load on the machine) and the ratios of both medians to the goals (≤ 2 ms at 1,000 and
≤ 20 ms at 10,000).

`--case shortage`: the same sites under a mains that feeds only a few chargers at MIN (100 A per
phase), so most chargers are paused by the shortage rule. The run covers more than twice
`shortage_pause_s` of 1 s ticks, so paused chargers come back and are paused again; each size
prints the shortage tick's cost beside a no-shortage tick of the same size and their ratio
(goal: shortage ≤ 2 × no-shortage).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, replace

from evpilot.core import sources
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
# compute() per tick: the goal at these sizes (ms)
GOALS_MS = {1000: 2.0, 10000: 20.0}
# a shortage tick costs at most this many times a no-shortage tick of the same size
SHORTAGE_GOAL_RATIO = 2.0
# the shortage case's mains (A per phase): room for a handful of chargers at MIN
SHORTAGE_MAINS_A = 100.0


def build(n: int, shortage: bool = False) -> tuple[SiteConfig, list[ChargerInput]]:
    """A site with `n` chargers on a mains → circuit → sub-circuit tree (a tiny mains if `shortage`)."""
    subs = max(1, (n + 9) // 10)
    tops = max(1, (subs + 9) // 10)
    circuits = [CircuitConfig(f"c{t}", 600.0) for t in range(tops)]
    circuits += [CircuitConfig(f"c{s // 10}.{s}", 100.0, f"c{s // 10}") for s in range(subs)]
    mains = SHORTAGE_MAINS_A if shortage else max(25.0, 12.0 * n)
    # Readings beyond 1,000 A are refused as implausible, so the large no-shortage sites use a meter
    # that sees only the house (exclude_self_current off): a valid reading; compute then has no need
    # to sum the chargers' own draw (a few per cent of a tick).
    site = SiteConfig(
        mains_limit=mains, circuits=tuple(circuits), mode="smart", exclude_self_current=shortage
    )
    inputs = []
    for i in range(n):
        one_phase = i % 4 == 3
        s = i // 10
        cfg = ChargerConfig(
            id=f"cp{i:05d}",
            max_current=32.0,
            phases=1 if one_phase else 3,
            phase=(i // 4) % 3 + 1 if one_phase else 1,
            circuit=f"c{s // 10}.{s}",
        )
        inputs.append(
            ChargerInput(
                config=cfg,
                mode="smart",
                demand=2,
                limit=32.0,
                limit_source=sources.parse("max"),
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


@dataclass(frozen=True, slots=True)
class Timing:
    """Per-call wall and CPU seconds of the timed ticks, and the shortage figures seen."""

    wall: list[float]
    cpu: list[float]
    paused: list[int]
    resumed: int
    # wall and CPU seconds of the ticks that paused at least one charger (a shortage decision)
    pausing: list[float]
    pausing_cpu: list[float]


def bench(n: int, calls: int, warmup: int, shortage: bool = False) -> Timing:
    """Time `calls` consecutive 1 s ticks (after `warmup` untimed ones)."""
    site, inputs = build(n, shortage)
    state = BalancerState()
    paused: list[int] = []
    resumed = 0
    pausing: list[float] = []
    pausing_cpu: list[float] = []
    was_paused: set[str] = set()
    h = min(site.mains_limit, 1000.0)
    house = (0.2 * h, 0.15 * h, 0.25 * h)
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
        if not site.exclude_self_current:
            draw = [0.0, 0.0, 0.0]
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
            now_paused = {cid for cid, a in alloc.chargers.items() if a.source.text == "shortage"}
            paused.append(len(now_paused))
            old = state.chargers
            memo = alloc.state.chargers
            if any(m.paused_until > now and (cid not in old or old[cid].paused_until != m.paused_until)
                   for cid, m in memo.items()):  # fmt: skip
                pausing.append(dt)
                pausing_cpu.append(dc)
            resumed += sum(1 for cid in was_paused - now_paused if alloc.chargers[cid].current > 0)
            was_paused = now_paused
        state = alloc.state
        inputs = follow(inputs, alloc)
    return Timing(times, cpu, paused, resumed, pausing, pausing_cpu)


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _goal(n: int, ms: float, cpu_ms: float) -> str:
    goal = GOALS_MS.get(n)
    if goal is None:
        return ""
    return f"≤ {goal:g} ms: ratio {ms / goal:.2f} (cpu {cpu_ms / goal:.2f})"


def _calls(n: int, quick: bool, least: int = 10) -> int:
    budget = 20_000 if not quick else 2_000
    return max(least, min(2000, budget // max(1, n)))


def main(argv: list[str] | None = None) -> int:
    """Run every size and print a table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="comma-separated charger counts")
    p.add_argument("--case", choices=["normal", "shortage"], default="normal",
                   help="normal: the mains binds, nobody paused; shortage: most chargers paused")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="fewer calls per size")
    args = p.parse_args(argv)
    default = "1,10,100,1000,10000" if args.case == "normal" else "1000,10000"
    sizes = [int(s) for s in (args.sizes or default).split(",")]
    if args.case == "normal":
        head = f"{'chargers':>8} {'calls':>6} {'median ms':>10} {'p99 ms':>8} {'cpu ms':>7}"
        print(f"{head} {'µs/charger':>11}  goal (median)")
        for n in sizes:
            calls = _calls(n, args.quick)
            t = bench(n, calls, warmup=min(30, calls))
            med = statistics.median(t.wall) * 1000
            cpu = statistics.median(t.cpu) * 1000
            row = f"{n:8d} {calls:6d} {med:10.3f} {p99(t.wall) * 1000:8.3f} {cpu:7.3f} {med * 1000 / n:11.2f}"
            print(f"{row}  {_goal(n, med, cpu)}", flush=True)
        return 0
    # Long enough that chargers paused in the first shortage come back and are paused again.
    ticks = round(2 * SiteConfig().shortage_pause_s + 15)
    head = f"{'chargers':>8} {'ticks':>6} {'paused':>7} {'pausing':>8} {'resumed':>8} {'all ms':>8}"
    print(f"{head} {'pausing ms':>11} {'max ms':>8} {'no-shortage ms':>15} {'ratio':>6}  goals (≤ 1 meets)")
    for n in sizes:
        # every tick timed, the first (which pauses most chargers) included
        short = bench(n, ticks, warmup=0, shortage=True)
        normal = bench(n, _calls(n, args.quick, least=30), warmup=min(30, ticks))
        med_all = statistics.median(short.wall) * 1000
        med_p = statistics.median(short.pausing or short.wall) * 1000
        med_n = statistics.median(normal.wall) * 1000
        ratio = med_p / med_n
        # The same ratio in CPU time, less disturbed by other work on the machine.
        cpu_p = statistics.median(short.pausing_cpu or short.cpu) * 1000
        cpu_n = statistics.median(normal.cpu) * 1000
        ratio_cpu = cpu_p / cpu_n
        row = (
            f"{n:8d} {len(short.wall):6d} {statistics.median(short.paused):7.0f} {len(short.pausing):8d} "
            f"{short.resumed:8d} {med_all:8.3f} {med_p:11.3f} {max(short.wall) * 1000:8.3f} {med_n:15.3f} "
            f"{ratio:6.2f}"
        )
        goals = [
            f"shortage ≤ {SHORTAGE_GOAL_RATIO:g}× no-shortage: {ratio / SHORTAGE_GOAL_RATIO:.2f}"
            f" (cpu {ratio_cpu:.2f}×: {ratio_cpu / SHORTAGE_GOAL_RATIO:.2f})"
        ]
        if n in GOALS_MS:
            goals.append(f"no-shortage {_goal(n, med_n, cpu_n)}")
        print(f"{row}  {'; '.join(goals)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
