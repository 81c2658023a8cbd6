"""The charger drivers against the devices' recorded answers (tests/data/chargers), on a real socket."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from evpilot.devices.base import Setpoint
from evpilot.devices.http_links import Esp32EvseLink, ShellyTopAcLink, SmartEvseLink
from evpilot.devices.netlink import LinkFault

DATA = Path(__file__).parent.parent / "data" / "chargers"


def recorded(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


# handler(request) -> (status, body); None: never answer (a hung device).
Handler = Callable[[Request], tuple[int, bytes] | None]


@dataclass
class Device:
    """A loopback HTTP/1.1 server that records every request and answers through `handler`."""

    handler: Handler
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Request(method, target, headers, body)
                self.requests.append(req)
                answer = self.handler(req)
                if answer is None:
                    await asyncio.sleep(3600)
                    return
                status, payload = answer
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def device(handler: Handler) -> AsyncIterator[Device]:
    dev = Device(handler)
    conns: set[asyncio.Task[None]] = set()

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conns.add(task)
        try:
            await dev.handle(r, w)
        finally:
            conns.discard(task)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    dev.port = int(server.sockets[0].getsockname()[1])
    try:
        yield dev
    finally:
        server.close()
        for task in list(conns):
            task.cancel()
        await asyncio.gather(*conns, return_exceptions=True)
        await server.wait_closed()


def clock() -> float:
    return 1000.0


def sp(amps: float) -> Setpoint:
    return Setpoint(amps, 3, 2000.0, 6.0)


async def test_esp32evse_reads_the_recorded_state_and_writes_as_the_firmware_expects() -> None:
    state = recorded("esp32evse_state.json")

    def answer(req: Request) -> tuple[int, bytes]:
        if req.headers.get("authorization") != "Basic " + base64.b64encode(b"admin:s3cret").decode():
            return 401, b""
        if req.method == "GET" and req.target == "/api/v1/state":
            return 200, json.dumps(state).encode()
        if req.method == "POST" and req.target.startswith("/api/v1/state/"):
            if req.headers.get("content-type") != "application/json":
                return 415, b""
            value = json.loads(req.body)
            if req.target.endswith("/enabled"):
                state["enabled"] = value
            elif req.target.endswith("/charging-current"):
                state["chargingCurrent"] = value
            return 200, b""
        return 404, b""

    async with device(answer) as dev:
        link = Esp32EvseLink("cp1", "127.0.0.1", clock, dev.port, "admin", "s3cret")
        try:
            assert await link.exchange()
            r = link.latest()
            assert r is not None and r.state == "C" and r.currents == (10.6, 10.5, 10.6)
            assert r.voltages == (229.4, 230.1, 231.0)
            assert r.energy_kwh == pytest.approx(1526400000 / 3_600_000)  # totalConsumption, Ws
            assert link.session_kwh == pytest.approx(11988000 / 3_600_000)  # consumption, Ws
            assert r.taken_at == 1000.0
            link.send(sp(10.46))
            assert await link.exchange()
            posts = [(q.target, q.body) for q in dev.requests if q.method == "POST"]
            assert posts == [("/api/v1/state/charging-current", b"10.5")]  # 0.1 A steps
            assert state["chargingCurrent"] == 10.5
            link.send(sp(0))
            assert await link.exchange()
            assert state["enabled"] is False
            link.send(sp(7))
            assert await link.exchange()
            assert state["enabled"] is True and state["chargingCurrent"] == 7
            assert link.status(1003.0)["last_seen_s"] == 3.0 and link.online
        finally:
            await link.close()


async def test_esp32evse_with_wrong_credentials_is_an_auth_fault() -> None:
    async with device(lambda req: (401, b"")) as dev:
        link = Esp32EvseLink("cp1", "127.0.0.1", clock, dev.port, "admin", "wrong")
        try:
            assert not await link.exchange()
            assert link.errors == {LinkFault.AUTH: 1} and link.last_error is not None
            assert "credentials" in link.last_error and not link.online
        finally:
            await link.close()


async def test_a_hung_device_times_out_and_keeps_its_last_reading() -> None:
    hang = False

    def answer(req: Request) -> tuple[int, bytes] | None:
        return None if hang else (200, json.dumps(recorded("esp32evse_state.json")).encode())

    async with device(answer) as dev:
        link = Esp32EvseLink("cp1", "127.0.0.1", clock, dev.port, timeout_s=0.2)
        try:
            link.send(sp(12))
            assert await link.exchange()
            hang = True
            assert not await link.exchange()
            assert link.errors == {LinkFault.TIMEOUT: 1}
            r = link.latest()
            assert r is not None and r.taken_at == 1000.0  # the old reading keeps its time: stale
            assert link.assumed() == 12.0  # assumed to draw what it was last told
        finally:
            await link.close()


async def test_shelly_top_ac_recorded_status_and_role_addressed_commands() -> None:
    status = recorded("shelly_topac_getstatus.json")
    comps = recorded("shelly_topac_getcomponents.json")
    calls: list[tuple[str, Any]] = []

    def answer(req: Request) -> tuple[int, bytes]:
        frame = json.loads(req.body)
        method, params = frame["method"], frame.get("params")
        calls.append((method, params))
        result: Any = None
        if method == "Shelly.GetStatus":
            result = status
        elif method == "Shelly.GetComponents":
            result = comps
        elif method in ("Number.Set", "Boolean.Set"):
            if params.get("owner") != "service:0":
                return 200, json.dumps({"id": frame["id"], "error": {"code": -105, "message": "no"}}).encode()
            key = {"current_limit": "number:200", "start_charging": "boolean:200"}[params["role"]]
            status[key]["value"] = params["value"]
        else:
            return 200, json.dumps(
                {"id": frame["id"], "error": {"code": -114, "message": "unknown"}}
            ).encode()
        return 200, json.dumps({"id": frame["id"], "src": "topac", "result": result}).encode()

    async with device(answer) as dev:
        link = ShellyTopAcLink("cp1", "127.0.0.1", clock, dev.port, websocket=False)
        try:
            assert await link.exchange()
            r = link.latest()
            assert r is not None and r.state == "C" and r.currents == (10.1, 10.1, 10.1)
            assert r.energy_kwh == 5.37 and r.voltages == (230.1, 229.8, 230.4)
            link.send(sp(13.27))
            assert await link.exchange()
            sets = [c for c in calls if c[0].endswith(".Set")]
            assert sets == [
                ("Number.Set", {"owner": "service:0", "role": "current_limit", "value": 13.3}),
                ("Boolean.Set", {"owner": "service:0", "role": "start_charging", "value": True}),
            ]
            link.send(sp(2))
            assert await link.exchange()
            assert status["boolean:200"]["value"] is False
            assert [c[0] for c in calls].count("Shelly.GetComponents") == 1
        finally:
            await link.close()


async def test_shelly_rpc_error_is_a_refusal() -> None:
    def answer(req: Request) -> tuple[int, bytes]:
        frame = json.loads(req.body)
        return 200, json.dumps({"id": frame["id"], "error": {"code": 401, "message": "auth"}}).encode()

    async with device(answer) as dev:
        link = ShellyTopAcLink("cp1", "127.0.0.1", clock, dev.port, websocket=False)
        try:
            assert not await link.exchange()
            assert link.errors == {LinkFault.AUTH: 1}
        finally:
            await link.close()


async def test_smartevse_recorded_settings_and_posts() -> None:
    doc = recorded("smartevse_settings.json")
    posts: list[str] = []

    def answer(req: Request) -> tuple[int, bytes]:
        if req.method == "GET" and req.target == "/settings":
            return 200, json.dumps(doc).encode()
        if req.method == "POST" and req.target.startswith("/settings?"):
            posts.append(req.target.split("?", 1)[1])
            return 200, b"{}"
        return 404, b""

    async with device(answer) as dev:
        link = SmartEvseLink("cp1", "127.0.0.1", clock, dev.port)
        try:
            assert await link.exchange()
            r = link.latest()
            assert r is not None and r.state == "C" and r.currents == (15.9, 15.8, 16.0)
            assert r.energy_kwh == 2513.4 and r.temperature == 31
            link.send(sp(9.5))
            assert await link.exchange()
            assert posts == ["override_current=95"]  # already on: no mode change
            link.send(sp(0))
            assert await link.exchange()
            assert posts[-1] == "mode=0"
        finally:
            await link.close()


@pytest.mark.parametrize(
    ("name", "mangle", "fragment"),
    [
        ("esp32evse_state.json", lambda d: d.update(state="X9"), "unknown state"),
        ("esp32evse_state.json", lambda d: d.update(current="10"), "'current'"),
        ("esp32evse_state.json", lambda d: d.pop("chargingCurrent"), "chargingCurrent"),
        ("smartevse_settings.json", lambda d: d.pop("evse"), "no 'evse'"),
        ("smartevse_settings.json", lambda d: d["settings"].update(override_current="x"), "override_current"),
    ],
)
async def test_malformed_answers_are_protocol_faults(
    name: str, mangle: Callable[[dict[str, Any]], Any], fragment: str
) -> None:
    doc = recorded(name)
    mangle(doc)
    async with device(lambda req: (200, json.dumps(doc).encode())) as dev:
        cls = Esp32EvseLink if name.startswith("esp32") else SmartEvseLink
        link = cls("cp1", "127.0.0.1", clock, dev.port)
        try:
            assert not await link.exchange()
            assert link.errors == {LinkFault.PROTOCOL: 1}
            assert link.last_error is not None and fragment in link.last_error
            assert link.latest() is None
        finally:
            await link.close()


async def test_a_refused_current_is_counted_once_and_not_retried() -> None:
    state = recorded("esp32evse_state.json")
    posts: list[bytes] = []

    def answer(req: Request) -> tuple[int, bytes]:
        if req.method == "GET":
            return 200, json.dumps(state).encode()
        posts.append(req.body)
        if float(req.body) > 16:
            return 400, b'{"chargingCurrent": "out of range"}'
        state["chargingCurrent"] = float(req.body)
        return 200, b""

    async with device(answer) as dev:
        link = Esp32EvseLink("cp1", "127.0.0.1", clock, dev.port)
        try:
            link.send(sp(20))
            for _ in range(3):
                assert await link.exchange()  # the device answers: it is not silent
            assert posts == [b"20"] and link.errors == {LinkFault.REFUSED: 1} and link.online
            assert link.last_error is not None and "HTTP 400" in link.last_error
            link.send(sp(12))
            assert await link.exchange()
            assert posts == [b"20", b"12"] and state["chargingCurrent"] == 12
        finally:
            await link.close()
