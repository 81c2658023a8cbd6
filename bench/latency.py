"""Latency from a mains reading arriving over HTTP to the new setpoint on the charger.

A real uvicorn server runs the runtime in this process with `site.mains_meter: api`; a client
thread PUTs /api/meters/mains through a real socket. Each reading raises the house load by 1 A so
the allocation must drop by 1 A (decreases apply at once; increases are paced, so after a run of
decreases the load is reset and the bench waits for the car to ramp back up, untimed). A runtime
listener notes when the charger's signaled current (the PWM setpoint) takes the new value.
Prints p50/p99 of: client send → new setpoint (end to end), server receipt → new setpoint, and
the HTTP round trip of the PUT. Goal: end to end ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from typing import Any

import httpx
import uvicorn

from evpilot.api.app import create_app
from evpilot.config import parse_config
from evpilot.control.clock import ScaledClock
from evpilot.control.runtime import Runtime
from ports import free_port

GOAL_MS = 50.0
MAINS_LIMIT = 25.0
LOW_HOUSE = 6.0
STEPS = 12


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class Watch:
    """Runtime listener: the time the default charger's signaled current last changed, and to what."""

    def __init__(self, cid: str) -> None:
        self.cid = cid
        self.cond = threading.Condition()
        self.signaled = -1.0
        self.changed_at = 0.0
        self.pushed_at = 0.0

    def on_change(self, topic: str, message: dict[str, Any]) -> None:
        """Called by the runtime for every published change."""
        if topic != "charger" or message.get("id") != self.cid:
            return
        value = float(message["current"]["signaled"])
        if value != self.signaled:
            with self.cond:
                self.signaled = value
                self.changed_at = time.perf_counter()
                self.cond.notify_all()

    def on_push(self) -> None:
        """Called by the API-fed meter when a reading arrives (before the recompute runs)."""
        self.pushed_at = time.perf_counter()

    def wait_for(self, value: float, timeout: float) -> bool:
        """Block until the signaled current equals `value`."""
        with self.cond:
            return self.cond.wait_for(lambda: self.signaled == value, timeout)


def client(base: str, watch: Watch, samples: int, out: dict[str, list[float]], errors: list[str]) -> None:
    """Send readings and time each one until `samples` are collected."""
    with httpx.Client(base_url=base, timeout=10) as http:

        def push(house: float) -> tuple[float, float]:
            t0 = time.perf_counter()
            r = http.put("/api/meters/mains", json={"currents": [house, house, house]})
            r.raise_for_status()
            return t0, time.perf_counter() - t0

        while len(out["e2e"]) < samples:
            # Reset: low house load, then let the car ramp up to the full share (untimed).
            top = MAINS_LIMIT - LOW_HOUSE
            deadline = time.monotonic() + 60
            while not watch.wait_for(top, 0.2):
                push(LOW_HOUSE)
                if time.monotonic() > deadline:
                    errors.append(f"signaled never reached {top} A (at {watch.signaled} A)")
                    return
            for step in range(1, STEPS + 1):
                house = LOW_HOUSE + step
                t0, rtt = push(house)
                if not watch.wait_for(MAINS_LIMIT - house, 5.0):
                    errors.append(f"no setpoint {MAINS_LIMIT - house} A within 5 s (at {watch.signaled} A)")
                    return
                out["e2e"].append(watch.changed_at - t0)
                out["server"].append(watch.changed_at - watch.pushed_at)
                out["rtt"].append(rtt)
                if len(out["e2e"]) >= samples:
                    return


async def run(samples: int, speed: float) -> tuple[dict[str, list[float]], list[str]]:
    """Serve a runtime on a free port and drive it from a client thread."""
    config = parse_config(
        {
            "site": {"mains_meter": "api", "mains_limit": MAINS_LIMIT, "exclude_self_current": False},
            "sim": {"cars": [{"charger": "cp1", "soc": 20, "battery_kwh": 300}], "pv_kwp": 0},
        }
    )
    rt = Runtime(config, ScaledClock(speed))
    watch = Watch(rt.default_id)
    rt.listeners.append(watch.on_change)
    rt.api_meter.listeners.insert(0, watch.on_push)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    out: dict[str, list[float]] = {"e2e": [], "server": [], "rtt": []}
    errors: list[str] = []
    try:
        await asyncio.to_thread(client, f"http://127.0.0.1:{port}", watch, samples, out, errors)
    finally:
        server.should_exit = True
        await task
    return out, errors


def main(argv: list[str] | None = None) -> int:
    """Measure and print the latency table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=120, help="readings to time (default 120)")
    p.add_argument(
        "--speed",
        type=float,
        default=10.0,
        help="clock speed; only shortens the untimed ramp-ups (default 10)",
    )
    args = p.parse_args(argv)
    out, errors = asyncio.run(run(args.samples, args.speed))
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if not out["e2e"]:
        return 1
    print(f"{'latency (ms)':34} {'n':>4} {'p50':>7} {'p99':>7} {'max':>7}")
    labels = {
        "e2e": "client send → new setpoint",
        "server": "server receipt → new setpoint",
        "rtt": "PUT /api/meters/mains round trip",
    }
    for key, label in labels.items():
        v = [x * 1000 for x in out[key]]
        print(f"{label:34} {len(v):4d} {statistics.median(v):7.2f} {p99(v):7.2f} {max(v):7.2f}")
    e2e = statistics.median(out["e2e"]) * 1000
    tail = p99(out["e2e"]) * 1000
    print(f"goal ≤ {GOAL_MS:g} ms end to end: p50 ratio {e2e / GOAL_MS:.2f}, p99 ratio {tail / GOAL_MS:.2f}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
