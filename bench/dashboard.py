"""The dashboard in headless Chromium: first paint, a 24 h chart of 1,440 points, 50 live chargers.

A real evpilot server (runtime, store, uvicorn) runs in this process with N simulated chargers
and a store holding 24 h of per-minute history; Debian's chromium loads `/` through Playwright.
Prints: first contentful paint (goal ≤ 1 s on loopback), the time from starting to draw each
chart to the frame after it was painted (the charger chart holds 2 series per charger; goal
≤ 200 ms for 1,440 points per series), and long tasks (> 50 ms, the browser's jank measure)
while the page follows live updates for a while (goal: none).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from playwright.async_api import async_playwright

from evpilot.api.app import create_app
from evpilot.api.server import server_config
from evpilot.config import parse_config
from evpilot.control.clock import ScaledClock
from evpilot.control.runtime import Runtime
from evpilot.store.sqlite import Store
from ports import free_port

FCP_GOAL_MS = 1000.0
CHART_GOAL_MS = 200.0


def fill_history(store: Store, now: float, chargers: int) -> None:
    """24 h of per-minute rows ending now, every series present."""
    minute = int(now // 60) * 60
    for i in range(1440):
        t = minute - (1439 - i) * 60
        row: dict[str, float] = {f"mains_l{p}": 10 + (i % 60) / 6 + p for p in (1, 2, 3)}
        row.update(mains_limit=200.0, pv_w=3000.0 + i, house_w=2000.0, battery_w=0.0, grid_w=1000.0 - i)
        for c in range(1, chargers + 1):
            row[f"charger:cp{c}:current"] = (i + c) % 16
            row[f"charger:cp{c}:available"] = 16.0
        store.add_history(t, row)
    store.flush()


async def run(chargers: int, speed: float, watch_s: float, chromium: str) -> None:
    config = parse_config(
        {
            "site": {"mains_limit": 200, "fallback_current": 0},
            "chargers": [
                {"id": f"cp{c}", "max_current": 16, "safe_current": 0} for c in range(1, chargers + 1)
            ],
            "sim": {
                "first_spike_s": None,
                "spike_rate_h": 0,
                "cars": [{"charger": f"cp{c}", "soc": 20} for c in range(1, chargers + 1)],
            },
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.sqlite3")
        rt = Runtime(config, ScaledClock(speed), store)
        fill_history(store, rt.clock.now(), chargers)
        port = free_port()
        server = uvicorn.Server(server_config(create_app(rt), "127.0.0.1", port))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.add_init_script(
                    "window.__long = []; new PerformanceObserver((l) => { for (const e of l.getEntries())"
                    " window.__long.push(e.duration); }).observe({type: 'longtask', buffered: true});"
                )
                await page.goto(f"http://127.0.0.1:{port}/")
                await page.wait_for_function(
                    f"document.querySelectorAll('#chargers article').length === {chargers}"
                    " && performance.getEntriesByType('measure').length >= 3",
                    timeout=60_000,
                )
                fcp = await page.evaluate(
                    "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null"
                )
                charts: list[dict[str, Any]] = await page.evaluate(
                    "performance.getEntriesByType('measure').map((m) => ({name: m.name, ms: m.duration,"
                    " points: Number(document.getElementById(m.name.slice(6)).dataset.points),"
                    " series: document.getElementById(m.name.slice(6)).querySelectorAll('path').length}))"
                )
                await page.evaluate("window.__long = []")
                await asyncio.sleep(watch_s)
                long_tasks: list[float] = await page.evaluate("window.__long")
                await browser.close()
        finally:
            server.should_exit = True
            await task
            store.close()
    print(f"{chargers} chargers, speed {speed:g}x, chromium {chromium}")
    print(
        f"first contentful paint: {fcp:.0f} ms (goal ≤ {FCP_GOAL_MS:.0f} ms, ratio {fcp / FCP_GOAL_MS:.2f})"
    )
    for c in charts:
        per = c["points"] / max(1, c["series"])
        print(
            f"{c['name']}: {c['ms']:.0f} ms for {c['points']} points ({c['series']} series of {per:.0f};"
            f" goal ≤ {CHART_GOAL_MS:.0f} ms, ratio {c['ms'] / CHART_GOAL_MS:.2f})"
        )
    worst = max(long_tasks, default=0.0)
    print(
        f"live updates for {watch_s:g} s: {len(long_tasks)} long tasks (> 50 ms),"
        f" longest {worst:.0f} ms (goal: none)"
    )


def main() -> None:
    """Parse arguments and run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chargers", type=int, default=50)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--watch", type=float, default=10.0, help="seconds of live updates to watch")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    asyncio.run(run(args.chargers, args.speed, args.watch, args.chromium))


if __name__ == "__main__":
    main()
