"""MQTT facade benchmark against a real mosquitto on a loopback port.

1. Command round trip: an aiomqtt client publishes `evpilot/cp1/current/set` and waits for the
   new value on `evpilot/cp1/current`; p50/p99 over many commands. Goal: p99 <= 100 ms. Run with
   QoS 0 commands (what Home Assistant sends) and QoS 1; a QoS 1 sender meets mosquitto's default
   Nagle + the client's delayed ACK (~40 ms) unless the broker has `set_tcp_nodelay true`.
2. A site of 100 simulated chargers, each with a car charging, ticking at 1 Hz in real time:
   messages/s the bridge publishes (and a separate mosquitto_sub receives), CPU share of one core
   used by this process (runtime + bridge), and the control tick's jitter |interval - 1 s|,
   with and without MQTT. Goal: tick jitter p99 <= 50 ms.

Usage: python bench/mqtt_bench.py [--commands 500] [--seconds 30] [--chargers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import itertools
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt

from evpilot.api.mqtt import MqttBridge
from evpilot.config import AppConfig, parse_config
from evpilot.control.clock import ScaledClock
from evpilot.control.runtime import Runtime
from ports import free_port

RTT_GOAL_MS = 100.0
JITTER_GOAL_MS = 50.0
REFRESH_S = 20


@contextlib.contextmanager
def mosquitto(nodelay: bool = False) -> Iterator[int]:
    """Run mosquitto on a free loopback port (default config unless `nodelay`); yields the port."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None:
        raise SystemExit("mosquitto is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
            f"max_queued_messages 100000\nset_tcp_nodelay {'true' if nodelay else 'false'}\n",
            encoding="utf-8",
        )
        proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                time.sleep(0.05)
            yield port
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def site(port: int | None, chargers: int) -> AppConfig:
    """`chargers` chargers behind a big grid connection, each with a car plugged in at start."""
    ids = [f"cp{i:03d}" for i in range(1, chargers + 1)]
    data: dict[str, Any] = {
        # 100 chargers at 6 A would overload the 200 A mains if the meter or the controller were lost.
        "site": {"mains_limit": 200, "mode": "normal", "fallback_current": 0},
        "chargers": [{"id": cid, "max_current": 16, "safe_current": 0} for cid in ids],
        "sim": {
            "cars": [{"charger": cid, "battery_kwh": 80, "soc": 20} for cid in ids],
            "first_spike_s": None,
        },
    }
    if port is not None:
        # A short refresh so the measured window includes full republishes of the whole site.
        data["mqtt"] = {"url": f"mqtt://127.0.0.1:{port}", "refresh_s": REFRESH_S}
    return parse_config(data)


async def round_trip(port: int, commands: int, qos: int) -> list[float]:
    """Milliseconds from publishing a current command to seeing the new value published back."""
    config = parse_config({"mqtt": {"url": f"mqtt://127.0.0.1:{port}"}})
    rt = Runtime(config, ScaledClock(1.0))
    await rt.start()
    bridge = MqttBridge(rt, config.mqtt)
    await bridge.start()
    await asyncio.wait_for(bridge.connected.wait(), 10)
    samples: list[float] = []
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-rtt") as client:
            await client.subscribe("evpilot/cp1/current", qos=1)
            for i in range(commands + 20):
                value = f"{10 + (i % 100) / 10:.1f}"
                t0 = time.perf_counter()
                await client.publish("evpilot/cp1/current/set", value, qos=qos)
                async with asyncio.timeout(10):
                    async for m in client.messages:
                        if isinstance(m.payload, bytes) and float(m.payload) == float(value):
                            break
                if i >= 20:  # warm-up
                    samples.append((time.perf_counter() - t0) * 1000)
    finally:
        await bridge.stop()
        await rt.stop()
    return samples


def jitter_ms(rt: Runtime) -> list[float]:
    """|tick interval - tick_s| in ms over the recorded ticks (clock = wall time at speed 1)."""
    times = rt.tick_times
    tick = rt.config.control.tick_s
    return [abs((b - a) - tick) * 1000 for a, b in itertools.pairwise(times)]


