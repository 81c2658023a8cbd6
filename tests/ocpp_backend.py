"""A small OCPP backend (CSMS) built on the `ocpp` library, on a real websockets server, for the tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call_result
from ocpp.v16.enums import Action
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Central16(Cp16):  # type: ignore[misc]
    """The backend's side of one 1.6 charge point: answers and records every message."""

    def __init__(self, cid: str, ws: ServerConnection, backend: Backend) -> None:
        super().__init__(cid, ws, response_timeout=10)
        self.backend = backend

    def _note(self, action: str, payload: dict[str, Any]) -> None:
        self.backend.messages.append((self.id, action, payload))
        self.backend.changed.set()

    @on(Action.boot_notification)
    def on_boot(self, **kw: Any) -> call_result.BootNotification:
        self._note("BootNotification", kw)
        b = self.backend
        status = b.boot_answers.pop(0) if b.boot_answers else "Accepted"
        return call_result.BootNotification(current_time=_now(), interval=b.interval, status=status)

    @on(Action.heartbeat)
    def on_heartbeat(self, **kw: Any) -> call_result.Heartbeat:
        self._note("Heartbeat", kw)
        return call_result.Heartbeat(current_time=_now())

    @on(Action.status_notification)
    def on_status(self, **kw: Any) -> call_result.StatusNotification:
        self._note("StatusNotification", kw)
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **kw: Any) -> call_result.Authorize:
        self._note("Authorize", {"id_tag": id_tag})
        status = "Invalid" if id_tag in self.backend.invalid_tags else "Accepted"
        return call_result.Authorize(id_tag_info={"status": status})

    @on(Action.start_transaction)
    def on_start(self, **kw: Any) -> call_result.StartTransaction:
        self.backend.next_tx += 1
        kw["transaction_id"] = self.backend.next_tx
        self._note("StartTransaction", kw)
        return call_result.StartTransaction(
            transaction_id=self.backend.next_tx, id_tag_info={"status": "Accepted"}
        )

    @on(Action.stop_transaction)
    def on_stop(self, **kw: Any) -> call_result.StopTransaction:
        self._note("StopTransaction", kw)
        return call_result.StopTransaction()

    @on(Action.meter_values)
    def on_meter_values(self, **kw: Any) -> call_result.MeterValues:
        self._note("MeterValues", kw)
        return call_result.MeterValues()


class Central201(Cp201):  # type: ignore[misc]
    """The backend's side of one 2.0.1 charging station."""

    def __init__(self, cid: str, ws: ServerConnection, backend: Backend) -> None:
        super().__init__(cid, ws, response_timeout=10)
        self.backend = backend

    def _note(self, action: str, payload: dict[str, Any]) -> None:
        self.backend.messages.append((self.id, action, payload))
        self.backend.changed.set()

    @on(Action201.boot_notification)
    def on_boot(self, **kw: Any) -> result201.BootNotification:
        self._note("BootNotification", kw)
        return result201.BootNotification(
            current_time=_now(), interval=self.backend.interval, status="Accepted"
        )

    @on(Action201.heartbeat)
    def on_heartbeat(self, **kw: Any) -> result201.Heartbeat:
        self._note("Heartbeat", kw)
        return result201.Heartbeat(current_time=_now())

    @on(Action201.status_notification)
    def on_status(self, **kw: Any) -> result201.StatusNotification:
        self._note("StatusNotification", kw)
        return result201.StatusNotification()

    @on(Action201.transaction_event)
    def on_tx(self, **kw: Any) -> result201.TransactionEvent:
        self._note("TransactionEvent", kw)
        return result201.TransactionEvent()

    @on(Action201.meter_values)
    def on_meter_values(self, **kw: Any) -> result201.MeterValues:
        self._note("MeterValues", kw)
        return result201.MeterValues()

    @on(Action201.authorize)
    def on_authorize(self, id_token: dict[str, Any], **kw: Any) -> result201.Authorize:
        self._note("Authorize", {"id_token": id_token, **kw})
        status = "Invalid" if id_token["id_token"] in self.backend.invalid_tags else "Accepted"
        return result201.Authorize(id_token_info={"status": status})


class Backend:
    """A CSMS on 127.0.0.1:`port` at /ocpp/<id>, speaking 1.6 or 2.0.1 as the station asks."""

    def __init__(
        self, port: int, password: str | None = None, interval: int = 300, tls: ssl.SSLContext | None = None
    ) -> None:
        self.port = port
        self.tls = tls
        self.password = password
        self.interval = interval
        self.messages: list[tuple[str, str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self.boot_answers: list[str] = []
        self.invalid_tags: set[str] = set()
        self.next_tx = 0
        self.stations: dict[str, Any] = {}
        self.refused = 0
        self._server: Server | None = None

    async def start(self) -> None:
        """Listen (again)."""
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            subprotocols=[Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")],
            ssl=self.tls,
        )

    async def stop(self) -> None:
        """Close the server and every connection (the backend 'dies')."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.stations.clear()

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cid = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        if self.password is not None:
            token = base64.b64encode(f"{cid}:{self.password}".encode()).decode()
            if ws.request.headers.get("Authorization") != f"Basic {token}":
                self.refused += 1
                await ws.close(1008, "unauthorized")
                return
        cp: Any = Central201(cid, ws, self) if ws.subprotocol == "ocpp2.0.1" else Central16(cid, ws, self)
        self.stations[cid] = cp
        with contextlib.suppress(ConnectionClosed):
            await cp.start()

    def of(self, action: str, cid: str | None = None) -> list[dict[str, Any]]:
        """The payloads of `action` received so far (from `cid` if given), oldest first."""
        return [p for c, a, p in self.messages if a == action and (cid is None or c == cid)]

    async def wait(self, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until `check()` is truthy; returns it (fails with the messages seen so far)."""
        async with asyncio.timeout(timeout):
            while True:
                self.changed.clear()
                value = check()
                if value:
                    return value
                # Also polls: a condition may hang on the charge point's state, not on a message.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self.changed.wait()

    async def station(self, cid: str, timeout: float = 10.0) -> Any:
        """The connected station `cid` (after its boot)."""
        async with asyncio.timeout(timeout):
            while cid not in self.stations or not self.of("BootNotification", cid):
                await asyncio.sleep(0.02)
        return self.stations[cid]
