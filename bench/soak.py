"""Soak: a simulated site under `evpilot run` at 100x for a simulated day, with faults injected at random.

Runs the real command as a subprocess (MQTT on against a mosquitto it starts on a free port), feeds
the API circuit meter, and injects faults from a seeded RNG: meter dropouts (the API circuit meter
and the simulator's mains meter), broker restarts, `kill -9` of evpilot and a restart on the same
data directory, fuzz traffic on every API, a WebSocket client that never reads. Invariants are
checked all along; a table of faults and invariants is printed at the end. Exit status 1 when an
invariant was violated. Linux only (reads /proc). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import yaml

from ports import free_port

BUDGET_KWH = 0.010  # the most a crash may lose, per charger
REACTION_S = 6.0
HALL = "hall"
CHARGERS: list[dict[str, Any]] = [
    {"id": "cp1", "circuit": HALL},
    {"id": "cp2", "circuit": HALL},
    {"id": "cp3", "circuit": "carport", "phases": 1, "phase": 2},
    {"id": "cp4", "circuit": "carport"},
]
IN_HALL = ("cp1", "cp2")
EVIL = "http://evil.example"
DEEP = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"a":' * 5000 + "1" + "}" * 5000


class Fault(StrEnum):
    """Kinds of injected faults."""

    CIRCUIT_DROPOUT = "circuit meter dropout"
    MAINS_DROPOUT = "mains meter dropout"
    BROKER_RESTART = "broker restart"
    KILL9 = "kill -9 and restart"
    FUZZ = "fuzz burst"
    WS_STALL = "WebSocket client never reads"


class Check(StrEnum):
    """Invariants."""

    OVERLOAD = "no node over its limit >= 6 s"
    WRITES = "no acknowledged write lost"
    ENERGY = "<= 10 Wh lost per crash"
    SESSIONS = "open sessions resumed after a crash"
    RSS = "RSS bounded"
    ALIVE = "process never dies on its own"
    HEALTH = "no supervised task failed"
    FUZZ = "fuzz refused with a 4xx"
    MQTT = "MQTT back after a broker restart"


# Per simulated hour of each fault kind (the full day); --quick places --per-kind of each instead.
RATES_PER_H = {
    Fault.CIRCUIT_DROPOUT: 3.0,
    Fault.MAINS_DROPOUT: 3.0,
    Fault.BROKER_RESTART: 1.0,
    Fault.KILL9: 1.0,
    Fault.FUZZ: 4.0,
    Fault.WS_STALL: 1.0,
}
WRITES_PER_H = 6.0
CARS_PER_H = 1.0


def which(name: str, extra: str = "/usr/sbin:/usr/local/sbin") -> str:
    """A program on PATH (or in `extra`); exits with a message if missing."""
    found = shutil.which(name) or shutil.which(name, path=extra)
    if found is None:
        sys.exit(f"soak: {name} is not installed (apt-get install mosquitto mosquitto-clients)")
    return found


def rss_kb(pid: int) -> int | None:
    """VmRSS of `pid` in kB (None once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


@dataclass
class Tally:
    """Faults injected and invariants held/violated, with the first violations described."""

    faults: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)
    violated: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, check: Check, ok: bool, detail: str = "") -> bool:
        """Count one check of an invariant."""
        with self.lock:
            if ok:
                self.held[check] += 1
            else:
                self.violated[check] += 1
                if len(self.notes) < 50:
                    self.notes.append(f"{check}: {detail}")
        return ok


