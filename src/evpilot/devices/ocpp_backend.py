"""evpilot as an OCPP 1.6J backend: third-party wallboxes connect over WebSocket and are balanced.

A charger with `driver: {type: ocpp, id: ..., connector: ...}` is an `OcppLink`: the engine's
setpoint leases go to the wallbox as charging profiles (a TxProfile during a transaction, else a
TxDefaultProfile) whose `validTo` is the lease's end, on top of a standing TxDefaultProfile at the
charger's safe current, so a wallbox that loses evpilot falls back on its own. Its StatusNotification
and MeterValues become the link's readings.

Security profile 1 and 2: a station with a password must prove it with HTTP basic auth on the WebSocket
upgrade (401 otherwise), over `wss://` when `ocpp_server.tls` is set. Every refused handshake is
counted and logged, never with the secret. Id tags are checked against evpilot's cards for chargers
that require authorization (through the runtime's `TagAuthority`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import unquote

from ocpp.routing import after as _after
from ocpp.routing import on as _on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, RegistrationStatus
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from evpilot.core.access import TagStatus
from evpilot.core.charger import DeviceTransactions
from evpilot.core.session import StopReason
from evpilot.core.units import Phases
from evpilot.devices.base import LinkReading, Setpoint
from evpilot.devices.meter import Clock
from evpilot.security import PasswordCheck, Throttle, is_loopback_host, parse_basic, server_tls_context

if TYPE_CHECKING:
    from evpilot.config import OcppServerModel
    from evpilot.core.charger import ChargerConfig
    from evpilot.store.base import SessionStore

log = logging.getLogger("evpilot.ocpp")
SUBPROTOCOL = "ocpp1.6"
# A call the wallbox does not answer within this many seconds counts as failed (and is retried).
CALL_TIMEOUT_S = 10.0
NOMINAL_VOLTAGE = 230.0
# The reading time of a draw not measured yet: always older than the meter timeout.
UNKNOWN_AT = 0.0
# Profile ids per connector: the standing fallback, and the live allocation (default / transaction).
FALLBACK_ID, DEFAULT_ID, TX_ID = 1, 2, 3
FALLBACK_LEVEL, LIVE_LEVEL = 0, 1
# Seconds after a changed limit when evpilot asks the wallbox for MeterValues (a car follows a
# lower pilot current within 5 s; most are there well before).
TRIGGER_AFTER_S = 3.0
# A tag evpilot sent in a RemoteStartTransaction is accepted from the wallbox for this long.
REMOTE_TAG_S = 180.0
REALM = 'Basic realm="evpilot OCPP", charset="UTF-8"'
# After a profile is refused or not answered, the connector is tried again after 1 s, then 2, 4, ...
# up to a minute: a wallbox that refuses limits is not asked again on every tick.
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0

F = TypeVar("F", bound=Callable[..., Any])


class _MessageLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The ocpp library logs every message at INFO; evpilot shows them only at DEBUG."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Every sent and received message, at DEBUG."""
        self.debug(msg, *args, **kwargs)


MESSAGES = _MessageLog(logging.getLogger("evpilot.ocpp.messages"))


def on(action: str) -> Callable[[F], F]:
    """The ocpp library's `on` route decorator, typed."""
    return cast(Callable[[F], F], _on(action))


def after(action: str) -> Callable[[F], F]:
    """The ocpp library's `after` route decorator, typed."""
    return cast(Callable[[F], F], _after(action))


# The store setting that keeps the running transactions across restarts.
TRANSACTIONS_KEY = "ocpp_backend:transactions"
# StopTransaction `reason` -> why evpilot's session ended (absent means Local, OCPP 1.6 §6.51).
STOP_REASONS = {
    "EVDisconnected": StopReason.EV_DISCONNECTED,
    "EmergencyStop": StopReason.FAULT,
    "HardReset": StopReason.INTERRUPTED,
    "SoftReset": StopReason.INTERRUPTED,
    "Reboot": StopReason.INTERRUPTED,
    "PowerLoss": StopReason.INTERRUPTED,
}

# StatusNotification status -> IEC 61851 letter: no car, car connected, charging, fault.
STATUS_LETTER = {
    "Available": "A",
    "Preparing": "B",
    "Charging": "C",
    "SuspendedEV": "B",
    "SuspendedEVSE": "B",
    "Finishing": "B",
    "Reserved": "A",
    "Unavailable": "A",
    "Faulted": "F",
}


def iso(epoch: float) -> str:
    """An epoch time as an OCPP (RFC 3339, UTC) timestamp."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: Any) -> float | None:
    """An OCPP timestamp as epoch seconds, or None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def charging_profile(
    profile_id: int,
    stack_level: int,
    purpose: str,
    limit: float,
    phases: int,
    start: float,
    valid_to: float | None = None,
    transaction_id: int | None = None,
) -> dict[str, Any]:
    """A one-period absolute profile in amps (OCPP 1.6 `csChargingProfiles`)."""
    profile: dict[str, Any] = {
        "chargingProfileId": profile_id,
        "stackLevel": stack_level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute",
        "validFrom": iso(start),
        "chargingSchedule": {
            "startSchedule": iso(start),
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": round(limit, 1), "numberPhases": phases}],
        },
    }
    if valid_to is not None:
        profile["validTo"] = iso(valid_to)
    if transaction_id is not None:
        profile["transactionId"] = transaction_id
    return profile


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out and abs(out) != float("inf") else None


