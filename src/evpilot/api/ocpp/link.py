"""A station's connection to its backend, shared by 1.6 and 2.0.1: reconnect, boot, timers, the outbox.

The runtime's events reach the station through a listener (its own task): a session start queues the
start of a transaction, a session end its stop with the real meter stop, every event a status check.
Transaction messages go to the durable outbox first and are delivered in order, with their original
timestamps, whenever the backend is reachable; sampled meter values are queued even while offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from typing import Any, TypeVar, cast

from ocpp import routing
from ocpp.exceptions import OCPPError
from ocpp.messages import MessageType, unpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, WebSocketException
from websockets.typing import Subprotocol

from evpilot.api.ocpp.station import ORIGIN, Station, Transaction, iso
from evpilot.core.access import LockMode
from evpilot.security import basic_header

log = logging.getLogger("evpilot.ocpp")
F = TypeVar("F", bound=Callable[..., Any])


def on(action: str) -> Callable[[F], F]:
    """The `ocpp` library's handler decorator, typed."""
    return cast(Callable[[F], F], routing.on(action))


def after(action: str) -> Callable[[F], F]:
    """The `ocpp` library's after-hook decorator, typed."""
    return cast(Callable[[F], F], routing.after(action))


# Without an interval from the backend, a refused BootNotification is retried after this (s).
BOOT_RETRY_S = 10.0
# The only DataTransfer vendor evpilot knows (it defines no messages, so each is Rejected).
VENDOR = "evpilot"
# Calls whose answer waits on hardware (the cable lock's confirmation, up to its attempts).
SLOW_CALLS = frozenset({"UnlockConnector"})


class BootReason(StrEnum):
    """Why a BootNotification is sent (2.0.1 names it in the message; 1.6 has no field for it)."""

    POWER_UP = "PowerUp"
    REMOTE_RESET = "RemoteReset"
    TRIGGERED = "Triggered"


class Availability(StrEnum):
    """ChangeAvailability's answer (the same words in 1.6 and 2.0.1)."""

    ACCEPTED = "Accepted"
    SCHEDULED = "Scheduled"
    REJECTED = "Rejected"


class Unlock(StrEnum):
    """What an UnlockConnector did; each version words it in its own vocabulary."""

    UNLOCKED = "Unlocked"
    FAILED = "UnlockFailed"
    NO_LOCK = "NoLock"
    UNKNOWN = "UnknownConnector"
    BUSY = "OngoingAuthorizedTransaction"