class Broker:
    """mosquitto on a fixed free port (kept across restarts), persistence off."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
            f"log_dest file {directory}/mosquitto.log\n",
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until it listens (20 s at most)."""
        self.proc = subprocess.Popen([which("mosquitto"), "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen within 20 s")

    def kill(self) -> None:
        """SIGKILL (no clean goodbye to the clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Site:
    """The `evpilot run` subprocess on a fixed data directory; what the soak believes about the site."""

    def __init__(self, work: Path, args: argparse.Namespace, broker: Broker, rng: random.Random) -> None:
        self.work = work
        self.args = args
        self.broker = broker
        self.rng = rng
        self.data = work / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.runs = 0
        self.killing = False
        self.plugged: set[str] = {c["id"] for c in CHARGERS}
        self.tod_h = 6.0
        # Acknowledged writes: per charger user limit; the site lease as (amps, clock expiry).
        self.user_limits: dict[str, float | None] = {c["id"]: None for c in CHARGERS}
        self.lease: tuple[float, float] | None = None

    def config(self) -> dict[str, Any]:
        """The site's config for the next start: the cars plugged in now, today's time of day."""
        cars = [
            {"charger": cid, "battery_kwh": 100, "soc": 10, "max_current": 32, "phases": 3}
            for cid in sorted(self.plugged)
        ]
        return {
            "site": {
                "mains_limit": 40,
                "mains_meter": "sim",
                "circuits": [
                    {"name": HALL, "limit": 32, "meter": "api"},
                    {"name": "carport", "limit": 20},
                ],
            },
            "chargers": CHARGERS,
            "sim": {
                "seed": self.args.seed,
                "pv_kwp": 10,
                "start_tod_h": self.tod_h % 24,
                "cars": cars,
                "first_spike_s": None,  # not replayed at every restart; random spikes stay
            },
            "mqtt": {"url": f"mqtt://127.0.0.1:{self.broker.port}", "reconnect_max_s": 2},
        }

    def start(self) -> None:
        """Start evpilot and wait for its first 200 (60 s at most)."""
        self.runs += 1
        port = free_port()
        path = self.work / f"config-{self.runs}.yaml"
        path.write_text(yaml.safe_dump(self.config()), encoding="utf-8")
        cmd = [sys.executable, "-m", "evpilot", "run", "--http", f"127.0.0.1:{port}"]
        cmd += ["--speed", str(self.args.speed), "--data-dir", str(self.data), "--config", str(path)]
        log = open(self.work / f"evpilot-{self.runs}.log", "wb")  # noqa: SIM115 - closed with the process
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"evpilot exited with {self.proc.returncode} at start (run {self.runs})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/api/site", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("evpilot did not answer within 60 s")

    def kill9(self) -> None:
        """SIGKILL, as a power cut would."""
        assert self.proc is not None
        self.killing = True
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.killing = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def get(self, path: str) -> Any:
        """GET a JSON document."""
        r = httpx.get(self.base + path, timeout=10)
        r.raise_for_status()
        return r.json()


class Watcher(threading.Thread):
    """Polls the site, its health and RSS; counts overloads across restarts; notices a death."""

    def __init__(self, site: Site, tally: Tally, stop: threading.Event, max_rss_mb: float) -> None:
        super().__init__(daemon=True, name="soak-watch")
        self.site = site
        self.tally = tally
        self.halt = stop
        self.max_rss_mb = max_rss_mb
        self.doc: dict[str, Any] | None = None
        self.sim_time: float | None = None
        self.rss: list[tuple[int, float, int]] = []  # (run, clock time, kB)
        self.events: dict[str, int] = {}  # per node, this run
        self.events_total: Counter[str] = Counter()  # earlier runs
        self.stalled_total: Counter[str] = Counter()  # earlier runs: runs across a starved controller
        self.stalled: dict[str, int] = {}
        self.longest: dict[str, float] = {}
        self.restarts: Counter[str] = Counter()
        self.has_health: bool | None = None
        self.max_gap_s = 0.0
        self.pause = threading.Event()  # set while the soak itself stops or kills the process
        self.lock = threading.Lock()
        self.gen = 0  # bumped at every restart: a document from an earlier run is dropped
        self._run = 0

    def new_run(self) -> None:
        """The process was restarted: keep the last run's counts."""
        with self.lock:
            self.gen += 1
            self.events_total.update(self.events)
            self.stalled_total.update(self.stalled)
            self.events = {}
            self.stalled = {}

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            self.halt.wait(0.05)
            if self.pause.is_set():
                continue
            proc = self.site.proc
            if proc is None:
                continue
            if proc.poll() is not None and not self.site.killing:
                self.tally.check(
                    Check.ALIVE, False, f"evpilot exited with {proc.returncode} (run {self.site.runs})"
                )
                self.pause.set()
                continue
            self.tally.check(Check.ALIVE, True)
            gen = self.gen
            with contextlib.suppress(httpx.HTTPError, ValueError):
                doc = self.site.get("/api/site")
                self.see(doc, proc.pid, gen)
            if n % 20 == 0:
                self.health()

    def see(self, doc: dict[str, Any], pid: int, gen: int) -> None:
        """One site document of run generation `gen`: sim time, overload counts and RSS."""
        with self.lock:
            if gen == self.gen:
                self._see(doc, pid)

    def _see(self, doc: dict[str, Any], pid: int) -> None:
        t = doc["sim"]["time"]
        if self.sim_time is not None and self.doc is not None and self.site.runs == self._run:
            self.max_gap_s = max(self.max_gap_s, t - self.sim_time)
        self._run = self.site.runs
        self.doc, self.sim_time = doc, t
        self.site.tod_h = doc["sim"]["time_of_day_h"]
        before = sum(self.events.values())
        self.events = {k: v["events"] for k, v in doc.get("overloads", {}).items()}
        self.stalled = {k: v.get("stalled", 0) for k, v in doc.get("overloads", {}).items()}
        for k, v in doc.get("overloads", {}).items():
            self.longest[k] = max(self.longest.get(k, 0.0), v["longest_s"])
        new = sum(self.events.values()) - before
        over = [k for k, v in doc.get("overloads", {}).items() if v["events"]]
        self.tally.check(
            Check.OVERLOAD, new <= 0, f"{new} new overload event(s) on {over} (run {self.site.runs})"
        )
        kb = rss_kb(pid)
        if kb is not None:
            self.rss.append((self.site.runs, t, kb))
            mb = kb / 1024
            self.tally.check(Check.RSS, mb <= self.max_rss_mb, f"RSS {mb:.0f} MB > {self.max_rss_mb:.0f} MB")

    def health(self) -> None:
        """`GET /api/health` when the build has it: no task failed; restarts seen."""
        if self.has_health is False:
            return
        try:
            r = httpx.get(self.site.base + "/api/health", timeout=5)
        except httpx.HTTPError:
            return
        if r.status_code == 404:
            self.has_health = False
            return
        self.has_health = True
        with contextlib.suppress(ValueError, KeyError, TypeError):
            for task in r.json()["tasks"]:
                key = f"{task['name']}"
                self.restarts[key] = max(self.restarts[key], int(task.get("restarts", 0)))
                ok = task["state"] != "failed"
                self.tally.check(Check.HEALTH, ok, f"task {task['name']} failed: {task.get('last_error')}")

    def overload_total(self) -> Counter[str]:
        """Overload events per node over all runs."""
        out = Counter(self.events_total)
        out.update(self.events)
        return out

    def stalled_total_now(self) -> Counter[str]:
        """Overload runs across a starved controller, per node over all runs (not an invariant breach)."""
        out = Counter(self.stalled_total)
        out.update(self.stalled)
        return out


class Feeder(threading.Thread):
    """Feeds the hall circuit's API meter: its chargers' draw plus a workshop load, ~50 times a second."""

    def __init__(self, site: Site, stop: threading.Event, rng: random.Random) -> None:
        super().__init__(daemon=True, name="soak-feed")
        self.site = site
        self.halt = stop
        self.rng = rng
        self.silent = threading.Event()  # a dropout
        self.workshop = [2.0, 1.0, 3.0]
        self.sent = 0

    def run(self) -> None:
        with httpx.Client(timeout=5) as c:
            n = 0
            while not self.halt.is_set():
                n += 1
                self.halt.wait(0.02)
                if self.silent.is_set() or self.site.proc is None:
                    continue
                if n % 50 == 0:  # the workshop's machines come and go
                    self.workshop = [min(10.0, max(0.0, a + self.rng.uniform(-2, 2))) for a in self.workshop]
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    docs = c.get(self.site.base + "/api/chargers").json()
                    load = list(self.workshop)
                    for d in docs:
                        if d["id"] in IN_HALL:
                            for p in range(3):
                                load[p] += d["amperage"][p]
                    c.put(self.site.base + f"/api/meters/circuits/{HALL}", json={"currents": load})
                    self.sent += 1


@contextlib.contextmanager
def raw(base: str) -> Iterator[socket.socket]:
    """A raw TCP connection to the server."""
    host, port = base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), 5)
    try:
        yield s
    finally:
        s.close()


