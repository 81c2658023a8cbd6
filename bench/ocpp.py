"""One evpilot backend process managing 200 simulated OCPP 1.6J wallboxes (each an `ocpp` library client).

The wallboxes connect to `evpilot run` (a separate process), boot, report their status and send
MeterValues every 10 s; the bench feeds the mains meter through the native API (house load + what
the charging wallboxes draw, each drawing the limit it last acknowledged). After a steady window it
raises the house load so the mains is overloaded, and times, from that PUT:

- *resolved*: until the limits the wallboxes have acknowledged, plus the house, fit the mains on
  every phase (the overload is gone as far as the wallboxes are told);
- *all acked*: until every wallbox whose limit changed has acknowledged a profile at (or below) the
  limit it settles at.

Also printed: the backend's CPU share (of one core) and resident memory over the steady window.
Goals: all acked ≤ 2 s, CPU ≤ 20 % of one core, RSS ≤ 150 MB.

    .venv/bin/python bench/ocpp.py [--stations 200] [--charging 60] [--steady 30] [--lease-ticks 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/ocpp.py`, this file's folder comes first on sys.path and its name would hide
# the `ocpp` library: drop the folder before importing it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import yaml
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect

GOAL_ACK_S = 2.0
GOAL_CPU = 0.20
GOAL_RSS_MB = 150.0
MAINS_LIMIT = 200.0
HOUSE = 20.0
OVERLOAD = 60.0
CAR_MAX = 16.0
METER_S = 10.0
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SimWallbox(ChargePoint):  # type: ignore[misc]
    """A wallbox: acknowledges profiles (its car draws the live limit) and reports MeterValues."""

    def __init__(self, ident: str, conn: ClientConnection, phase: int, charging: bool) -> None:
        super().__init__(ident, conn, response_timeout=30)
        self.phase = phase
        self.charging = charging
        self.limit = 0.0
        self.acks: list[tuple[float, float]] = []  # (monotonic time, live limit)
        self.wh = 0
        self.meter_s = METER_S
        self.answer_triggers = True
        self.triggers = 0

    @on(Action.set_charging_profile)
    def on_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        if cs_charging_profiles["stack_level"] == 1:
            period = cs_charging_profiles["charging_schedule"]["charging_schedule_period"][0]
            self.limit = float(period["limit"])
            self.acks.append((time.monotonic(), self.limit))
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.trigger_message)
    def on_trigger(self, requested_message: str, connector_id: int | None = None) -> Any:
        self.triggers += 1
        ok = requested_message == "MeterValues" and self.answer_triggers
        return call_result.TriggerMessage(status="Accepted" if ok else "Rejected")

    @after(Action.trigger_message)
    async def after_trigger(self, requested_message: str, connector_id: int | None = None) -> None:
        if requested_message == "MeterValues" and self.answer_triggers:
            await self.send_meter_values()

    def draw(self) -> float:
        return min(self.limit, CAR_MAX) if self.charging and self.limit >= 6 else 0.0

    async def send_meter_values(self) -> None:
        amps = self.draw()
        self.wh += int(amps * 230 * self.meter_s / 3600)
        sampled = [
            {"value": str(self.wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": f"{amps:.1f}", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        ]
        await self.call(
            call.MeterValues(connector_id=1, meter_value=[{"timestamp": now_iso(), "sampledValue": sampled}])
        )

    async def meter_loop(self, offset: float) -> None:
        await asyncio.sleep(offset)
        while True:
            await self.send_meter_values()
            await asyncio.sleep(self.meter_s)


def config(n: int, lease_ticks: float, ocpp_port: int) -> dict[str, Any]:
    return {
        "site": {
            "mains_limit": MAINS_LIMIT,
            "mains_meter": "api",
            "meter_timeout_s": 11,
            "fallback_current": 0,
        },
        "chargers": [
            {
                "id": f"c{i:03d}",
                "phases": 1,
                "phase": i % 3 + 1,
                "max_current": CAR_MAX,
                "safe_current": 0,
                "driver": {"type": "ocpp", "id": f"CP-{i:03d}", "connector": 1},
            }
            for i in range(n)
        ],
        "sim": {"enabled": False},
        "ocpp_server": {"host": "127.0.0.1", "port": ocpp_port},
        "control": {"tick_s": 1, "lease_ticks": lease_ticks},
    }


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


async def run_wallbox(
    port: int,
    i: int,
    charging: bool,
    boxes: list[SimWallbox],
    ready: asyncio.Semaphore,
    meter_s: float,
    triggers: bool,
) -> None:
    url = f"ws://127.0.0.1:{port}/ocpp/CP-{i:03d}"
    async with ready:
        conn = await connect(url, subprotocols=["ocpp1.6"], ping_interval=None)  # type: ignore[list-item]
    cp = SimWallbox(f"CP-{i:03d}", conn, i % 3, charging)
    task = asyncio.create_task(cp.start())
    try:
        await cp.call(call.BootNotification(charge_point_model="Bench", charge_point_vendor="evpilot"))
        if charging:
            await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
            await cp.call(
                call.StartTransaction(connector_id=1, id_tag="FLEET", meter_start=0, timestamp=now_iso())
            )
            await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
        else:
            await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Available"))
        cp.meter_s = meter_s
        cp.answer_triggers = triggers
        boxes.append(cp)
        await cp.meter_loop(i * meter_s / 200)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await conn.close()


async def bench(args: argparse.Namespace) -> int:
    http_port, ocpp_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="evpilot-ocpp-bench-"))
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(config(args.stations, args.lease_ticks, ocpp_port)))
    log = open(tmp / "evpilot.log", "w")  # noqa: SIM115
    cmd = [sys.executable, "-m", "evpilot", "run", "--config", str(cfg), "--data-dir", str(tmp / "data")]
    cmd += ["--http", f"127.0.0.1:{http_port}", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    boxes: list[SimWallbox] = []
    house = [HOUSE, HOUSE, HOUSE]
    tasks: list[asyncio.Task[None]] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/api/site")).status_code == 200:
                        break
                if proc.poll() is not None:
                    print((tmp / "evpilot.log").read_text())
                    return 1
                await asyncio.sleep(0.1)

            def mains() -> list[float]:
                out = list(house)
                for cp in boxes:
                    out[cp.phase] += cp.draw()
                return out

            async def feed() -> None:
                while True:
                    await client.put("/api/meters/mains", json={"currents": mains()})
                    await asyncio.sleep(1.0)

            tasks.append(asyncio.create_task(feed()))
            t_connect = time.monotonic()
            gate = asyncio.Semaphore(20)
            for i in range(args.stations):
                tasks.append(
                    asyncio.create_task(
                        run_wallbox(
                            ocpp_port, i, i < args.charging, boxes, gate, args.meter_s, not args.no_trigger
                        )
                    )
                )
            while len(boxes) < args.stations:
                await asyncio.sleep(0.05)
                if time.monotonic() - t_connect > 120:
                    print(f"only {len(boxes)} of {args.stations} wallboxes booted within 120 s")
                    return 1
            connect_s = time.monotonic() - t_connect
            await asyncio.sleep(args.settle)
            cpu0, t0 = cpu_s(proc.pid), time.monotonic()
            await asyncio.sleep(args.steady)
            cpu_share = (cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
            rss, hwm = rss_mb(proc.pid)
            before = {cp.id: cp.limit for cp in boxes}
            # The overload: the house jumps on every phase; the meter reports it at once.
            house[:] = [HOUSE + OVERLOAD] * 3
            t_over = time.monotonic()
            await client.put("/api/meters/mains", json={"currents": mains()})
            await asyncio.sleep(args.observe)
            stations = (await client.get("/api/ocpp/stations")).json()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    # Replay the acknowledgements after the overload to find when the told limits fit the mains.
    events = sorted((at, cp.id, cp.phase, lim) for cp in boxes for at, lim in cp.acks if at >= t_over)
    told = {cp.id: before[cp.id] for cp in boxes}
    phase_of = {cp.id: cp.phase for cp in boxes}
    charging = {cp.id for cp in boxes if cp.charging}

    def fits() -> bool:
        load = [HOUSE + OVERLOAD] * 3
        for cid in charging:
            load[phase_of[cid]] += min(told[cid], CAR_MAX) if told[cid] >= 6 else 0.0
        return max(load) <= MAINS_LIMIT + 1.0

    resolved = 0.0 if fits() else None
    for at, cid, _, lim in events:
        told[cid] = lim
        if resolved is None and fits():
            resolved = at - t_over
    final = {cp.id: cp.limit for cp in boxes}
    changed = [cp for cp in boxes if final[cp.id] < before[cp.id]]
    reacted = settled = 0.0
    for cp in changed:
        first = next((at for at, lim in cp.acks if at >= t_over and lim < before[cp.id]), None)
        reacted = max(reacted, (first - t_over) if first is not None else float("inf"))
        last = next((at for at, lim in cp.acks if at >= t_over and lim <= final[cp.id]), None)
        settled = max(settled, (last - t_over) if last is not None else float("inf"))
    final_load = [HOUSE + OVERLOAD] * 3
    for cp in boxes:
        final_load[cp.phase] += cp.draw()
    if args.verbose:
        for cp in changed[:60]:
            acks = [(round(at - t_over, 3), lim) for at, lim in cp.acks if at >= t_over - 0.01]
            print(cp.id, cp.phase, before[cp.id], "->", final[cp.id], acks[:6])
    pushes = sum(c.get("pushes", 0) for s in stations for c in s["connectors"].values())
    failures = sum(c.get("failures", 0) for s in stations for c in s["connectors"].values())
    connected = sum(1 for s in stations if s["connected"])

    def row(name: str, value: float, unit: str, goal: float | None) -> None:
        ratio = f"{value / goal:6.2f}" if goal else "      "
        shown = f"{goal:g} {unit}" if goal else ""
        print(f"{name:<44} {value:10.3f} {unit:<4} goal {shown:<10} ratio {ratio}")

    print(
        f"stations {args.stations} ({args.charging} charging), MeterValues every {args.meter_s:g} s,"
        f" lease {args.lease_ticks:g} ticks of 1 s,"
        f" TriggerMessage {'rejected' if args.no_trigger else 'answered'}"
    )
    print(f"connected at the end {connected}, profiles sent {pushes}, failed {failures}")
    row("connect + boot of all wallboxes", connect_s, "s", None)
    print(
        f"mains limit {MAINS_LIMIT:g} A; house {HOUSE:g} A -> {HOUSE + OVERLOAD:g} A per phase; told load at"
    )
    print(
        f"the end (house + acknowledged limits of the charging wallboxes) {[round(x, 1) for x in final_load]}"
    )
    row(f"overload -> first lower limit acked (all {len(changed)})", reacted, "s", GOAL_ACK_S)
    row("overload -> settled limits acked (all)", settled, "s", GOAL_ACK_S)
    row("overload -> told limits fit (+1 A)", resolved if resolved is not None else float("inf"), "s", None)
    row("backend CPU share (steady window)", cpu_share * 100, "%", GOAL_CPU * 100)
    row("backend RSS (steady window)", rss, "MB", GOAL_RSS_MB)
    row("backend peak RSS", hwm, "MB", GOAL_RSS_MB)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--stations", type=int, default=200)
    p.add_argument("--charging", type=int, default=60, help="wallboxes with a car charging")
    p.add_argument("--settle", type=float, default=15, help="seconds before the steady window")
    p.add_argument("--steady", type=float, default=30, help="seconds of steady state measured")
    p.add_argument("--observe", type=float, default=10, help="seconds watched after the overload")
    p.add_argument("--meter-s", type=float, default=METER_S, help="MeterValues interval (s)")
    p.add_argument("--no-trigger", action="store_true", help="wallboxes reject TriggerMessage")
    p.add_argument("--verbose", action="store_true", help="print every changed wallbox's acks")
    p.add_argument("--lease-ticks", type=float, default=5, help="control.lease_ticks (the profiles' validTo)")
    return asyncio.run(bench(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
