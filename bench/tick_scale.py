"""One control tick at 1,000 chargers with every facade mounted, beside the bare `compute`.

The site: `--chargers` chargers (three in four 3-phase, the rest 1-phase spread over L1..L3) in
groups of 10 on 63 A circuits, five circuits per 200 A feeder, under a 200 A simulated mains, with a
car plugged into every charger (a depot at night): the mains feeds a few dozen chargers at a time,
the others wait, and the shortage rule hands the current on every minute. Every face is mounted as
`evpilot run` mounts it: the HTTP app (native API, SmartEVSE, ESP32-EVSE, SECC and Shelly facades;
the Shelly facade follows every changed view), the MQTT bridge with native, Home Assistant,
SmartEVSE and ESP32-EVSE topics for every charger (attached to the runtime, no broker: what it
would send is rendered and de-duplicated, not sent), and `--subscribers` native WebSocket
subscribers whose frames are JSON-encoded as the socket writer does.

Per tick (the clock moves 1 s; `--warmup` ticks first, then `--ticks` timed):

- tick: `Runtime.tick()`: engine step (simulator physics, pilots, `compute`, apply), overload
  monitor, events, the read model (views), WebSocket frames, frames handed to the listeners.
- compute: `core.balancer.compute` alone, inside that tick.
- sim: the simulator's physics inside that tick (a real site has no simulator; shown apart).
- publish: what the tick leaves for later on the event loop: the listeners' tasks (the Shelly
  facade tracking its components, the MQTT bridge noting what changed), the MQTT bridge's rendering
  and de-duplication of the changed views, and the WebSocket frames' JSON.

Prints median and p99 of wall time and median CPU time (tick, compute, sim, publish), then the
tick's median against the goal (≤ 10 ms at 1,000 chargers) as a ratio in wall and in CPU time, with
and without the simulator, and the bare `compute` beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from evpilot.api.app import create_app
from evpilot.api.mqtt import MqttBridge
from evpilot.config import AppConfig, parse_config
from evpilot.control.clock import ManualClock
from evpilot.control.runtime import FrameQueue, Runtime

GOAL_MS = 10.0
T = TypeVar("T")


def site_config(n: int) -> AppConfig:
    """The depot: `n` chargers, a car in each, every facade's config on for every charger."""
    groups = max(1, (n + 9) // 10)
    circuits: list[dict[str, Any]] = [{"name": f"feeder{g}", "limit": 200} for g in range((groups + 4) // 5)]
    circuits += [{"name": f"c{g}", "limit": 63, "parent": f"feeder{g // 5}"} for g in range(groups)]
    chargers: list[dict[str, Any]] = []
    cars: list[dict[str, Any]] = []
    for i in range(n):
        cid = f"cp{i:04d}"
        one_phase = i % 4 == 3
        cp: dict[str, Any] = {
            "id": cid,
            "circuit": f"c{i // 10}",
            "phases": 1 if one_phase else 3,
            "max_current": 32,
            "safe_current": 0,
        }
        if one_phase:
            cp["phase"] = i % 3 + 1
        chargers.append(cp)
        cars.append(
            {
                "charger": cid,
                "at_s": 0,
                "battery_kwh": 100,
                "soc": 10 + i % 60,
                "max_current": 32 if i % 2 else 16,
                "phases": 1 if one_phase else 3,
            }
        )
    return parse_config(
        {
            "site": {"mains_limit": 200, "circuits": circuits, "fallback_current": 0},
            "chargers": chargers,
            "sim": {"seed": 7, "cars": cars},
            "mqtt": {
                # Never connected: the bridge is attached to the runtime, not started.
                "url": "mqtt://127.0.0.1:1",
                "esp32evse": {f"cp{i:04d}": f"evse{i}" for i in range(n)},
            },
        }
    )


class Timed:
    """Wraps a callable and records the wall and CPU time of each call (seconds)."""

    def __init__(self, fn: Callable[..., T]) -> None:
        self.fn = fn
        self.times: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, *args: Any) -> Any:
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.times.append(time.perf_counter() - t0)
            self.cpu.append(time.process_time() - c0)


def drain(queues: list[FrameQueue]) -> int:
    """Take every waiting frame off each queue and JSON-encode it as the socket writer does."""
    frames = 0
    for q in queues:
        while not q.empty():
            json.dumps(q.get_nowait(), separators=(",", ":"))
            frames += 1
    return frames


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run(n: int, warmup: int, ticks: int, subscribers: int) -> dict[str, Any]:
    """Build the site with every face mounted, tick it, and return the figures (ms)."""
    config = site_config(n)
    clock = ManualClock()
    rt = Runtime(config, clock)
    create_app(rt, manage_runtime=False)
    bridge = MqttBridge(rt, config.mqtt)
    bridge.attach()
    queues = [rt.subscribe() for _ in range(subscribers)]
    compute = Timed(rt.engine.compute)
    rt.engine.compute = compute
    sim = Timed(rt.engine.before_step) if rt.engine.before_step is not None else None
    rt.engine.before_step = sim
    await rt.view_listeners.drain()
    bridge.outgoing()
    drain(queues)
    wall: list[float] = []
    cpu: list[float] = []
    publish: list[float] = []
    publish_cpu: list[float] = []
    messages = frames = 0
    for k in range(warmup + ticks):
        clock.advance(1.0)
        c0, t0 = time.process_time(), time.perf_counter()
        rt.tick()
        t1, c1 = time.perf_counter(), time.process_time()
        # The listeners (Shelly, the MQTT bridge) run in their own tasks after the tick.
        await rt.view_listeners.drain()
        await rt.listeners.drain()
        sent = len(bridge.outgoing())
        framed = drain(queues)
        t2, c2 = time.perf_counter(), time.process_time()
        if k >= warmup:
            wall.append(t1 - t0)
            cpu.append(c1 - c0)
            publish.append(t2 - t1)
            publish_cpu.append(c2 - c1)
            messages += sent
            frames += framed
    await rt.view_listeners.stop()
    await rt.listeners.stop()
    charging = sum(1 for ch in rt.engine.chargers.values() if ch.signaled > 0)
    ms = 1000.0
    return {
        "chargers": n,
        "charging": charging,
        "tick": (statistics.median(wall) * ms, pct(wall, 99) * ms, statistics.median(cpu) * ms),
        "compute": (
            statistics.median(compute.times[-ticks:]) * ms,
            pct(compute.times[-ticks:], 99) * ms,
            statistics.median(compute.cpu[-ticks:]) * ms,
        ),
        "sim": (
            statistics.median(sim.times[-ticks:]) * ms,
            pct(sim.times[-ticks:], 99) * ms,
            statistics.median(sim.cpu[-ticks:]) * ms,
        )
        if sim is not None
        else (0.0, 0.0, 0.0),
        "publish": (
            statistics.median(publish) * ms,
            pct(publish, 99) * ms,
            statistics.median(publish_cpu) * ms,
        ),
        "mqtt_per_tick": messages / ticks,
        "frames_per_tick": frames / ticks,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chargers", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=60, help="untimed ticks first (default 60)")
    p.add_argument("--ticks", type=int, default=300, help="timed ticks (default 300)")
    p.add_argument("--subscribers", type=int, default=2, help="native WebSocket subscribers (default 2)")
    args = p.parse_args(argv)
    r = asyncio.run(run(args.chargers, args.warmup, args.ticks, args.subscribers))
    tick, comp, sim, pub = r["tick"], r["compute"], r["sim"], r["publish"]
    print(
        f"{r['chargers']} chargers ({r['charging']} charging at the end), every facade mounted, "
        f"{args.subscribers} WebSocket subscribers; {args.ticks} ticks after {args.warmup}"
    )
    print(f"{'':24}{'median ms':>10}{'p99 ms':>10}{'CPU ms':>10}")
    print(f"{'tick':24}{tick[0]:10.2f}{tick[1]:10.2f}{tick[2]:10.2f}")
    print(f"{'  of which compute':24}{comp[0]:10.2f}{comp[1]:10.2f}{comp[2]:10.2f}")
    print(f"{'  of which sim physics':24}{sim[0]:10.2f}{sim[1]:10.2f}{sim[2]:10.2f}")
    print(f"{'publish (after the tick)':24}{pub[0]:10.2f}{pub[1]:10.2f}{pub[2]:10.2f}")
    print(
        f"per tick: {r['mqtt_per_tick']:.0f} MQTT messages after de-duplication, "
        f"{r['frames_per_tick']:.0f} WebSocket frames"
    )
    at = "" if r["chargers"] == 1000 else f" (the goal is for 1,000 chargers; this run has {r['chargers']})"
    print(f"goal: tick median <= {GOAL_MS:g} ms at 1,000 chargers{at}")
    print(
        f"  wall {tick[0]:.2f} ms, ratio {tick[0] / GOAL_MS:.2f}; "
        f"CPU {tick[2]:.2f} ms, ratio {tick[2] / GOAL_MS:.2f}; "
        f"without the simulator: wall ratio {(tick[0] - sim[0]) / GOAL_MS:.2f}, "
        f"CPU ratio {(tick[2] - sim[2]) / GOAL_MS:.2f}"
    )
    print(
        f"  bare compute: wall {comp[0]:.2f} ms ({comp[0] / tick[0]:.0%} of the tick), "
        f"CPU {comp[2]:.2f} ms ({comp[2] / tick[2]:.0%} of the tick's CPU)"
        if tick[0] > 0 and tick[2] > 0
        else f"  bare compute: wall {comp[0]:.2f} ms, CPU {comp[2]:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