class Trigger(StrEnum):
    """TriggerMessage's answer (the same words in 1.6 and 2.0.1)."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    NOT_IMPLEMENTED = "NotImplemented"


class Link(ABC):
    """One station's connection; subclasses speak one OCPP version."""

    subprotocol = ""

    def __init__(self, station: Station) -> None:
        self.station = station
        self.rt = station.rt
        self.connected = False
        self.accepted = False
        # Set once the connection's BootNotification has an answer (or the connection is gone).
        self.boot_answered = asyncio.Event()
        self.status_changed = asyncio.Event()
        self.timers_changed = asyncio.Event()
        self.sample_changed = asyncio.Event()
        self.profiles_changed = asyncio.Event()
        self.connects = 0
        self.delivered = 0
        self.sent_status: dict[int, str] = {}
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ws: ClientConnection | None = None
        self._attempts = 0
        self.boot_reason = BootReason.POWER_UP
        # An OnIdle Reset waiting for the running transactions to end: their stop reason.
        self.pending_reset: str | None = None

    # ---- version-specific messages (subclasses) ------------------------------------------------------

    @abstractmethod
    def make_cp(self, ws: Any) -> Any:
        """The library's charge point object on `ws`."""

    @abstractmethod
    async def boot(self, reason: BootReason) -> tuple[str, int]:
        """BootNotification: (status, interval)."""

    @abstractmethod
    async def heartbeat(self) -> None:
        """Heartbeat."""

    @abstractmethod
    async def status_notification(self, connector: int, status: str) -> None:
        """A connector's status (1.6 vocabulary; 2.0.1 maps it)."""

    @abstractmethod
    async def authorize(self, id_tag: str) -> str:
        """Ask the backend about an id tag: its status."""

    @abstractmethod
    async def meter_values(
        self, connector: int, values: list[dict[str, Any]], tx_id: int | str | None
    ) -> None:
        """Meter values sent at once (not queued)."""

    @abstractmethod
    def start_message(self, tx: Transaction) -> dict[str, Any]:
        """The queued message that starts `tx`."""

    @abstractmethod
    def stop_message(self, tx: Transaction, meter_stop: int, at: float, reason: str) -> dict[str, Any]:
        """The queued message that ends `tx`."""

    @abstractmethod
    def meter_message(
        self, tx: Transaction, values: list[dict[str, Any]], triggered: bool = False
    ) -> dict[str, Any]:
        """A queued meter value of `tx` (`triggered`: the backend asked for it)."""

    @abstractmethod
    def reason(self, stop_reason: str) -> str:
        """The version's stop reason for an evpilot stop reason."""

    @abstractmethod
    async def deliver(self, body: dict[str, Any]) -> None:
        """Send one queued message."""

    @abstractmethod
    def is_call_error(self, exc: BaseException) -> bool:
        """The backend answered with a CALLERROR (the message is retried, then given up)."""

    # ---- lifecycle -------------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a task the link owns (cancelled when it stops)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def route(self, raw: str, route: Callable[[str], Awaitable[None]]) -> None:
        """The library's routing of one received message; a call that waits on hardware is handled in
        its own task, so the backend's answers to the station's own calls are read meanwhile."""
        try:
            msg = unpack(raw)
        except OCPPError:
            msg = None  # the library logs it
        if msg is not None and msg.message_type_id == MessageType.Call and msg.action in SLOW_CALLS:
            self.spawn(self._answer(route, raw))
            return
        await route(raw)

    @staticmethod
    async def _answer(route: Callable[[str], Awaitable[None]], raw: str) -> None:
        with contextlib.suppress(ConnectionClosed):  # the backend left: nobody to answer
            await route(raw)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.rt.supervisor.record("ocpp", task.exception())  # type: ignore[arg-type]

    async def start(self) -> None:
        """Catch up with sessions that started or ended while evpilot was down, then connect."""
        await self.reconcile()
        self.rt.listeners.append(self.on_frame)
        self.spawn(self._run())
        self.spawn(self._sampler())
        self.spawn(self._aligned())
        self.spawn(self._station_cap())

    async def stop(self) -> None:
        """Close the connection and end the link's tasks (queued messages stay in the store)."""
        self._stop.set()
        with contextlib.suppress(ValueError):
            self.rt.listeners.remove(self.on_frame)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.station.outbox.settle()

    def url(self) -> str:
        """The backend URL with the station id appended."""
        base = self.station.config.url or ""
        return (base if base.endswith("/") else base + "/") + self.station.id

    def _connect_args(self) -> dict[str, Any]:
        c = self.station.config
        args: dict[str, Any] = {
            "subprotocols": [Subprotocol(self.subprotocol)],
            "open_timeout": 10,
            "ping_interval": None,
            "max_size": 2**20,
        }
        if c.password is not None:
            args["additional_headers"] = {"Authorization": basic_header(self.station.id, c.password)}
        if self.url().startswith("wss://"):
            args["ssl"] = ssl.create_default_context(cafile=None if c.ca_file is None else str(c.ca_file))
        return args

    async def _run(self) -> None:
        c = self.station.config
        delay = c.reconnect_min_s
        while not self._stop.is_set():
            try:
                async with connect(self.url(), **self._connect_args()) as ws:
                    if ws.subprotocol != self.subprotocol:
                        raise InvalidHandshake(f"the backend did not accept {self.subprotocol}")
                    self._ws = ws
                    self.connects += 1
                    delay = c.reconnect_min_s
                    log.info("%s: connected to %s", self.station.id, self.url())
                    await self._serve(ws)
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.info("%s: backend unreachable (%s), retrying in %.1f s", self.station.id, exc, delay)
            except Exception as exc:  # the link must outlive any one bad exchange
                if self.is_call_error(exc):
                    log.warning("%s: the backend refused a message: %s", self.station.id, exc)
                else:
                    log.exception("%s: the connection failed", self.station.id)
            finally:
                self._ws = None
                self.connected = self.accepted = False
                self.boot_answered.set()
            if self._stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(c.reconnect_max_s, delay * 2)

    async def _serve(self, ws: ClientConnection) -> None:
        cp = self.make_cp(ws)
        reader = asyncio.create_task(cp.start())
        workers: list[asyncio.Task[Any]] = []
        self.boot_answered.clear()
        self.connected = True
        try:
            booting = asyncio.create_task(self._boot())
            await asyncio.wait({reader, booting}, return_when=asyncio.FIRST_COMPLETED)
            if not booting.done():
                booting.cancel()
                return
            booting.result()
            self.accepted = True
            self.sent_status.clear()
            workers = [
                asyncio.create_task(self._statuses()),
                asyncio.create_task(self._heartbeats()),
                asyncio.create_task(self._sender()),
            ]
            done, _ = await asyncio.wait({reader, *workers}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (reader, *workers):
                task.cancel()
            for task in (reader, *workers):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _boot(self) -> None:
        keys = self.station.keys
        while True:
            status, interval = await self.boot(self.boot_reason)
            self.accepted = status == "Accepted"
            self.boot_answered.set()
            if status == "Accepted":
                self.boot_reason = BootReason.POWER_UP
                if interval > 0:
                    keys.values["HeartbeatInterval"] = str(interval)
                    keys.save(dict(keys.values))
                log.info(
                    "%s: boot accepted, heartbeat every %d s",
                    self.station.id,
                    keys.number("HeartbeatInterval"),
                )
                return
            wait = interval if interval > 0 else BOOT_RETRY_S
            log.info("%s: boot %s, next BootNotification in %d s", self.station.id, status, wait)
            await self.rt.clock.wait(self._stop, wait)

    async def _statuses(self) -> None:
        st = self.station
        if 0 not in self.sent_status:
            await self.status_notification(0, "Available")
            self.sent_status[0] = "Available"
        while True:
            self.status_changed.clear()
            for n in st.connectors:
                status = st.status(n)
                if self.sent_status.get(n) != status:
                    await self.status_notification(n, status)
                    self.sent_status[n] = status
            await self.status_changed.wait()

    async def _heartbeats(self) -> None:
        while True:
            self.timers_changed.clear()
            if await self.rt.clock.wait(self.timers_changed, self.station.keys.number("HeartbeatInterval")):
                continue
            await self.heartbeat()

    async def _sender(self) -> None:
        st = self.station
        outbox = st.outbox
        while True:
            outbox.wake.clear()
            items = await asyncio.to_thread(outbox.items)
            if not items:
                await outbox.wake.wait()
                continue
            seq, body = items[0]
            try:
                await self.deliver(body)
            except (OSError, TimeoutError, WebSocketException):
                raise  # not delivered: sent again after the reconnect
            except Exception as exc:
                if not self.is_call_error(exc):
                    log.exception("%s: queued %s cannot be sent: dropped", st.id, body.get("action"))
                    outbox.drop(seq)
                    continue
                self._attempts += 1
                if self._attempts < st.keys.number("TransactionMessageAttempts"):
                    log.warning("%s: %s refused (%s), retrying", st.id, body["action"], exc)
                    await self.rt.clock.wait(self._stop, st.keys.number("TransactionMessageRetryInterval"))
                    continue
                log.error("%s: %s refused %d times, given up: %s", st.id, body["action"], self._attempts, exc)
                if body["action"] in ("StopTransaction", "TransactionEvent"):
                    st.transactions.pop(body["session"], None)
                    st.save_transactions()
            self._attempts = 0
            outbox.drop(seq)
            self.delivered += 1

    # ---- timers that run offline too -------------------------------------------------------------------

    async def _sampler(self) -> None:
        st = self.station
        while True:
            self.sample_changed.clear()
            interval = st.keys.number("MeterValueSampleInterval")
            if interval <= 0:
                await self.sample_changed.wait()
                continue
            if await self.rt.clock.wait(self.sample_changed, interval):
                continue
            now = self.rt.clock.now()
            measurands = st.keys.csl("MeterValuesSampledData")
            for n in st.connectors:
                tx = st.open_transaction(n)
                if tx is not None and measurands:
                    values = [
                        {"timestamp": iso(now), "sampledValue": st.sample(n, measurands, "Sample.Periodic")}
                    ]
                    st.outbox.push(self.meter_message(tx, values))
            await st.outbox.settle()

    async def _aligned(self) -> None:
        st = self.station
        while True:
            self.sample_changed.clear()
            interval = st.keys.number("ClockAlignedDataInterval")
            if interval <= 0:
                await self.sample_changed.wait()
                continue
            now = self.rt.clock.now()
            due = math.floor(now / interval) * interval + interval
            if await self.rt.clock.wait(self.sample_changed, due - now):
                continue
            measurands = st.keys.csl("MeterValuesAlignedData")
            if not measurands:
                continue
            for n in st.connectors:
                values = [{"timestamp": iso(due), "sampledValue": st.sample(n, measurands, "Sample.Clock")}]
                tx = st.open_transaction(n)
                if tx is not None:
                    st.outbox.push(self.meter_message(tx, values))
                elif self.accepted:
                    with contextlib.suppress(Exception):
                        await self.meter_values(n, values, None)
            await st.outbox.settle()

    async def _station_cap(self) -> None:
        """A station-wide ChargePointMaxProfile over several connectors, applied at each change."""
        st = self.station
        if len(st.connectors) == 1:
            return
        while True:
            self.profiles_changed.clear()
            nxt = st.apply_station_cap()
            wait = 3600.0 if nxt is None else max(0.0, nxt - self.rt.clock.now())
            await self.rt.clock.wait(self.profiles_changed, wait)

    # ---- the runtime's events ----------------------------------------------------------------------------

    async def on_frame(self, topic: str, message: dict[str, Any]) -> None:
        """A runtime frame: session starts and ends become transactions, anything else a status check."""
        if topic == "event":
            n = self.station.connector_of(str(message.get("charger")))
            if n is None:
                return
            kind = message.get("type")
            if kind == "session_started":
                await self.session_started(n, message["session_id"], message.get("id_tag"), message["at"])
            elif kind == "session_ended":
                self.session_ended(n, message["record"])
            self.status_changed.set()
        elif topic == "charger" and self.station.connector_of(str(message.get("id"))) is not None:
            self.status_changed.set()

    async def session_started(self, n: int, session: str, id_tag: str | None, at: float) -> None:
        """A session opened on connector `n`: authorize its tag, then queue the transaction's start."""
        st = self.station
        if session in st.transactions:
            return
        if id_tag is not None:
            status = st.authorized_locally(id_tag)
            if status is None and self.connected:
                # The backend may send a command right after accepting the boot, before the boot's
                # answer is taken here: the tag is the backend's to judge once that answer is in.
                await self.boot_answered.wait()
            if status is None and self.accepted:
                try:
                    status = await self.authorize(id_tag)
                except Exception as exc:
                    log.info("%s: Authorize of %s failed: %s", st.id, id_tag, exc)
                else:
                    if st.keys.flag("AuthorizationCacheEnabled"):
                        st.cache[id_tag] = status
                        st.save_auth()
            if status is None:
                status = "Accepted" if st.keys.flag("AllowOfflineTxForUnknownId") else "Invalid"
            if status != "Accepted":
                log.info("%s: id tag %s is %s: charging stopped", st.id, id_tag, status)
                st.stop(n)
                return
        ch = st.charger(n)
        energy = ch.session.energy_kwh if ch.session is not None and ch.session.id == session else 0.0
        tx = Transaction(session, n, round((ch.lifetime_kwh - energy) * 1000), at, id_tag or st.config.id_tag)
        st.transactions[session] = tx
        st.save_transactions()
        st.profiles.start_transaction(n, -1, at)
        st.outbox.push(self.start_message(tx))
        await st.outbox.settle()

    def session_ended(self, n: int, record: dict[str, Any]) -> None:
        """A session closed: its transaction stops with the session's real meter stop."""
        st = self.station
        st.finished.discard(str(record["id"]))
        tx = st.transactions.get(str(record["id"]))
        if tx is not None and not tx.stopped:
            meter_stop = tx.meter_start + round(float(record["energy_kwh"]) * 1000)
            self.stop_transaction(
                tx, meter_stop, float(record["ended_at"]), self.reason(str(record["stop_reason"]))
            )
        if n in st.pending_unavailable:
            st.pending_unavailable.discard(n)
            st.set_available(n, False)

    def stop_transaction(self, tx: Transaction, meter_stop: int, at: float, reason: str) -> None:
        """Queue the end of `tx` (once) and drop its TxProfiles."""
        st = self.station
        if tx.stopped:
            return
        tx.stopped = True
        session = st.charger(tx.connector).session
        if session is not None and session.id == tx.session:
            st.finished.add(tx.session)
        st.outbox.push(self.stop_message(tx, meter_stop, at, reason))
        st.save_transactions()
        st.profiles.end_transaction(tx.connector)
        st.save_profiles()
        self.status_changed.set()
        self.spawn(st.outbox.settle())
        if self.pending_reset is not None and not st.busy():
            self.spawn(self.reset(self.pending_reset))

    async def reconcile(self) -> None:
        """After a restart: open transactions whose session is gone are stopped with the stored record;
        sessions running without a transaction get one."""
        st = self.station
        store = self.rt.store
        for tx in list(st.transactions.values()):
            if tx.stopped:
                continue
            ch = st.charger(tx.connector)
            if ch.session is not None and ch.session.id == tx.session:
                st.profiles.start_transaction(
                    tx.connector, -1 if tx.tx_id is None else tx.tx_id, tx.started_at
                )
                continue
            record = None
            if store is not None:
                record = next((r for r in store.sessions(ch.config.id, 50) if r.id == tx.session), None)
            if record is not None:
                meter_stop = tx.meter_start + round(record.energy_kwh * 1000)
                self.stop_transaction(tx, meter_stop, record.ended_at, self.reason(record.stop_reason))
            else:
                self.stop_transaction(
                    tx, st.register_wh(tx.connector), self.rt.clock.now(), self.reason("interrupted")
                )
        for n in st.connectors:
            session = st.charger(n).session
            if session is not None and session.id not in st.transactions:
                await self.session_started(n, session.id, session.id_tag, session.started_at)
        await st.outbox.settle()

    # ---- commands the backend triggers (one behaviour; each version words the answers) -------------

    def schedule_reset(self, reason: str, when_idle: bool) -> bool:
        """A Reset the backend asked for: True when it waits for the running transactions (OnIdle).

        Otherwise `reset_now` runs it once the answer is sent.
        """
        if when_idle and self.station.busy():
            self.pending_reset = reason
            return True
        self.pending_reset = None
        return False

    def reset_now(self, reason: str) -> None:
        """After the answer to a Reset: run it unless it waits for the transactions to end."""
        if self.pending_reset is None:
            self.spawn(self.reset(reason))

    async def reset(self, reason: str) -> None:
        """Reset: every transaction ends with `reason`, then the connection restarts with a boot."""
        st = self.station
        self.pending_reset = None
        self.boot_reason = BootReason.REMOTE_RESET
        now = self.rt.clock.now()
        for tx in [t for t in st.transactions.values() if not t.stopped]:
            st.stop(tx.connector)
            self.stop_transaction(tx, st.register_wh(tx.connector), now, reason)
        await st.outbox.settle()
        if self._ws is not None:
            await self._ws.close()

    def change_availability(self, connector: int, operative: bool) -> Availability:
        """ChangeAvailability of a connector (0: the whole station); a running transaction finishes first."""
        st = self.station
        if connector != 0 and connector not in st.connectors:
            return Availability.REJECTED
        targets = list(st.connectors) if connector == 0 else [connector]
        scheduled = False
        for n in targets:
            if not operative and st.open_transaction(n) is not None:
                st.pending_unavailable.add(n)
                scheduled = True
                continue
            st.pending_unavailable.discard(n)
            st.set_available(n, operative)
        self.status_changed.set()
        return Availability.SCHEDULED if scheduled else Availability.ACCEPTED

    async def unlock(self, connector: int, end_transaction: bool) -> Unlock:
        """UnlockConnector: a charger without a cable lock has nothing to open; a running transaction
        ends first (1.6) or refuses the unlock (2.0.1, `end_transaction` False); then the lock is
        forced open and the answer waits for the actuator's confirmation (or its fault)."""
        st = self.station
        if connector not in st.connectors:
            return Unlock.UNKNOWN
        cid = st.connectors[connector]
        if self.rt.access.of(cid).lock_mode is LockMode.DISABLED:
            return Unlock.NO_LOCK
        tx = st.open_transaction(connector)
        if tx is not None:
            if not end_transaction:
                return Unlock.BUSY
            now = self.rt.clock.now()
            st.stop(connector)
            self.stop_transaction(tx, st.register_wh(connector), now, "UnlockCommand")
        opened = await self.rt.access.force_unlock(cid, ORIGIN)
        return Unlock.UNLOCKED if opened else Unlock.FAILED

    @staticmethod
    def data_transfer(vendor_id: str) -> str:
        """DataTransfer: evpilot defines no messages, so its own vendor id is Rejected, others unknown."""
        return "Rejected" if vendor_id == VENDOR else "UnknownVendorId"

    def measures(self) -> bool:
        """Some measurand is configured for sampled meter values (a triggered MeterValues needs one)."""
        return bool(self.station.keys.csl("MeterValuesSampledData"))

    async def triggered(self, message: str, connector: int | None) -> None:
        """Send the message a TriggerMessage asked for (connector None or 0: every connector)."""
        st = self.station
        targets = list(st.connectors) if connector in (None, 0) else [connector]
        if message == "BootNotification":
            await self.boot(BootReason.TRIGGERED)
        elif message == "Heartbeat":
            await self.heartbeat()
        elif message == "StatusNotification":
            for n in targets:
                status = st.status(n)
                await self.status_notification(n, status)
                self.sent_status[n] = status
        elif message in ("MeterValues", "TransactionEvent"):
            now = self.rt.clock.now()
            measurands = st.keys.csl("MeterValuesSampledData")
            for n in targets:
                tx = st.open_transaction(n)
                values = [{"timestamp": iso(now), "sampledValue": st.sample(n, measurands, "Trigger")}]
                if message == "MeterValues":
                    await self.meter_values(n, values, None if tx is None else tx.tx_id)
                elif tx is not None:
                    st.outbox.push(self.meter_message(tx, values, triggered=True))
            await st.outbox.settle()
