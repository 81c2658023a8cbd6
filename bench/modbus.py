"""Modbus TCP secondary: requests/s and latency of the server facade on loopback.

evpilot (runtime + Modbus server, `map` teltonika or esp32evse) runs in a child process; pymodbus
clients in this one read a charger's whole map (45 registers from 0, or 100-112 for esp32evse) as
fast as they can, each on its own connection. Printed: requests/s, p50/p99 latency, the server's
CPU time per request, and the control tick's jitter while under that load.

The primary-side figures (a primary polling 32 secondaries) come with the primary driver.

    .venv/bin/python bench/modbus.py [--seconds 8] [--clients 8] [--map teltonika]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import multiprocessing as mp
import os
import socket
import statistics
import time
from multiprocessing.connection import Connection

from pymodbus.client import AsyncModbusTcpClient

# A site controller polls each charger about once a second: the server should take far more.
GOAL_RPS = 1000.0
GOAL_P99_MS = 20.0
GOAL_JITTER_MS = 50.0
READS = {"teltonika": (0, 45), "esp32evse": (100, 13)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int, regmap: str, chargers: int, conn: Connection) -> None:
    """Child process: run evpilot's runtime and Modbus server until told to stop."""
    from evpilot.api.modbus import ModbusFacade
    from evpilot.config import parse_config
    from evpilot.control.clock import ScaledClock
    from evpilot.control.runtime import Runtime

    logging.basicConfig(level=logging.WARNING)
    config = parse_config(
        {
            "chargers": [{"id": f"cp{i + 1}", "max_current": 16} for i in range(chargers)],
            "site": {"mains_limit": 16 * chargers + 10},
            "control": {"tick_s": 0.1},
            "modbus": {"port": port, "map": regmap},
        }
    )
    rt = Runtime(config, ScaledClock(1.0))

    async def main() -> None:
        await rt.start()
        facade = ModbusFacade(rt, config.modbus)
        await facade.start()
        ready = os.times()
        conn.send(ready.user + ready.system)
        while not conn.poll():
            await asyncio.sleep(0.05)
        conn.recv()
        cpu = os.times()
        conn.send(
            {
                "cpu": cpu.user + cpu.system,
                "ticks": list(rt.tick_times),
                "requests": facade.context.requests,
                "refusals": facade.context.refusals,
            }
        )
        await facade.stop()
        await rt.stop()

    asyncio.run(main())


async def load(port: int, clients: int, seconds: float, units: int, regmap: str) -> list[float]:
    """Each client reads the map in a loop; returns every request's latency (s)."""
    address, count = READS[regmap]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one(i: int) -> None:
        c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
        assert await c.connect()
        unit = i % units + 1
        try:
            while (t0 := time.perf_counter()) < deadline:
                r = await c.read_holding_registers(address, count=count, device_id=unit)
                latencies.append(time.perf_counter() - t0)
                assert not r.isError(), r
        finally:
            c.close()

    await asyncio.gather(*(one(i) for i in range(clients)))
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--chargers", type=int, default=4)
    ap.add_argument("--map", choices=sorted(READS), default="teltonika")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    port = free_port()
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve, args=(port, args.map, args.chargers, child))
    proc.start()
    try:
        assert parent.poll(30), "the server did not start"
        cpu_ready = parent.recv()
        t0 = time.perf_counter()
        cpu0 = os.times()
        latencies = asyncio.run(load(port, args.clients, args.seconds, args.chargers, args.map))
        wall = time.perf_counter() - t0
        client_cpu = sum(os.times()[:2]) - sum(cpu0[:2])
        parent.send("stop")
        assert parent.poll(30)
        report = parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    n = len(latencies)
    rps = n / wall
    ordered = sorted(latencies)
    p50 = ordered[n // 2] * 1000
    p99 = ordered[min(n - 1, int(n * 0.99))] * 1000
    ticks = [t for t in report["ticks"] if t >= report["ticks"][-1] - wall]
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    jitter = max(abs(g - 0.1) for g in gaps) * 1000 if gaps else float("nan")
    print(
        f"Modbus TCP secondary, map {args.map}, {args.clients} clients, {args.chargers} units, {wall:.1f} s"
    )
    print(f"  requests            {n} ({report['requests']} answered, {report['refusals']} refused)")
    print(f"  requests/s          {rps:8.0f}   goal >= {GOAL_RPS:.0f}   ratio {GOAL_RPS / rps:.2f}")
    print(f"  latency p50         {p50:8.2f} ms")
    print(
        f"  latency p99         {p99:8.2f} ms   goal <= {GOAL_P99_MS:.0f} ms   ratio {p99 / GOAL_P99_MS:.2f}"
    )
    server_cpu = report["cpu"] - cpu_ready
    print(f"  server CPU          {server_cpu:8.2f} s ({server_cpu / n * 1e6:.0f} µs per request)")
    print(f"  client CPU          {client_cpu:8.2f} s")
    print(
        f"  tick jitter (max)   {jitter:8.1f} ms   goal <= {GOAL_JITTER_MS:.0f} ms"
        f"   ratio {jitter / GOAL_JITTER_MS:.2f}"
    )
    print(f"  mean latency        {statistics.fmean(latencies) * 1000:8.2f} ms")


if __name__ == "__main__":
    main()
