"""HTTP load on the device facades: requests/s and p99 latency with 16 concurrent clients, and the
control tick's jitter while the server is under that load.

The server (runtime + uvicorn) runs in a child process; the clients (aiohttp) run in this one.
The child hands back the tick timestamps it recorded (`Runtime.tick_times`) when it stops.

    .venv/bin/python bench/http_load.py [--seconds 8] [--clients 16] [--tick 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import os
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from ports import free_port

PATHS = ("/api/v1/state", "/rpc/Shelly.GetStatus", "/api/v1/charging")
GOAL_RPS = 2000.0
GOAL_JITTER_MS = 50.0


def serve(port: int, tick_s: float, conn: Connection) -> None:
    """Child process: run evpilot until told to stop, then send back the tick times."""
    import uvicorn

    from evpilot.api.app import create_app
    from evpilot.config import parse_config
    from evpilot.control.clock import ScaledClock
    from evpilot.control.runtime import Runtime

    rt = Runtime(parse_config({"control": {"tick_s": tick_s}}), ScaledClock(1.0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        conn.send("ready")
        while True:
            if conn.poll():
                msg = conn.recv()
                if msg == "stop":
                    break
                if msg == "ticks":
                    conn.send((list(rt.tick_times), time.process_time()))
            await asyncio.sleep(0.05)
        server.should_exit = True
        await task

    asyncio.run(main())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(base: str, path: str, seconds: float, clients: int) -> tuple[int, list[float], int]:
    """`clients` workers GET `path` back to back for `seconds`; (ok count, latencies s, errors)."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                async with session.get(base + path) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return len(latencies), latencies, errors


def client_proc(base: str, path: str, seconds: float, clients: int, conn: Connection) -> None:
    """A load-generator process: run `load` and send back its result and how long it ran."""
    t0 = time.perf_counter()
    ok, latencies, errors = asyncio.run(load(base, path, seconds, clients))
    conn.send((ok, latencies, errors, time.perf_counter() - t0))


def load_procs(
    base: str, path: str, seconds: float, clients: int, procs: int
) -> tuple[float, int, list[float], int]:
    """Spread `clients` over `procs` processes (clients cost more CPU than the server).

    Returns (req/s, ok count, latencies, errors).
    """
    ctx = mp.get_context("spawn")
    pipes, workers = [], []
    for i in range(procs):
        share = clients // procs + (1 if i < clients % procs else 0)
        recv, send = ctx.Pipe(duplex=False)
        w = ctx.Process(target=client_proc, args=(base, path, seconds, share, send), daemon=True)
        w.start()
        pipes.append(recv)
        workers.append(w)
    rps, ok, latencies, errors = 0.0, 0, [], 0
    for recv, w in zip(pipes, workers, strict=True):
        n, lat, err, elapsed = recv.recv()
        w.join()
        rps += n / elapsed
        ok, errors = ok + n, errors + err
        latencies += lat
    return rps, ok, latencies, errors


def jitter_ms(ticks: list[float], tick_s: float) -> list[float]:
    """How far each interval between consecutive ticks is from the tick period, in ms."""
    return [abs((b - a) - tick_s) * 1000.0 for a, b in itertools.pairwise(ticks)]


async def exists(base: str, path: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(base + path) as r:
        return r.status == 200


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="load per endpoint (s)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--tick", type=float, default=0.1, help="control tick period of the server (s)")
    ap.add_argument("--procs", type=int, default=2, help="client processes sharing the clients")
    args = ap.parse_args()

    port = free_port()
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve, args=(port, args.tick, child), daemon=True)
    proc.start()
    if not parent.poll(60) or parent.recv() != "ready":
        raise SystemExit("server did not start")
    base = f"http://127.0.0.1:{port}"

    async def run_all() -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for path in PATHS:
            if not await exists(base, path):
                out.append((path, None))
                continue
            await load(base, path, 1.0, args.clients)  # warm-up
            loop = asyncio.get_running_loop()
            parent.send("ticks")
            ticks, cpu0 = parent.recv()
            before = len(ticks)
            rps, ok, lat, errors = await loop.run_in_executor(
                None, load_procs, base, path, args.seconds, args.clients, args.procs
            )
            parent.send("ticks")
            ticks, cpu1 = parent.recv()
            cpu_us = (cpu1 - cpu0) / max(ok, 1) * 1e6
            out.append((path, (rps, lat, errors, ticks[max(0, before - 1) :], cpu_us)))
        return out

    idle_start = time.perf_counter()
    time.sleep(min(3.0, args.seconds))
    parent.send("ticks")
    idle_ticks = [t for t in parent.recv()[0] if t >= time.time() - (time.perf_counter() - idle_start)]
    results = asyncio.run(run_all())
    parent.send("stop")
    proc.join(10)

    print(
        f"evpilot HTTP load: {args.clients} clients in {args.procs} process(es), {args.seconds:g} s per"
        f" endpoint, tick {args.tick:g} s, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'endpoint':28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'vs goal':>8}"
        f" {'tick jitter p99 ms':>19} {'server CPU/req':>15}"
    )
    all_jitter: list[float] = []
    for path, res in results:
        if res is None:
            print(f"{path:28} {'(not served)':>8}")
            continue
        rps, lat, errors, ticks, cpu_us = res
        ms = [x * 1000 for x in lat]
        jitter = jitter_ms(ticks, args.tick)
        print(
            f"{path:28} {rps:8.0f} {percentile(ms, 0.5):8.2f} {percentile(ms, 0.99):8.2f} {errors:6d}"
            f" {rps / GOAL_RPS:7.2f}x {percentile(jitter, 0.99):19.2f} {cpu_us:9.0f} µs"
            f" (one core: {1e6 / max(cpu_us, 1e-9):5.0f} req/s)"
        )
        all_jitter += jitter
    idle = jitter_ms(idle_ticks, args.tick)
    if idle:
        print(
            f"tick jitter idle:       p50 {statistics.median(idle):6.2f} ms"
            f"  p99 {percentile(idle, 0.99):6.2f} ms"
        )
    if all_jitter:
        p99 = percentile(all_jitter, 0.99)
        print(
            f"tick jitter under load: p50 {statistics.median(all_jitter):6.2f} ms  p99 {p99:6.2f} ms"
            f"  max {max(all_jitter):6.2f} ms  ({len(all_jitter)} intervals;"
            f" goal p99 <= {GOAL_JITTER_MS:g} ms:"
            f" {GOAL_JITTER_MS / max(p99, 1e-9):.1f}x margin)"
        )


if __name__ == "__main__":
    main()
