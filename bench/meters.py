"""Modbus meters: read rate and latency, and what polling many meters costs the controller.

The meters are pymodbus twins (real servers) in a child process, so the figures below are the
driver side only:

1. one SDM630 over TCP on loopback, polled back to back: polls/s (one poll = one 76-register read)
   and the p50/p99 latency of a poll;
2. 32 SDM630s, each its own TCP endpoint, polled at 1 Hz for `--seconds`: this process's CPU share
   of one core, and the lateness of a tick-like task (woken every 0.1 s for enough samples; the
   control tick runs every `control.tick_s`, 1 s by default), next to the same task with no meters;
3. 8 meters on one RTU line (a pty pair, units 1-8 on one shared, locked port) at 1 Hz: the same.

The issue sets no numbers; the goals printed are evpilot's own (ratio ≤ 1.00 meets the goal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from evpilot.devices.modbus.driver import ModbusMeter, ModbusSpec

GOAL_READS_PER_S = 200.0
GOAL_P99_MS = 20.0
GOAL_CPU_32_TCP = 0.10  # share of one core
GOAL_CPU_8_RTU = 0.05
GOAL_JITTER_P99_MS = 10.0
TICK_PROBE_S = 0.1

CHILD = """
import asyncio, json, sys
from evpilot.devices.modbus.maps import MAPS
from evpilot.devices.modbus.twin import MeterTwin, TwinServer

async def main(kind, n):
    servers = []
    twins = []
    for i in range(n if kind == "tcp" else 1):
        ids = [1] if kind == "tcp" else list(range(1, n + 1))
        units = {u: MeterTwin(MAPS["sdm630"]) for u in ids}
        for t in units.values():
            t.set((10.0, -2.0, 3.0), import_kwh=100.0)
        twins += units.values()
        s = TwinServer(units)
        servers.append(s)
    where = []
    for s in servers:
        if kind == "tcp":
            where.append(list(await s.start_tcp()))
        else:
            where.append(await s.start_rtu(baudrate=115200))
    print(json.dumps(where), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for s in servers:
        await s.stop()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def _twins(kind: str, n: int) -> tuple[asyncio.subprocess.Process, list[object]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        kind,
        str(n),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=None,
    )
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    return proc, json.loads(line)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    await proc.wait()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_meter(polls: int) -> None:
    proc, where = await _twins("tcp", 1)
    host, port = where[0]  # type: ignore[misc]
    lat: list[float] = []
    async with ModbusMeter("bench", ModbusSpec(model="sdm630", host=host, port=port), time.monotonic) as m:
        for _ in range(50):
            await m.poll_once()
        start, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(polls):
            t = time.perf_counter()
            if await m.poll_once() is None:
                raise SystemExit(f"poll failed: {m.health().last_error}")
            lat.append(time.perf_counter() - t)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    await _stop(proc)
    rate = polls / wall
    p50, p99 = 1000 * statistics.median(lat), 1000 * _pct(lat, 0.99)
    print(
        f"one SDM630, TCP loopback: {rate:8.0f} polls/s"
        f" (goal ≥ {GOAL_READS_PER_S:.0f}, ratio {GOAL_READS_PER_S / rate:.2f})"
    )
    print(
        f"  poll latency p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        f" (goal p99 ≤ {GOAL_P99_MS:.0f} ms, ratio {p99 / GOAL_P99_MS:.2f})"
    )
    # The longest a single poll can hold the event loop (and so delay the tick) is about its CPU time.
    print(f"  CPU per poll {1000 * cpu / polls:.3f} ms (this process: client and decoding)")


async def _tick(period: float, stop: asyncio.Event, late: list[float]) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + period
    while not stop.is_set():
        await asyncio.sleep(max(0.0, due - loop.time()))
        late.append(loop.time() - due)
        due += period


async def fleet(kind: str, n: int, seconds: float, cpu_goal: float) -> None:
    proc, where = await _twins(kind, n)
    if kind == "tcp":
        specs = [ModbusSpec(model="sdm630", host=h, port=p) for h, p in where]  # type: ignore[misc]
    else:
        path = str(where[0])
        specs = [ModbusSpec(model="sdm630", serial=path, baudrate=115200, unit=u) for u in range(1, n + 1)]
    meters = [ModbusMeter(f"m{i}", s, time.monotonic) for i, s in enumerate(specs)]
    tasks = [asyncio.create_task(m.run()) for m in meters]
    await asyncio.sleep(1.5)  # connected and in step
    stop = asyncio.Event()
    late: list[float] = []
    ticker = asyncio.create_task(_tick(TICK_PROBE_S, stop, late))
    reads0 = sum(m.health().reads for m in meters)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    reads = sum(m.health().reads for m in meters) - reads0
    stop.set()
    await ticker
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await _stop(proc)
    errors = sum(sum(m.health().errors.values()) for m in meters)
    share = cpu / wall
    p99 = 1000 * _pct(late, 0.99)
    where_s = f"{n} meters, {'one TCP endpoint each' if kind == 'tcp' else 'one RTU pty line'}"
    print(f"{where_s}, 1 Hz for {seconds:.0f} s: {reads} polls, {errors} errors")
    print(
        f"  CPU {100 * share:.2f} % of a core (goal ≤ {100 * cpu_goal:.0f} %, ratio {share / cpu_goal:.2f})"
    )
    print(
        f"  tick lateness p50 {1000 * statistics.median(late):.2f} ms, p99 {p99:.2f} ms,"
        f" max {1000 * max(late):.2f} ms"
        f" (goal p99 ≤ {GOAL_JITTER_P99_MS:.0f} ms, ratio {p99 / GOAL_JITTER_P99_MS:.2f})"
    )


async def baseline(seconds: float) -> None:
    stop = asyncio.Event()
    late: list[float] = []
    ticker = asyncio.create_task(_tick(TICK_PROBE_S, stop, late))
    await asyncio.sleep(seconds)
    stop.set()
    await ticker
    print(
        f"no meters (baseline): tick lateness p50 {1000 * statistics.median(late):.2f} ms,"
        f" p99 {1000 * _pct(late, 0.99):.2f} ms, max {1000 * max(late):.2f} ms"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polls", type=int, default=2000, help="back-to-back polls of the single meter")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each fleet is polled")
    args = ap.parse_args()
    await one_meter(args.polls)
    await baseline(args.seconds)
    await fleet("tcp", 32, args.seconds, GOAL_CPU_32_TCP)
    await fleet("rtu", 8, args.seconds, GOAL_CPU_8_RTU)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    asyncio.run(main())