@dataclass(frozen=True, slots=True)
class Sample:
    """What one MeterValues entry said, in evpilot's units (None: not reported)."""

    at: float | None
    currents: tuple[float | None, float | None, float | None]
    voltages: tuple[float | None, float | None, float | None]
    power_w: float | None
    energy_kwh: float | None
    temperature: float | None


_PHASE = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}


def parse_meter_value(entry: Any) -> Sample:
    """One `meterValue` element (snake_case keys, as the ocpp library hands them over)."""
    currents: list[float | None] = [None, None, None]
    voltages: list[float | None] = [None, None, None]
    power = energy = temperature = None
    total_current: float | None = None
    at = parse_time(entry.get("timestamp")) if isinstance(entry, dict) else None
    samples = entry.get("sampled_value", []) if isinstance(entry, dict) else []
    for s in samples if isinstance(samples, list) else []:
        if not isinstance(s, dict) or s.get("location") == "EV" or s.get("format") == "SignedData":
            continue
        value = _number(s.get("value"))
        if value is None:
            continue
        measurand = s.get("measurand", "Energy.Active.Import.Register")
        unit = s.get("unit")
        phase = _PHASE.get(s.get("phase", ""))
        if measurand == "Energy.Active.Import.Register":
            energy = value if unit == "kWh" else value / 1000.0
        elif measurand == "Current.Import":
            if phase is None:
                total_current = value
            else:
                currents[phase] = value
        elif measurand == "Voltage" and phase is not None:
            voltages[phase] = value
        elif measurand == "Power.Active.Import" and s.get("phase") is None:
            power = value * 1000.0 if unit == "kW" else value
        elif measurand == "Temperature":
            temperature = value
    if total_current is not None and all(c is None for c in currents):
        currents[0] = total_current
    return Sample(
        at,
        (currents[0], currents[1], currents[2]),
        (voltages[0], voltages[1], voltages[2]),
        power,
        energy,
        temperature,
    )


@dataclass(slots=True)
class Connector:
    """What a station last said about one of its connectors."""

    status: str | None = None
    error_code: str | None = None
    transaction_id: int | None = None
    id_tag: str | None = None
    # The running transaction's meter start (Wh).
    meter_start: int | None = None
    status_at: float | None = None


class Refused(StrEnum):
    """Why a wallbox's WebSocket handshake was refused."""

    PATH = "path"
    UNKNOWN_ID = "unknown_id"
    SUBPROTOCOL = "subprotocol"
    NO_CREDENTIALS = "no_credentials"
    BAD_CREDENTIALS = "bad_credentials"
    THROTTLED = "throttled"


class TagAuthority(Protocol):
    """Who decides on id tags (evpilot's cards): the runtime's access control."""

    def tag_status(self, chargers: tuple[str, ...], raw_tag: str) -> tuple[TagStatus, float | None]:
        """The tag's status for these chargers, and its expiry (clock s) when accepted and it has one."""
        ...

    def tag_started(self, cid: str, raw_tag: str, status: TagStatus, remote: bool) -> None:
        """A transaction started on charger `cid` with the tag, answered `status`."""
        ...

    def tag_stopped(self, cid: str) -> None:
        """The transaction on charger `cid` ended."""
        ...


@dataclass(slots=True)
class Station:
    """A charge point identity evpilot has heard of (a configured one, or an accepted unknown one)."""

    id: str
    assigned: bool
    # Security profile 1/2: the basic-auth password, plain or as an argon2 hash (None: no auth).
    password: str | None = None
    password_hash: str | None = None
    session: CentralSession | None = None
    booted: bool = False
    connected_at: float | None = None
    last_seen: float | None = None
    boot: dict[str, Any] | None = None
    connectors: dict[int, Connector] = field(default_factory=dict)
    links: dict[int, OcppLink] = field(default_factory=dict)
    refused: int = 0
    last_refused: dict[str, Any] | None = None
    # Tags of RemoteStartTransaction calls evpilot sent, with when (clock s).
    remote_tags: dict[str, float] = field(default_factory=dict)

    @property
    def secured(self) -> bool:
        """Whether the station must authenticate (security profile 1 or 2)."""
        return self.password is not None or self.password_hash is not None

    def connector(self, cid: int) -> Connector:
        """The connector's record (created on first mention)."""
        return self.connectors.setdefault(cid, Connector())


class SessionEnded(ConnectionError):
    """The wallbox's connection ended while evpilot waited for its answer."""


class OcppOffline(RuntimeError):
    """The wallbox is not connected (or has not booted), so a command cannot reach it."""