def fuzz_requests(cids: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx kwargs) that every API must refuse with a 4xx and no change."""
    js = {"content-type": "application/json"}
    cid = cids[0]
    return [
        ("PUT", f"/api/chargers/{cid}/current_limit", {"content": '{"current": 1e400}', "headers": js}),
        ("PUT", f"/api/chargers/{cid}/current_limit", {"content": '{"current": Infinity}', "headers": js}),
        ("PUT", f"/api/chargers/{cid}/current_limit", {"content": '{"current": NaN}', "headers": js}),
        ("PUT", f"/api/chargers/{cid}/current_limit", {"json": {"current": 10}, "headers": {"origin": EVIL}}),
        (
            "PUT",
            f"/api/chargers/{cid}/current_limit",
            {"content": b'{"current": 10}', "headers": {"content-type": "text/plain"}},
        ),
        ("POST", f"/api/chargers/{cid}/stop", {"headers": {"origin": EVIL}}),
        ("POST", f"/api/chargers/{cid}/stop", {"headers": {"host": "evil.example:8080"}}),
        ("PUT", f"/api/meters/circuits/{HALL}", {"content": '{"currents": ' + DEEP + "}", "headers": js}),
        ("PUT", f"/api/meters/circuits/{HALL}", {"json": {"currents": [500, 500, 500]}}),
        (
            "PUT",
            f"/api/meters/circuits/{HALL}",
            {"json": {"currents": [-5, 0, 0]}, "headers": {"origin": EVIL}},
        ),
        ("PUT", "/api/site/limit", {"content": '{"amps": NaN, "source": "lease"}', "headers": js}),
        ("PUT", "/api/site/limit", {"json": {"amps": 0}, "headers": {"origin": EVIL}}),
        ("GET", "/api/sessions?limit=1_0", {}),
        ("GET", "/api/sessions?limit=%D9%A3", {}),
        (
            "POST",
            "/rpc",
            {"content": '{"id": NaN, "src": "f", "method": "Shelly.GetDeviceInfo"}', "headers": js},
        ),
        ("POST", "/rpc", {"content": '{"id": 1, "method": "Shelly.GetStatus", "params": ' + DEEP + "}"}),
        ("GET", "/rpc/Number.Set?id=200&value=NaN", {}),
        ("GET", "/rpc/Boolean.Set?id=200&value=false", {"headers": {"sec-fetch-site": "cross-site"}}),
        ("POST", "/api/v1/state", {"content": DEEP_OBJECT, "headers": js}),
        ("POST", "/api/v1/state", {"content": '{"chargingCurrent": 1e400}', "headers": js}),
        ("PUT", "/api/v1/limits", {"content": '{"amperageLimit": NaN}', "headers": js}),
        ("PUT", "/api/v1/limits", {"content": '{"amperageLimit": ' + DEEP + "}", "headers": js}),
        ("POST", "/currents?L1=1_0&L2=0&L3=0", {}),
        ("POST", "/currents?L1=-500&L2=-500&L3=-500", {"headers": {"origin": EVIL}}),
        ("POST", "/settings?mode=%D9%A1", {}),
        ("POST", "/ev_meter?import_active_energy=1e308", {}),
        ("POST", "/api/v1/state", {"content": b" " * 200 * 1024, "headers": js}),
    ]


MQTT_FUZZ = ["1e308", "-1e308", "NaN", "١٢", "１２", "1_6", "9" * 30]


class Soak:
    """The fault loop."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.broker = Broker(work / "broker")
        self.site = Site(work, args, self.broker, self.rng)
        self.halt = threading.Event()
        self.watch = Watcher(self.site, self.tally, self.halt, args.max_rss_mb)
        self.feed = Feeder(self.site, self.halt, random.Random(args.seed + 1))
        self.losses: list[float] = []
        self.writes = 0
        self.cars = 0
        self.ws: list[tuple[socket.socket, float]] = []
        self.ends: list[tuple[float, str]] = []  # (clock time, what ends then)

    # ---- plan ---------------------------------------------------------------------------------

    def plan(self, seconds: float) -> list[tuple[float, str]]:
        """Seeded (offset s, action) list, sorted."""
        out: list[tuple[float, str]] = []
        hours = seconds / 3600
        for kind, rate in RATES_PER_H.items():
            n = self.args.per_kind if self.args.quick else max(1, round(rate * hours))
            out += [(self.rng.uniform(0.05, 0.95) * seconds, kind.value) for _ in range(n)]
        n_writes = max(2, round(WRITES_PER_H * hours)) if not self.args.quick else 2 * self.args.per_kind
        out += [(self.rng.uniform(0.02, 0.98) * seconds, "write") for _ in range(n_writes)]
        out += [
            (self.rng.uniform(0.05, 0.95) * seconds, "car") for _ in range(max(1, round(CARS_PER_H * hours)))
        ]
        return sorted(out)

    # ---- run ----------------------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        seconds = args.hours * 3600
        wall_deadline = time.monotonic() + (args.max_wall_s or seconds / args.speed * 3 + 600)
        self.broker.start()
        self.site.start()
        self.watch.start()
        self.feed.start()
        sim0 = self.site.get("/api/site")["sim"]["time"]
        todo = self.plan(seconds)
        last_print = time.monotonic()
        steps = 0
        now: float | None = None
        try:
            while time.monotonic() < wall_deadline and steps < 10_000_000:
                steps += 1
                time.sleep(0.01)
                proc = self.site.proc
                if proc is not None and proc.poll() is not None and not self.site.killing:
                    self.restart()  # died on its own (the watcher counted it): carry on
                now = self.watch.sim_time
                if now is None:
                    continue
                elapsed = now - sim0
                for at, what in [e for e in self.ends if e[0] <= now]:
                    self.ends.remove((at, what))
                    self.end(what)
                while todo and todo[0][0] <= elapsed:
                    _at, action = todo.pop(0)
                    self.act(action)
                if not todo and elapsed >= seconds:
                    break
                if time.monotonic() - last_print > 30 and not args.quiet:
                    last_print = time.monotonic()
                    print(
                        f"  {elapsed / 3600:5.2f} h simulated, faults {sum(self.tally.faults.values())}",
                        flush=True,
                    )
            else:
                self.tally.notes.append(f"wall-clock deadline reached with {len(todo)} actions left")
            for _at, what in list(self.ends):
                self.end(what)
            self.ends.clear()
            self.final_checks()
        finally:
            self.watch.pause.set()
            code = self.site.stop()
            self.halt.set()
            self.broker.kill()
            for s, _t in self.ws:
                s.close()
        self.tally.check(Check.ALIVE, code == 0, f"clean stop exited with {code}")
        self.report(now - sim0 if now is not None else 0.0)
        return 1 if sum(self.tally.violated.values()) else 0

    def act(self, action: str) -> None:
        """Run one planned action."""
        if action == "write":
            self.write()
            return
        if action == "car":
            self.car()
            return
        kind = Fault(action)
        self.tally.faults[kind] += 1
        now = self.watch.sim_time or 0.0
        if kind is Fault.CIRCUIT_DROPOUT:
            self.feed.silent.set()
            self.ends.append((now + self.rng.uniform(20, 180), "circuit"))
        elif kind is Fault.MAINS_DROPOUT:
            with contextlib.suppress(httpx.HTTPError):
                httpx.put(self.site.base + "/api/sim/mains_meter", json={"online": False}, timeout=5)
                self.ends.append((now + self.rng.uniform(20, 180), "mains"))
        elif kind is Fault.BROKER_RESTART:
            self.broker.kill()
            time.sleep(self.rng.uniform(0.1, 2.0))
            self.broker.start()
            self.mqtt_write()
        elif kind is Fault.KILL9:
            self.crash()
        elif kind is Fault.FUZZ:
            self.fuzz()
        elif kind is Fault.WS_STALL:
            self.ws_stall(now)

    def end(self, what: str) -> None:
        """A timed fault ends."""
        if what == "circuit":
            self.feed.silent.clear()
        elif what == "mains":
            with contextlib.suppress(httpx.HTTPError):
                httpx.put(self.site.base + "/api/sim/mains_meter", json={"online": True}, timeout=5)
        elif what == "ws" and self.ws:
            s, _t = self.ws.pop(0)
            s.close()

    # ---- writes -------------------------------------------------------------------------------

    def write(self) -> None:
        """One acknowledged write (a user limit or the site lease), then read back at once."""
        self.writes += 1
        if self.rng.random() < 0.6:
            cid = self.rng.choice(list(self.site.user_limits))
            value: float | None = None if self.rng.random() < 0.2 else float(self.rng.randint(8, 32))
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.put(
                    self.site.base + f"/api/chargers/{cid}/current_limit", json={"current": value}, timeout=5
                )
                if r.is_success:
                    self.site.user_limits[cid] = value
        else:
            amps = float(self.rng.randint(20, 40))
            timeout = self.rng.uniform(1, 4) * 3600
            now = self.watch.sim_time or 0.0
            with contextlib.suppress(httpx.HTTPError):
                body = {"amps": amps, "source": "lease", "timeout_s": timeout}
                r = httpx.put(self.site.base + "/api/site/limit", json=body, timeout=5)
                if r.is_success:
                    self.site.lease = (amps, now + timeout)

    def mqtt_write(self) -> None:
        """After a broker restart: an MQTT command takes effect within 30 s (retried), read back."""
        cid = self.rng.choice(list(self.site.user_limits))
        value = float(self.rng.randint(8, 32))
        pub = [which("mosquitto_pub"), "-p", str(self.broker.port), "-q", "1"]
        deadline = time.monotonic() + 30
        ok = False
        while time.monotonic() < deadline and not ok:
            subprocess.run(
                [*pub, "-t", f"evpilot/{cid}/current/set", "-m", str(int(value))], check=False, timeout=10
            )
            for _ in range(10):
                time.sleep(0.05)
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    if self.site.get(f"/api/chargers/{cid}")["limits"]["user"] == value:
                        ok = True
                        break
        if self.tally.check(Check.MQTT, ok, f"evpilot/{cid}/current/set {value} not applied within 30 s"):
            self.site.user_limits[cid] = value

    def verify_writes(self, when: str) -> None:
        """Every acknowledged write is still in effect."""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            docs = {d["id"]: d for d in self.site.get("/api/chargers")}
            for cid, want in self.site.user_limits.items():
                # a charger missing from the list is a lost write too, not a crash of the soak
                got = docs[cid]["limits"]["user"] if cid in docs else "missing"
                self.tally.check(
                    Check.WRITES, got == want, f"{when}: {cid} user limit {got}, acknowledged {want}"
                )
            site = self.site.get("/api/site")
            now = site["sim"]["time"]
            if self.site.lease is not None:
                amps, expires = self.site.lease
                got_lease = site["site_limits"].get("lease")
                if expires - now > 60:
                    ok = got_lease is not None and got_lease["amps"] == amps
                    self.tally.check(
                        Check.WRITES, ok, f"{when}: site lease {got_lease}, acknowledged {amps} A"
                    )
                elif now - expires > 60:
                    self.tally.check(
                        Check.WRITES, got_lease is None, f"{when}: lapsed lease back: {got_lease}"
                    )

    def car(self) -> None:
        """A car leaves or arrives (traffic, not a fault)."""
        self.cars += 1
        cid = self.rng.choice([c["id"] for c in CHARGERS])
        with contextlib.suppress(httpx.HTTPError):
            if cid in self.site.plugged:
                r = httpx.post(self.site.base + f"/api/sim/chargers/{cid}/unplug", timeout=5)
                if r.is_success:
                    self.site.plugged.discard(cid)
            else:
                body = {"battery_kwh": 100, "soc": 10, "max_current": 32, "phases": 3}
                r = httpx.post(self.site.base + f"/api/sim/chargers/{cid}/plug", json=body, timeout=5)
                if r.is_success:
                    self.site.plugged.add(cid)

    # ---- crash --------------------------------------------------------------------------------

    def crash(self) -> None:
        """`kill -9` at a random moment (half the time right after a write), then restart on the same data."""
        if self.rng.random() < 0.5:
            self.write()
        self.watch.pause.set()
        try:
            docs = {d["id"]: d for d in self.site.get("/api/chargers")}
            site = self.site.get("/api/site")
        except (httpx.HTTPError, ValueError):
            docs, site = {}, None
        if site is not None:
            self.watch.see(site, self.site.proc.pid if self.site.proc else 0, self.watch.gen)
        self.site.kill9()
        self.watch.new_run()
        stored_life, stored_open = self.stored()
        for cid, d in docs.items():
            loss = d["lifetime_kwh"] - stored_life.get(cid, 0.0)
            detail = (
                f"{cid}: lifetime {d['lifetime_kwh']:.3f} kWh seen, {stored_life.get(cid, 0.0):.3f} stored"
            )
            self.tally.check(Check.ENERGY, loss <= BUDGET_KWH, detail)
            if d["session"] is not None:
                sid = d["session"]["id"]
                stored = stored_open.get(sid)
                s_loss = d["session"]["energy_kwh"] - (stored if stored is not None else -math.inf)
                self.tally.check(
                    Check.ENERGY,
                    s_loss <= BUDGET_KWH,
                    f"{cid}: session {sid} seen {d['session']['energy_kwh']:.3f} kWh, stored {stored}",
                )
                self.losses.append(max(0.0, loss, s_loss))
            else:
                self.losses.append(max(0.0, loss))
        time.sleep(self.rng.uniform(0.05, 0.5))
        self.site.killing = False
        self.site.start()
        self.watch.pause.clear()
        self.verify_writes("after kill -9")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            # A session whose car is still plugged in continues (settled at the first tick after start).
            time.sleep(0.1)
            after = {d["id"]: d for d in self.site.get("/api/chargers")}
            for cid, d in docs.items():
                if d["session"] is None or cid not in self.site.plugged:
                    continue
                got = after[cid]["session"]
                ok = got is not None and got["id"] == d["session"]["id"]
                self.tally.check(
                    Check.SESSIONS, ok, f"{cid}: session {d['session']['id']} before, {got} after"
                )

    def restart(self) -> None:
        """Start again after an unexpected exit."""
        self.watch.new_run()
        self.site.start()
        self.watch.pause.clear()

    def stored(self) -> tuple[dict[str, float], dict[str, float]]:
        """Lifetime counters and open sessions' energy in the dead process's database."""
        path = self.site.data / "evpilot.sqlite3"
        with contextlib.closing(sqlite3.connect(path)) as db:
            life = dict(db.execute("SELECT charger_id, lifetime_kwh FROM counters").fetchall())
            opened = dict(db.execute("SELECT id, energy_kwh FROM open_sessions").fetchall())
        return life, opened

    # ---- fuzz and slow clients ----------------------------------------------------------------

    def fuzz(self) -> None:
        """A burst of refused requests on every API, a huge header and MQTT payloads that broke it."""
        cids = [c["id"] for c in CHARGERS]
        reqs = fuzz_requests(cids)
        with httpx.Client(base_url=self.site.base, timeout=10) as c:
            for method, path, kwargs in self.rng.sample(reqs, min(len(reqs), self.args.fuzz_burst)):
                try:
                    r = c.request(method, path, **kwargs)
                except httpx.HTTPError as exc:
                    self.tally.check(Check.FUZZ, False, f"{method} {path}: {exc!r}")
                    continue
                self.tally.check(Check.FUZZ, 400 <= r.status_code < 500, f"{method} {path}: {r.status_code}")
        with contextlib.suppress(OSError), raw(self.site.base) as s:
            s.sendall(b"GET /api/site HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n")
            answer = s.recv(64)
            self.tally.check(
                Check.FUZZ,
                answer.startswith(b"HTTP/1.1 431") or answer == b"",
                f"100 kB header: {answer[:40]!r}",
            )
        pub = [which("mosquitto_pub"), "-p", str(self.broker.port)]
        for payload in self.rng.sample(MQTT_FUZZ, 3):
            cid = self.rng.choice(cids)
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [*pub, "-t", f"evpilot/{cid}/current/set", "-m", payload], check=False, timeout=10
                )
        time.sleep(0.05)
        self.verify_writes("after fuzz")

    def ws_stall(self, now: float) -> None:
        """Open `/api/ws`, read the 101 head and never read again."""
        host, port = self.site.base.removeprefix("http://").split(":")
        try:
            s = socket.create_connection((host, int(port)), 5)
            s.sendall(
                b"GET /api/ws HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
            )
            s.recv(12)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        except OSError:
            return
        self.ws.append((s, now))
        self.ends.append((now + self.rng.uniform(300, 1800), "ws"))

    # ---- end ------------------------------------------------------------------------------------

    def final_checks(self) -> None:
        """Writes still in effect at the end; the last overload counts."""
        self.verify_writes("at the end")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if self.site.proc is not None:
                self.watch.see(self.site.get("/api/site"), self.site.proc.pid, self.watch.gen)
        self.watch.health()

    def report(self, elapsed: float) -> None:
        """The table."""
        t = self.tally
        w = self.watch
        print(
            f"\nsoak: {elapsed / 3600:.2f} h simulated at {self.args.speed:g}x, seed {self.args.seed}, "
            f"{self.site.runs} evpilot run(s), {self.writes} writes, {self.cars} car arrivals/departures, "
            f"{self.feed.sent} circuit readings fed"
        )
        print(f"\n{'fault injected':<36}{'count':>8}")
        for kind in Fault:
            print(f"{kind.value:<36}{t.faults[kind]:>8}")
        print(f"\n{'invariant':<40}{'held':>10}{'violated':>10}")
        for check in Check:
            print(f"{check.value:<40}{t.held[check]:>10}{t.violated[check]:>10}")
        print()
        overloads = w.overload_total()
        print(
            "overload events per node: "
            + (", ".join(f"{k} {v}" for k, v in sorted(overloads.items())) or "none")
        )
        stalled = w.stalled_total_now()
        print(
            "overload runs while evpilot itself was stalled (counted apart): "
            + (", ".join(f"{k} {v}" for k, v in sorted(stalled.items())) or "none")
        )
        print(
            "longest run over a limit (s): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(w.longest.items()))
        )
        print(f"largest gap between two site polls: {w.max_gap_s:.1f} s of clock time")
        if self.losses:
            print(
                f"energy lost per crash and charger: max {max(self.losses) * 1000:.1f} Wh "
                f"over {len(self.losses)} (crash, charger) pairs"
            )
        if w.rss:
            print(
                f"RSS: max {max(kb for _r, _t, kb in w.rss) / 1024:.0f} MB; growth {growth(w.rss):+.2f} MB "
                "per simulated hour (longest run, after its first 10 %)"
            )
        if w.has_health:
            print(
                "supervised task restarts: "
                + (", ".join(f"{k} {v}" for k, v in sorted(w.restarts.items())) or "0")
            )
        elif w.has_health is False:
            print("GET /api/health: not in this build")
        for note in t.notes:
            print("  " + note)
        bad = sum(t.violated.values())
        print("\nsoak: " + (f"{bad} invariant violation(s)" if bad else "all invariants held"))


