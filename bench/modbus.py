"""Modbus TCP secondary: requests/s and latency of the server facade on loopback.

evpilot (runtime + Modbus server, `map` teltonika or esp32evse) runs in a child process; pymodbus
clients in this one read a charger's whole map (45 registers from 0, or 100-112 for esp32evse) as
fast as they can, each on its own connection. Printed: requests/s, p50/p99 latency, the server's
CPU time per request, and the control tick's jitter while under that load.

With `--primary`: evpilot as the primary. A child process serves N secondaries (one Teltonika
Modbus TCP server per charger, each on its own port, every charger with a simulated car); this
process runs a primary runtime with N `type: modbus` chargers polling them at 1 Hz and an API-fed
mains meter. Printed: the poll round-trip p99 (one exchange: writes if any, then the 45-register
read), the primary's CPU share, its tick jitter, and the time from a mains overload (pushed into the
meter) until every one of the N chargers has been written its lower amps to use.

    .venv/bin/python bench/modbus.py [--seconds 8] [--clients 8] [--map teltonika]
    .venv/bin/python bench/modbus.py --primary [--secondaries 32] [--seconds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import multiprocessing as mp
import os
import statistics
import time
from multiprocessing.connection import Connection

from pymodbus.client import AsyncModbusTcpClient

from ports import free_port

# A site controller polls each charger about once a second: the server should take far more.
GOAL_RPS = 1000.0
GOAL_P99_MS = 20.0
GOAL_JITTER_MS = 50.0
READS = {"teltonika": (0, 45), "esp32evse": (100, 13)}
# The primary side: all N secondaries commanded down within this after a mains overload.
GOAL_DOWN_S = 1.0
GOAL_PRIMARY_P99_MS = 50.0


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


def serve_secondaries(ports: list[int], conn: Connection) -> None:
    """Child process: one runtime with a charger and a car per port, each served on its own port."""
    from evpilot.api.modbus import ModbusFacade
    from evpilot.config import ModbusModel, parse_config
    from evpilot.control.clock import ScaledClock
    from evpilot.control.runtime import Runtime

    logging.basicConfig(level=logging.WARNING)
    ids = [f"cp{i + 1}" for i in range(len(ports))]
    config = parse_config(
        {
            "site": {"mains_limit": 200, "ramp_step": 16, "fallback_current": 0},
            "chargers": [
                {"id": cid, "phases": 1, "phase": i % 3 + 1, "max_current": 16, "safe_current": 0}
                for i, cid in enumerate(ids)
            ],
            "sim": {
                "cars": [{"charger": cid, "max_current": 16} for cid in ids],
                "house_base": [0, 0, 0],
                "first_spike_s": None,
            },
        }
    )
    rt = Runtime(config, ScaledClock(1.0))

    async def main() -> None:
        await rt.start()
        facades = [
            ModbusFacade(rt, ModbusModel(port=port, units={cid: 1}, allow_writes=True))
            for cid, port in zip(ids, ports, strict=True)
        ]
        for f in facades:
            await f.start()
        conn.send("ready")
        while not conn.poll():
            await asyncio.sleep(0.05)
        conn.recv()
        for f in facades:
            await f.stop()
        await rt.stop()

    asyncio.run(main())


async def drive(ports: list[int], seconds: float) -> dict[str, float]:
    """The primary: N Modbus chargers at 1 Hz; steady-state figures, then a mains overload."""
    from evpilot.config import parse_config
    from evpilot.control.clock import ScaledClock
    from evpilot.control.runtime import Runtime
    from evpilot.devices.modbus.charger import ModbusChargerLink

    n = len(ports)
    config = parse_config(
        {
            "site": {"mains_limit": 200, "mains_meter": "api", "ramp_step": 16, "fallback_current": 0},
            "sim": {"enabled": False},
            "chargers": [
                {
                    "id": f"far{i + 1}",
                    "phases": 1,
                    "phase": i % 3 + 1,
                    "max_current": 16,
                    "safe_current": 6,
                    "driver": {"type": "modbus", "host": "127.0.0.1", "port": port, "unit": 1, "poll_s": 1},
                }
                for i, port in enumerate(ports)
            ],
        }
    )
    rt = Runtime(config, ScaledClock(1.0))
    links = [link for link in rt.links.values() if isinstance(link, ModbusChargerLink)]
    exchanges: list[float] = []
    for link in links:
        plain = link.exchange

        async def timed(bus: object, plain: object = plain) -> None:
            t0 = time.perf_counter()
            await plain(bus)  # type: ignore[operator]
            exchanges.append(time.perf_counter() - t0)

        link.exchange = timed  # type: ignore[method-assign]
    house = [10.0]

    def feed() -> None:
        amps = [house[0]] * 3
        for ch in rt.engine.chargers.values():
            amps[ch.config.phase - 1] += max(ch.currents)
        rt.api_meter.push((amps[0], amps[1], amps[2]), rt.clock.now())

    def amps_to_use() -> list[int]:
        return [link._seen.get(15, -1) for link in links]

    await rt.start()
    try:
        # Wait until every secondary charges at 6 A or more.
        deadline = time.monotonic() + 90
        while min(amps_to_use()) < 6 or min(max(ch.currents) for ch in rt.engine.chargers.values()) < 5:
            if time.monotonic() > deadline:
                raise SystemExit(f"not all {n} secondaries charging: {amps_to_use()}")
            feed()
            await asyncio.sleep(0.1)
        # A fed reading asks for a tick at once: feed once, then leave the meter alone for the window
        # (it stays fresh for site.meter_timeout_s), so the ticks measured are the periodic ones.
        feed()
        await asyncio.sleep(0.05)
        exchanges.clear()
        ticks0 = len(rt.tick_times)
        cpu0 = sum(os.times()[:2])
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        wall = time.perf_counter() - t0
        cpu = sum(os.times()[:2]) - cpu0
        ticks = rt.tick_times[ticks0:]
        steady = sorted(exchanges)
        # The overload: the house alone takes the whole fuse; time until every charger has been
        # written a lower amps to use (0: nothing is left for MIN). Measured from the reading and
        # from the first tick that saw it (the rest is the links' share).
        before = amps_to_use()
        house[0] = config.site.mains_limit
        ticks_before = rt.tick_count
        t_over = time.perf_counter()
        feed()
        t_tick = None
        while any(a >= b for a, b in zip(amps_to_use(), before, strict=True)):
            if t_tick is None and rt.tick_count > ticks_before:
                t_tick = time.perf_counter()
            if time.perf_counter() - t_over > 30:
                raise SystemExit(f"not all down after 30 s: {before} -> {amps_to_use()}")
            await asyncio.sleep(0.002)
        t_down = time.perf_counter()
        down = t_down - t_over
        after_tick = t_down - (t_tick or t_down)
    finally:
        await rt.stop()
    tick_s = config.control.tick_s
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    return {
        "polls": len(steady),
        "p50": steady[len(steady) // 2] * 1000,
        "p99": steady[min(len(steady) - 1, int(len(steady) * 0.99))] * 1000,
        "cpu": cpu / wall,
        "jitter": max(abs(g - tick_s) for g in gaps) * 1000 if gaps else float("nan"),
        "down": down,
        "after_tick": after_tick,
        "wall": wall,
    }


def primary_main(secondaries: int, seconds: float) -> None:
    """Run the primary benchmark and print its figures against the goals."""
    ports = [free_port() for _ in range(secondaries)]
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve_secondaries, args=(ports, child))
    proc.start()
    try:
        assert parent.poll(60), "the secondaries did not start"
        parent.recv()
        r = asyncio.run(drive(ports, seconds))
        parent.send("stop")
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    print(f"Modbus primary polling {secondaries} secondaries (TCP, one endpoint each) at 1 Hz")
    print(f"  steady state        {r['wall']:8.1f} s")
    print(f"  polls               {r['polls']:.0f}")
    print(f"  round trip p50      {r['p50']:8.2f} ms")
    print(
        f"  round trip p99      {r['p99']:8.2f} ms   goal <= {GOAL_PRIMARY_P99_MS:.0f} ms"
        f"   ratio {r['p99'] / GOAL_PRIMARY_P99_MS:.2f}"
    )
    print(f"  primary CPU share   {r['cpu'] * 100:8.1f} %   (of one core)")
    print(
        f"  tick jitter (max)   {r['jitter']:8.1f} ms   goal <= {GOAL_JITTER_MS:.0f} ms"
        f"   ratio {r['jitter'] / GOAL_JITTER_MS:.2f}"
    )
    down_ms = r["down"] * 1000
    print(
        f"  overload -> all down {down_ms:6.0f} ms   goal <= {GOAL_DOWN_S * 1000:.0f} ms"
        f"   ratio {r['down'] / GOAL_DOWN_S:.2f}"
    )
    print(f"    of which after the tick that saw it {r['after_tick'] * 1000:6.1f} ms (the writes)")


if __name__ == "__main__":
    import sys

    if "--primary" in sys.argv:
        ap = argparse.ArgumentParser(description="Modbus primary polling N secondaries")
        ap.add_argument("--primary", action="store_true")
        ap.add_argument("--secondaries", type=int, default=32)
        ap.add_argument("--seconds", type=float, default=9.0, help="steady state, below 11 s")
        a = ap.parse_args()
        primary_main(a.secondaries, a.seconds)
    else:
        main()