class CentralSession(ChargePoint):  # type: ignore[misc]
    """One wallbox's WebSocket connection, answered as the central system."""

    def __init__(self, station: Station, connection: ServerConnection, backend: OcppBackend) -> None:
        super().__init__(station.id, connection, response_timeout=CALL_TIMEOUT_S, logger=MESSAGES)
        self.station = station
        self.backend = backend
        self.ended = asyncio.Event()

    async def request(self, payload: Any) -> Any:
        """`call`, given up (SessionEnded) as soon as the connection ends rather than at the timeout."""
        if self.ended.is_set():
            raise SessionEnded(f"{self.station.id}: the connection has ended")
        answer = asyncio.ensure_future(self.call(payload))
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({answer, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answer, ended):
                if not task.done():
                    task.cancel()
            await asyncio.gather(answer, ended, return_exceptions=True)
        if answer.cancelled():
            raise SessionEnded(f"{self.station.id}: the connection ended before the answer")
        return answer.result()

    async def route_message(self, raw_msg: str) -> None:
        """Note when the wallbox was last heard from, then answer."""
        self.station.last_seen = self.backend.clock()
        await super().route_message(raw_msg)

    @on(Action.boot_notification)
    def on_boot(self, charge_point_vendor: str, charge_point_model: str, **info: Any) -> Any:
        """Accept the wallbox and give it the heartbeat interval."""
        self.station.boot = {
            "charge_point_vendor": charge_point_vendor,
            "charge_point_model": charge_point_model,
        }
        self.station.boot.update(info)
        return call_result.BootNotification(
            current_time=iso(time.time()),
            interval=self.backend.settings.heartbeat_s,
            status=RegistrationStatus.accepted,
        )

    @after(Action.boot_notification)
    def after_boot(self, **_: Any) -> None:
        """Only now may evpilot send it profiles."""
        self.station.booted = True
        self.backend.wake(self.station)

    @on(Action.heartbeat)
    def on_heartbeat(self) -> Any:
        """Give the time."""
        return call_result.Heartbeat(current_time=iso(time.time()))

    @on(Action.status_notification)
    def on_status(self, connector_id: int, error_code: str, status: str, **info: Any) -> Any:
        """A connector's status becomes its link's state letter."""
        conn = self.station.connector(connector_id)
        conn.status, conn.error_code = status, error_code
        conn.status_at = self.backend.clock()
        link = self.station.links.get(connector_id)
        if link is not None:
            link.on_status(status, parse_time(info.get("timestamp")))
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str) -> Any:
        """A card for any of the station's chargers (Accepted when one of them needs no authorization)."""
        return call_result.Authorize(id_tag_info=self.backend.tag_info(self.station, None, id_tag))

    @on(Action.start_transaction)
    def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any) -> Any:
        """Give the transaction its id; from now on the live profile is a TxProfile."""
        tx = self.backend.next_transaction_id()
        conn = self.station.connector(connector_id)
        conn.transaction_id, conn.id_tag, conn.meter_start = tx, id_tag, meter_start
        self.backend.save_transactions()
        info = self.backend.tag_info(self.station, connector_id, id_tag, started=True)
        link = self.station.links.get(connector_id)
        if link is not None:
            link.on_energy(meter_start / 1000.0)
            link.on_transaction(started=True)
            link.wake()
        return call_result.StartTransaction(transaction_id=tx, id_tag_info=info)

    @on(Action.stop_transaction)
    def on_stop(
        self, meter_stop: int, timestamp: str, transaction_id: int, id_tag: str | None = None, **info: Any
    ) -> Any:
        """End the transaction (also one started before evpilot restarted): the charger's session ends
        with it, and the live profile goes back to a TxDefaultProfile."""
        stopped: int | None = None
        for cid, conn in self.station.connectors.items():
            if conn.transaction_id == transaction_id:
                stopped = cid
                start = conn.meter_start
                conn.transaction_id = conn.id_tag = conn.meter_start = None
                link = self.station.links.get(cid)
                if link is not None:
                    link.on_energy(meter_stop / 1000.0)
                    energy = None if start is None else max(0, meter_stop - start) / 1000.0
                    link.on_transaction(started=False, reason=info.get("reason"), energy_kwh=energy)
                    link.wake()
                    self.backend.tag_stopped(link.name)
        if stopped is not None:
            self.backend.save_transactions()
        else:
            log.warning("%s: StopTransaction of unknown transaction %s", self.station.id, transaction_id)
        if id_tag is None:
            return call_result.StopTransaction()
        return call_result.StopTransaction(id_tag_info=self.backend.tag_info(self.station, stopped, id_tag))

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[Any], **_: Any) -> Any:
        """Readings for the connector's link, with the wallbox's timestamps."""
        link = self.station.links.get(connector_id)
        if link is not None:
            for entry in meter_value:
                link.on_sample(parse_meter_value(entry))
        return call_result.MeterValues()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        """No vendor extension is known."""
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, status: str) -> Any:
        """Noted only in the log."""
        log.info("%s: firmware status %s", self.station.id, status)
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status(self, status: str) -> Any:
        """Noted only in the log."""
        log.info("%s: diagnostics status %s", self.station.id, status)
        return call_result.DiagnosticsStatusNotification()


@dataclass(frozen=True, slots=True)
class Pushed:
    """The live profile a wallbox acknowledged: limit, phases, transaction, when, and until when."""

    limit: float
    phases: int
    transaction_id: int | None
    sent_at: float
    valid_to: float