def growth(samples: list[tuple[int, float, int]]) -> float:
    """Least-squares slope of RSS (MB) over clock hours in the longest run, its first 10 % left out."""
    runs: dict[int, list[tuple[float, int]]] = {}
    for run, t, kb in samples:
        runs.setdefault(run, []).append((t, kb))
    pts = max(runs.values(), key=lambda p: p[-1][0] - p[0][0])
    t0, t1 = pts[0][0], pts[-1][0]
    pts = [(t, kb) for t, kb in pts if t >= t0 + 0.1 * (t1 - t0)]
    if len(pts) < 2 or t1 - t0 <= 0:
        return 0.0
    xs = [(t - t0) / 3600 for t, _kb in pts]
    ys = [kb / 1024 for _t, kb in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def main(argv: list[str] | None = None) -> int:
    """Parse options and run the soak."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    p.add_argument("--speed", type=float, default=100.0, help="clock speed of evpilot (default 100)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--quick", action="store_true", help="a few simulated hours (default 2), --per-kind of each fault"
    )
    p.add_argument("--per-kind", type=int, default=2, help="with --quick: faults of each kind (default 2)")
    p.add_argument("--fuzz-burst", type=int, default=12, help="requests per fuzz burst (default 12)")
    p.add_argument("--max-rss-mb", type=float, default=300.0, help="RSS bound (default 300 MB)")
    p.add_argument("--max-wall-s", type=float, default=None, help="stop after this much wall time")
    p.add_argument(
        "--work-dir", type=Path, default=None, help="keep logs and data here (default: a temp dir)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.quick and "--hours" not in (argv if argv is not None else sys.argv):
        args.hours = 2.0
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return Soak(args, args.work_dir).run()
    with tempfile.TemporaryDirectory(prefix="evpilot-soak-") as tmp:
        return Soak(args, Path(tmp)).run()


if __name__ == "__main__":
    sys.exit(main())