async def site_run(port: int | None, chargers: int, seconds: float) -> dict[str, float]:
    """Run the site for `seconds` of real time; returns rates, CPU and jitter figures."""
    config = site(port, chargers)
    rt = Runtime(config, ScaledClock(1.0))
    await rt.start()
    bridge = None
    sub = None
    out = tempfile.NamedTemporaryFile(suffix=".txt")  # noqa: SIM115
    if port is not None:
        bridge = MqttBridge(rt, config.mqtt)
        await bridge.start()
        await asyncio.wait_for(bridge.connected.wait(), 10)
        sub = subprocess.Popen(
            [
                shutil.which("mosquitto_sub") or "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-t",
                "evpilot/#",
                "-t",
                "SmartEVSE/#",
            ],
            stdout=out,
        )
    await asyncio.sleep(5)  # settle: cars start, first full publish is out
    rt.tick_times.clear()
    published0 = bridge.published if bridge else 0
    size0 = Path(out.name).stat().st_size
    lines0 = Path(out.name).read_bytes().count(b"\n")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    jit = jitter_ms(rt)
    result = {
        "cpu_share": cpu / wall,
        "jitter_p50_ms": pct(jit, 50),
        "jitter_p99_ms": pct(jit, 99),
        "jitter_max_ms": max(jit),
        "ticks": len(rt.tick_times),
        "charging": sum(
            1 for ch in rt.engine.chargers.values() if ch.work_state().value == "charger_charging"
        ),
    }
    if bridge is not None and sub is not None:
        result["published_per_s"] = (bridge.published - published0) / wall
        sub.send_signal(signal.SIGTERM)
        sub.wait(10)
        received = Path(out.name).read_bytes().count(b"\n") - lines0
        result["received_per_s"] = received / wall
        result["bytes_per_s"] = (Path(out.name).stat().st_size - size0) / wall
        await bridge.stop()
    out.close()
    await rt.stop()
    return result


def main() -> None:
    """Run both benchmarks and print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commands", type=int, default=500)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--chargers", type=int, default=100)
    args = p.parse_args()
    for nodelay, qos in ((False, 0), (False, 1), (True, 1)):
        with mosquitto(nodelay) as port:
            rtt = asyncio.run(round_trip(port, args.commands, qos))
        p50, p99 = statistics.median(rtt), pct(rtt, 99)
        broker = "set_tcp_nodelay true" if nodelay else "default config"
        print(
            f"command round trip, QoS {qos} command, mosquitto {broker} ({len(rtt)} commands):"
            f" p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(rtt):.1f} ms;"
            f" p99 / goal {RTT_GOAL_MS:.0f} ms = {p99 / RTT_GOAL_MS:.2f}"
            f" ({'ok' if p99 <= RTT_GOAL_MS else 'MISSED'})"
        )
    base = asyncio.run(site_run(None, args.chargers, args.seconds))
    with mosquitto() as port:
        mq = asyncio.run(site_run(port, args.chargers, args.seconds))
    n = args.chargers
    print(
        f"site of {n} chargers at 1 Hz, {args.seconds:g} s each, full refresh every {REFRESH_S} s"
        f" ({mq['charging']} charging with MQTT):"
    )
    print(
        f"  MQTT: published {mq['published_per_s']:.0f} msg/s, mosquitto_sub received "
        f"{mq['received_per_s']:.0f} msg/s ({mq['bytes_per_s'] / 1024:.0f} KiB/s incl. topics)"
    )
    print(f"  CPU (share of one core): {mq['cpu_share']:.1%} with MQTT, {base['cpu_share']:.1%} without")
    print(
        f"  tick jitter p50/p99/max: {mq['jitter_p50_ms']:.1f}/{mq['jitter_p99_ms']:.1f}/"
        f"{mq['jitter_max_ms']:.1f} ms with MQTT, {base['jitter_p50_ms']:.1f}/{base['jitter_p99_ms']:.1f}/"
        f"{base['jitter_max_ms']:.1f} ms without ({int(mq['ticks'])} ticks)"
    )
    ratio = mq["jitter_p99_ms"] / JITTER_GOAL_MS
    verdict = "ok" if mq["jitter_p99_ms"] <= JITTER_GOAL_MS else "MISSED"
    print(f"  jitter p99 / goal {JITTER_GOAL_MS:.0f} ms = {ratio:.2f} ({verdict})")


if __name__ == "__main__":
    main()