class OcppLink:
    """One connector of an OCPP wallbox as a ChargerLink (`driver: {type: ocpp}`)."""

    def __init__(self, charger: ChargerConfig, station_id: str, connector: int, backend: OcppBackend) -> None:
        self.name = charger.id
        self.station_id = station_id
        self.connector = connector
        self.phases = charger.phases
        self.safe_current = charger.safe_current
        self.max_current = charger.max_current
        self.backend = backend
        self.clock = backend.clock
        self.setpoint: Setpoint | None = None
        self.pushed: Pushed | None = None
        self.acked_at: float | None = None
        self.last_status: str | None = None
        self.last_error: str | None = None
        self.pushes = 0
        self.failures = 0
        # The connections the fallback and the live profile were last delivered on.
        self._fallback_on: CentralSession | None = None
        self._live_on: CentralSession | None = None
        # Ask for MeterValues (TriggerMessage) a little after a changed limit, until the wallbox refuses.
        self.trigger = True
        self._trigger_at: float | None = None
        self._failed = False
        # Deliveries refused or unanswered in a row on this connection, and when (monotonic) to try again.
        self.failed_in_row = 0
        self.retry_at: float | None = None
        self._retry_on: CentralSession | None = None
        self._wake = asyncio.Event()
        self._reading: LinkReading | None = None
        self._state = "A"
        self._energy: float | None = None
        self._transactions = DeviceTransactions()

    @property
    def driver(self) -> str:
        """The config `type`."""
        return "ocpp"

    @property
    def address(self) -> str:
        """The wallbox's identity and connector."""
        return f"ocpp:{self.station_id}/{self.connector}"

    # ---- readings ------------------------------------------------------------------------

    def _clock_time(self, wall: float | None) -> float:
        """A wallbox timestamp on evpilot's clock: now minus the reading's age (never in the future)."""
        now = self.clock()
        if wall is None:
            return now
        return now - max(0.0, time.time() - wall)

    def on_status(self, status: str, at: float | None) -> None:
        """A status change: the state letter; outside Charging the draw is known to be zero."""
        self._state = STATUS_LETTER.get(status, "A")
        r = self._reading
        volts = r.voltages if r is not None else (NOMINAL_VOLTAGE,) * 3
        temp = r.temperature if r is not None else None
        if status == "Charging":
            if r is None or r.state != "C":
                # The draw is unknown until the next MeterValues: stale, so it counts as the limit.
                self._reading = LinkReading(UNKNOWN_AT, "C", (0.0, 0.0, 0.0), self._energy, volts, temp)
        else:
            taken = self._clock_time(at)
            self._reading = LinkReading(taken, self._state, (0.0, 0.0, 0.0), self._energy, volts, temp)
        self.backend.changed()

    def on_energy(self, kwh: float) -> None:
        """A meter start or stop from a transaction message."""
        self._energy = kwh
        r = self._reading
        if r is not None:
            self._reading = LinkReading(r.taken_at, r.state, r.currents, kwh, r.voltages, r.temperature)

    def on_sample(self, s: Sample) -> None:
        """A MeterValues entry becomes the link's reading, stamped with the wallbox's time."""
        prev = self._reading
        if s.energy_kwh is not None:
            self._energy = s.energy_kwh
        currents: Phases
        if any(c is not None for c in s.currents):
            currents = (s.currents[0] or 0.0, s.currents[1] or 0.0, s.currents[2] or 0.0)
        elif s.power_w is not None:
            per = max(0.0, s.power_w) / (NOMINAL_VOLTAGE * self.phases)
            currents = (per, per if self.phases == 3 else 0.0, per if self.phases == 3 else 0.0)
        elif prev is not None and s.energy_kwh is None:
            return  # nothing this link uses
        else:
            currents = prev.currents if prev is not None else (0.0, 0.0, 0.0)
        base = prev.voltages if prev is not None else (NOMINAL_VOLTAGE,) * 3
        volts = tuple(b if v is None else v for v, b in zip(s.voltages, base, strict=True))
        temp = s.temperature if s.temperature is not None else (prev.temperature if prev else None)
        taken = self._clock_time(s.at)
        if prev is not None and taken < prev.taken_at:
            return  # an older reading delivered late never replaces a newer one
        # No tick asked for: with many wallboxes that would be one per MeterValues; the next tick reads it.
        self._reading = LinkReading(
            taken, self._state, currents, self._energy, (volts[0], volts[1], volts[2]), temp
        )

    def latest(self) -> LinkReading | None:
        """The newest reading, or None if none arrived yet."""
        return self._reading

    def transactions(self) -> DeviceTransactions:
        """The wallbox's transactions on this connector (`TransactionLink`)."""
        return self._transactions

    def on_transaction(
        self, started: bool, reason: str | None = None, energy_kwh: float | None = None
    ) -> None:
        """A StartTransaction (or one restored after a restart) or a StopTransaction on this connector."""
        t = self._transactions
        if started:
            self._transactions = replace(t, started=t.started + 1, running=True)
        else:
            why = STOP_REASONS.get(reason or "Local", StopReason.USER)
            self._transactions = DeviceTransactions(t.started, t.ended + 1, False, why, energy_kwh)
        self.backend.changed()

    # ---- setpoints -------------------------------------------------------------------------

    def send(self, setpoint: Setpoint) -> None:
        """Take the engine's lease; the link's task sends a profile when it changed or half its lease ran."""
        self.setpoint = setpoint
        if self._due(setpoint):
            self._wake.set()

    @property
    def transaction_id(self) -> int | None:
        """The connector's running transaction, if any."""
        station = self.backend.stations.get(self.station_id)
        conn = station.connectors.get(self.connector) if station is not None else None
        return conn.transaction_id if conn is not None else None

    def wake(self) -> None:
        """Look again (the station connected, booted, or started/stopped a transaction)."""
        self._wake.set()

    def profiles(self, setpoint: Setpoint, now: float) -> dict[str, Any]:
        """The live profile for a setpoint: a TxProfile during a transaction, else a TxDefaultProfile."""
        tx = self.transaction_id
        purpose, pid = ("TxProfile", TX_ID) if tx is not None else ("TxDefaultProfile", DEFAULT_ID)
        return charging_profile(
            self.connector * 10 + pid,
            LIVE_LEVEL,
            purpose,
            setpoint.current,
            setpoint.phases,
            now,
            setpoint.expires_at,
            tx,
        )

    async def run(self) -> None:
        """Deliver profiles to the wallbox whenever the setpoint calls for one, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = min((t for t in (self._trigger_at, self.retry_at) if t is not None), default=None)
            if deadline is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._wake.wait()
            self._wake.clear()
            session = self.backend.ready(self.station_id)
            sp = self.setpoint
            if session is None or sp is None:
                continue
            if self._retry_on is not session:
                # A new connection starts without the old one's backoff.
                self._retry_on, self.failed_in_row, self.retry_at = session, 0, None
            try:
                if self._trigger_at is not None and loop.time() >= self._trigger_at:
                    self._trigger_at = None
                    await self._trigger_meter_values(session)
                if self.retry_at is not None and loop.time() < self.retry_at:
                    continue
                delivered = True
                if self._fallback_on is not session:
                    fallback = charging_profile(
                        self.connector * 10 + FALLBACK_ID,
                        FALLBACK_LEVEL,
                        "TxDefaultProfile",
                        self.safe_current,
                        self.phases,
                        self.clock(),
                    )
                    if await self._set(session, fallback):
                        self._fallback_on = session
                    else:
                        delivered = False
                if self._live_on is not session or self._due(sp):
                    now = self.clock()
                    tx = self.transaction_id
                    profile = self.profiles(sp, now)
                    if await self._set(session, profile):
                        before = self.pushed
                        self.pushed = Pushed(round(sp.current, 1), sp.phases, tx, now, sp.expires_at)
                        self.acked_at = self.clock()
                        self._live_on = session
                        self._failed = False
                        if (
                            tx is not None
                            and self.trigger
                            and (before is None or before.limit != self.pushed.limit)
                        ):
                            # The engine should see the car follow the new limit without waiting for
                            # the wallbox's next sampled MeterValues.
                            self._trigger_at = loop.time() + TRIGGER_AFTER_S
                    else:
                        self._failed, delivered = True, False
                if delivered:
                    self.failed_in_row, self.retry_at = 0, None
                else:
                    self._back_off(loop.time())
            except (TimeoutError, ConnectionClosed, SessionEnded) as exc:
                self.failures += 1
                self._failed = True
                self.last_error = f"profile not delivered: {exc}"
                log.warning("%s: profile not delivered: %s", self.address, exc)
                self._back_off(loop.time())

    def _back_off(self, now: float) -> None:
        """One more failed delivery: the next try waits twice as long as the last (capped)."""
        self.failed_in_row += 1
        delay = min(RETRY_MAX_S, RETRY_MIN_S * 2.0 ** min(self.failed_in_row - 1, 16))
        self.retry_at = now + delay

    def held(self, now: float) -> float | None:
        """The limit the wallbox may still apply while it does not take new ones (`HoldingLink`).

        While it refuses profiles (or leaves them unanswered), or is disconnected, the live profile
        it acknowledged stays in force until its `validTo`; a refusing wallbox without one counts
        at the fallback profile's safe current, or at its MAX if that was not taken either. After
        the lease a disconnected wallbox is on its fallback: None, as for every lost link. A profile
        on its way (sent, not answered yet) is not a refusal: the wallbox takes it within moments.
        """
        if self.setpoint is None:
            return None
        session = self.backend.ready(self.station_id)
        if session is not None and self.failed_in_row == 0:
            return None
        p = self.pushed
        if p is not None and now < p.valid_to:
            return p.limit
        if session is not None:
            return self.safe_current if self._fallback_on is session else self.max_current
        return None

    def _due(self, setpoint: Setpoint) -> bool:
        """Whether the setpoint calls for a new live profile."""
        p = self.pushed
        return (
            self._failed
            or p is None
            or p.limit != round(setpoint.current, 1)
            or p.phases != setpoint.phases
            or p.transaction_id != self.transaction_id
            or self.clock() >= p.sent_at + (p.valid_to - p.sent_at) / 2
        )

    async def _trigger_meter_values(self, session: CentralSession) -> None:
        res = await session.request(
            call.TriggerMessage(requested_message="MeterValues", connector_id=self.connector)
        )
        status = getattr(res, "status", None)
        if status != "Accepted":
            # Rejected or NotImplemented: this wallbox only reports on its own schedule.
            self.trigger = False
            log.info("%s: TriggerMessage(MeterValues) answered %s; not asked again", self.address, status)

    async def _set(self, session: CentralSession, profile: dict[str, Any]) -> bool:
        self.pushes += 1
        res = await session.request(
            call.SetChargingProfile(connector_id=self.connector, cs_charging_profiles=profile)
        )
        status = getattr(res, "status", None)
        self.last_status = str(status) if status is not None else "CallError"
        if status != "Accepted":
            self.failures += 1
            self.last_error = f"SetChargingProfile answered {self.last_status}"
            log.warning("%s: SetChargingProfile answered %s", self.address, self.last_status)
        return status == "Accepted"

    # ---- commands --------------------------------------------------------------------------

    async def command(self, payload: Any) -> str:
        """Send a command to the wallbox and return the status it answered."""
        session = self.backend.ready(self.station_id)
        if session is None:
            raise OcppOffline(f"OCPP station {self.station_id!r} is not connected")
        try:
            res = await session.request(payload)
        except (TimeoutError, ConnectionClosed, SessionEnded) as exc:
            raise OcppOffline(f"OCPP station {self.station_id!r} did not answer: {exc}") from None
        status = getattr(res, "status", None)
        return "CallError" if status is None else str(status)

    async def remote_start(self, id_tag: str) -> str:
        """RemoteStartTransaction on this connector (the wallbox's Authorize/StartTransaction of the tag
        is then accepted)."""
        self.backend.remote_started(self.station_id, id_tag)
        return await self.command(call.RemoteStartTransaction(id_tag=id_tag, connector_id=self.connector))

    async def remote_stop(self) -> str:
        """RemoteStopTransaction of the connector's transaction ('NoTransaction' when there is none)."""
        tx = self.transaction_id
        if tx is None:
            if self.backend.ready(self.station_id) is None:
                raise OcppOffline(f"OCPP station {self.station_id!r} is not connected")
            return "NoTransaction"
        return await self.command(call.RemoteStopTransaction(transaction_id=tx))

    async def unlock(self) -> str:
        """UnlockConnector."""
        return await self.command(call.UnlockConnector(connector_id=self.connector))

    async def set_available(self, available: bool) -> str:
        """ChangeAvailability to Operative or Inoperative."""
        kind = "Operative" if available else "Inoperative"
        return await self.command(call.ChangeAvailability(connector_id=self.connector, type=kind))

    def status(self, now: float) -> dict[str, Any]:
        """The charger document's `link`: the wallbox's connection, profile failures, limits."""
        station = self.backend.stations.get(self.station_id)
        seen = station.last_seen if station is not None else None
        r = self._reading
        commanded = self.pushed.limit if self.pushed is not None else None
        fresh = r is not None and r.taken_at != UNKNOWN_AT
        return {
            "driver": self.driver,
            "address": self.address,
            "online": self.backend.ready(self.station_id) is not None,
            "last_seen_s": None if seen is None else round(max(0.0, now - seen), 1),
            "errors": self.failures,
            "error_counts": {"profile": self.failures} if self.failures else {},
            "last_error": self.last_error,
            "commanded_a": commanded,
            "assumed_a": max(r.currents) if fresh and r is not None else commanded,
        }

    def doc(self) -> dict[str, Any]:
        """The link's profile state for the stations list."""
        p = self.pushed
        return {
            "charger": self.name,
            "profile": None
            if p is None
            else {
                "limit": p.limit,
                "phases": p.phases,
                "purpose": "TxProfile" if p.transaction_id is not None else "TxDefaultProfile",
                "transaction_id": p.transaction_id,
                "sent_at": round(p.sent_at, 3),
                "valid_to": round(p.valid_to, 3),
            },
            "last_status": self.last_status,
            "pushes": self.pushes,
            "failures": self.failures,
            "failed_in_row": self.failed_in_row,
            "next_retry_in_s": None
            if self.retry_at is None
            else round(max(0.0, self.retry_at - time.monotonic()), 1),
            "held_a": self._held_above(),
        }

    def _held_above(self) -> float | None:
        """`held`, when it is above the last setpoint (what the engine counts the charger at)."""
        amps = self.held(self.clock())
        sp = self.setpoint
        return amps if amps is not None and (sp is None or amps > sp.current) else None


class OcppBackend:
    """The central system: a WebSocket server that wallboxes connect to as `<path><identity>`."""

    def __init__(self, settings: OcppServerModel, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.stations: dict[str, Station] = {}
        self.port: int | None = None
        # Refused handshakes by reason, and the throttle of failed logins per (address, identity).
        self.refused: Counter[Refused] = Counter()
        self.throttle = Throttle()
        self._passwords: PasswordCheck | None = None
        # Who decides on id tags; None (no runtime): every tag is accepted.
        self.tags: TagAuthority | None = None
        # Transaction ids: seeded from the wall clock so a restarted backend does not reuse old ones.
        self._tx = itertools.count(int(time.time()) % 1_000_000_000)
        self.listeners: list[Callable[[], None]] = []
        self._server: Server | None = None
        self.store: SessionStore | None = None

    def link(
        self,
        charger: ChargerConfig,
        station_id: str,
        connector: int,
        password: str | None = None,
        password_hash: str | None = None,
    ) -> OcppLink:
        """The link for a configured charger (its station becomes known, with its password if any)."""
        station = self.stations.setdefault(station_id, Station(station_id, assigned=True))
        station.password, station.password_hash = password, password_hash
        link = OcppLink(charger, station_id, connector, self)
        station.links[connector] = link
        return link

    def next_transaction_id(self) -> int:
        """A fresh transaction id."""
        return next(self._tx)

    def attach_store(self, store: SessionStore) -> None:
        """Keep the running transactions in `store`, and take back those a previous run left open:
        a wallbox that comes back mid-transaction goes on with it, and its StopTransaction closes it."""
        self.store = store
        saved = store.get_setting(TRANSACTIONS_KEY)
        if not isinstance(saved, dict):
            return
        top = 0
        for key, entry in saved.items():
            sid, _, cid_text = str(key).rpartition("/")
            station = self.stations.get(sid)
            if station is None or not cid_text.isdigit() or not isinstance(entry, dict):
                continue
            tx, start = entry.get("transaction_id"), entry.get("meter_start")
            if not isinstance(tx, int) or isinstance(tx, bool):
                continue
            conn = station.connector(int(cid_text))
            conn.transaction_id = tx
            conn.id_tag = entry.get("id_tag") if isinstance(entry.get("id_tag"), str) else None
            conn.meter_start = start if isinstance(start, int) and not isinstance(start, bool) else None
            link = station.links.get(int(cid_text))
            if link is not None:
                link.on_transaction(started=True)
            top = max(top, tx)
        if top >= int(time.time()) % 1_000_000_000:
            self._tx = itertools.count(top + 1)

    def save_transactions(self) -> None:
        """Write the running transactions to the store (the writer thread does the I/O)."""
        if self.store is None:
            return
        doc = {
            f"{st.id}/{cid}": {
                "transaction_id": c.transaction_id,
                "id_tag": c.id_tag,
                "meter_start": c.meter_start,
            }
            for st in self.stations.values()
            for cid, c in st.connectors.items()
            if c.transaction_id is not None
        }
        self.store.set_setting(TRANSACTIONS_KEY, doc)

    def ready(self, station_id: str) -> CentralSession | None:
        """The station's session if it is connected and booted."""
        station = self.stations.get(station_id)
        if station is None or station.session is None or not station.booted:
            return None
        return station.session

    def wake(self, station: Station) -> None:
        """Every link of the station looks again."""
        for link in station.links.values():
            link.wake()

    def changed(self) -> None:
        """New readings: ask the control loop for a tick."""
        for listener in self.listeners:
            listener()

    # ---- id tags ---------------------------------------------------------------------------

    def remote_started(self, station_id: str, id_tag: str) -> None:
        """evpilot sends the station a RemoteStartTransaction with this tag."""
        station = self.stations.get(station_id)
        if station is not None:
            station.remote_tags[id_tag] = self.clock()

    def _remote_tag(self, station: Station, id_tag: str, take: bool) -> bool:
        now = self.clock()
        for tag in [t for t, at in station.remote_tags.items() if now - at > REMOTE_TAG_S]:
            del station.remote_tags[tag]
        if id_tag not in station.remote_tags:
            return False
        if take:
            del station.remote_tags[id_tag]
        return True

    def tag_info(
        self, station: Station, connector: int | None, id_tag: str, started: bool = False
    ) -> dict[str, Any]:
        """The `idTagInfo` for a tag on a connector (None: any of the station's); `started`: it starts a
        transaction there, which then records the tag."""
        if connector is None:
            chargers = tuple(link.name for link in station.links.values())
        else:
            link = station.links.get(connector)
            chargers = () if link is None else (link.name,)
        remote = self._remote_tag(station, id_tag, take=started)
        if self.tags is None or not chargers or remote:
            status, expires = TagStatus.ACCEPTED, None
        else:
            status, expires = self.tags.tag_status(chargers, id_tag)
        if started and self.tags is not None and chargers:
            self.tags.tag_started(chargers[0], id_tag, status, remote)
        if status is not TagStatus.ACCEPTED:
            log.warning("%s: id tag %r refused (%s) on %s", station.id, id_tag, status.value, chargers)
        info: dict[str, Any] = {"status": status.value}
        if expires is not None:
            info["expiry_date"] = iso(time.time() + (expires - self.clock()))
        return info

    def tag_stopped(self, charger: str) -> None:
        """The transaction on a configured charger ended."""
        if self.tags is not None:
            self.tags.tag_stopped(charger)

    # ---- the handshake ---------------------------------------------------------------------

    def _identity(self, path: str) -> str | None:
        prefix = self.settings.path
        path = path.split("?", 1)[0]
        if not path.startswith(prefix):
            return None
        ident = unquote(path[len(prefix) :])
        if not ident or "/" in ident or len(ident) > 48:
            return None
        return ident

    async def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        ident = self._identity(request.path)
        client = _client(connection)
        if ident is None:
            text = f"connect to {self.settings.path}<identity>\n"
            return self._refuse(connection, None, Refused.PATH, client, HTTPStatus.NOT_FOUND, text)
        station = self.stations.get(ident)
        if station is None and not self.settings.accept_unknown:
            text = f"unknown charge point {ident!r}\n"
            return self._refuse(connection, ident, Refused.UNKNOWN_ID, client, HTTPStatus.NOT_FOUND, text)
        offered = {p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",")}
        if SUBPROTOCOL not in offered:
            text = f"the {SUBPROTOCOL} subprotocol is required\n"
            return self._refuse(connection, ident, Refused.SUBPROTOCOL, client, HTTPStatus.BAD_REQUEST, text)
        if station is None or not station.secured:
            return None
        key = f"{client}/{ident}"
        wait = self.throttle.retry_after(key)
        if wait is not None:
            response = self._refuse(
                connection,
                ident,
                Refused.THROTTLED,
                client,
                HTTPStatus.TOO_MANY_REQUESTS,
                "too many failures\n",
            )
            response.headers["Retry-After"] = str(max(1, round(wait + 0.5)))
            return response
        header = request.headers.get("Authorization")
        if header is None:
            response = self._refuse(
                connection, ident, Refused.NO_CREDENTIALS, client, HTTPStatus.UNAUTHORIZED, "unauthorized\n"
            )
            response.headers["WWW-Authenticate"] = REALM
            return response
        if not await self._verify(station, parse_basic(header)):
            self.throttle.failed(key)
            response = self._refuse(
                connection, ident, Refused.BAD_CREDENTIALS, client, HTTPStatus.UNAUTHORIZED, "unauthorized\n"
            )
            response.headers["WWW-Authenticate"] = REALM
            return response
        self.throttle.succeeded(key)
        return None

    async def _verify(self, station: Station, basic: tuple[str, str | None] | None) -> bool:
        """Whether basic credentials are the station's: its identity as the user, and its password."""
        if basic is None:
            return False
        name, given = basic
        if given is None:
            return False
        if station.password is not None:
            return name == station.id and hmac.compare_digest(given.encode(), station.password.encode())
        if self._passwords is None:
            self._passwords = PasswordCheck()
        # Checked also for a wrong user name: a wrong name costs as much as a wrong password.
        right = await self._passwords.verify(station.id, station.password_hash, given)
        return right and name == station.id

    def _refuse(
        self,
        connection: ServerConnection,
        ident: str | None,
        reason: Refused,
        client: str,
        status: HTTPStatus,
        text: str,
    ) -> Response:
        """Count, log (never the secret) and answer a refused handshake."""
        self.refused[reason] += 1
        station = self.stations.get(ident) if ident is not None else None
        if station is not None:
            station.refused += 1
            station.last_refused = {"at": round(self.clock(), 3), "reason": reason.value, "client": client}
        who = repr(ident) if ident is not None else "a wrong path"
        log.warning("OCPP: refused %s from %s: %s (HTTP %d)", who, client, reason.value, status.value)
        return connection.respond(status, text)

    async def _handle(self, connection: ServerConnection) -> None:
        ident = self._identity(connection.request.path if connection.request else "")
        if ident is None:
            return
        if connection.subprotocol != SUBPROTOCOL:
            await connection.close(1002, "the ocpp1.6 subprotocol is required")
            return
        station = self.stations.get(ident)
        if station is None:
            station = self.stations[ident] = Station(ident, assigned=False)
        session = CentralSession(station, connection, self)
        old = station.session
        station.session, station.booted = session, station.boot is not None
        station.connected_at = station.last_seen = self.clock()
        if old is not None:
            # The same wallbox again (a reconnect after a half-open link): the new connection wins.
            await old._connection.close(1000, "replaced by a new connection")
        log.info("OCPP: %s connected from %s", ident, connection.remote_address)
        self.wake(station)
        try:
            await session.start()
        except ConnectionClosed:
            pass
        finally:
            session.ended.set()
            if station.session is session:
                station.session, station.booted = None, False
                log.info("OCPP: %s disconnected", ident)

    async def run(self) -> None:
        """Serve wallboxes until cancelled."""
        s = self.settings
        tls = None if s.tls is None else server_tls_context(s.tls.cert, s.tls.key, "ocpp_server.tls")
        async with serve(
            self._handle,
            s.host,
            s.port,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self._check,
            ssl=tls,
        ) as server:
            self._server = server
            self.port = next(iter(server.sockets)).getsockname()[1]
            scheme = "ws" if tls is None else "wss"
            log.info("OCPP backend on %s://%s:%d%s<identity>", scheme, s.host, self.port, s.path)
            open_ids = sorted(st.id for st in self.stations.values() if st.assigned and not st.secured)
            if open_ids and not is_loopback_host(s.host):
                log.warning(
                    "OCPP backend on %s: station(s) %s connect without a password: anyone who reaches"
                    " the port may pose as them (see docs/ocpp.md, security profiles)",
                    s.host,
                    ", ".join(open_ids),
                )
            try:
                await asyncio.Future()
            finally:
                self._server = None
                with contextlib.suppress(Exception):
                    server.close()

    def doc(self) -> list[dict[str, Any]]:
        """Every station: identity, assignment, connection, boot info and connectors."""
        now = self.clock()
        out = []
        for st in sorted(self.stations.values(), key=lambda s: s.id):
            conns = {}
            for cid in sorted(set(st.connectors) | set(st.links)):
                c = st.connectors.get(cid, Connector())
                link = st.links.get(cid)
                conns[str(cid)] = {
                    "status": c.status,
                    "error_code": c.error_code,
                    "transaction_id": c.transaction_id,
                    "id_tag": c.id_tag,
                    **(link.doc() if link is not None else {"charger": None}),
                }
            out.append(
                {
                    "id": st.id,
                    "assigned": st.assigned,
                    "connected": st.session is not None,
                    "booted": st.booted,
                    "last_seen": None if st.last_seen is None else round(st.last_seen, 3),
                    "age_s": None if st.last_seen is None else round(max(0.0, now - st.last_seen), 1),
                    "boot": st.boot,
                    "connectors": conns,
                    "secured": st.secured,
                    "refused": st.refused,
                    "last_refused": st.last_refused,
                }
            )
        return out

    def health(self) -> dict[str, Any]:
        """The backend for `GET /api/health`: port, TLS, and the refused handshakes by reason."""
        return {
            "port": self.port,
            "tls": self.settings.tls is not None,
            "refused": {r.value: self.refused[r] for r in Refused if self.refused[r]},
        }


def _client(connection: ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if isinstance(address, tuple) and address else "?"
