"""One OCPP station as the runtime sees it: its connectors, profiles, keys, auth list and durable outbox.

Version-neutral: the 1.6 and 2.0.1 protocol modules render this state in their own messages.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from evpilot.api.ocpp.keys import Configuration, defaults
from evpilot.config import OcppModel
from evpilot.control.runtime import Runtime
from evpilot.core import commands as cmd
from evpilot.core.charger import Charger, WorkState
from evpilot.core.profiles import ConnectorCap, ProfileSet
from evpilot.core.units import NOMINAL_VOLTAGE

# The site cap a station-wide ChargePointMaxProfile sets when a station has several connectors.
STATION_CAP = "ocpp:ChargePointMaxProfile"
# The origin of the commands the backend sends (the runtime's log and GET /api/commands).
ORIGIN = "ocpp"


def iso(t: float) -> str:
    """An OCPP timestamp (UTC, ISO 8601 with Z) of epoch seconds."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch(text: str) -> float:
    """Epoch seconds of an OCPP timestamp (ValueError if it is not one)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class Outbox:
    """Transaction messages waiting for the backend, oldest first; durable when the runtime has a store."""

    def __init__(self, rt: Runtime, name: str) -> None:
        self.rt = rt
        self.name = name
        self.wake = asyncio.Event()
        self._memory: list[tuple[int, Any]] = []
        self._seq = 0

    def push(self, body: dict[str, Any]) -> None:
        """Queue a message (on disk before the next delivery reads the queue)."""
        store = self.rt.store
        if store is not None:
            store.outbox_push(self.name, body)
        else:
            self._seq += 1
            self._memory.append((self._seq, body))
        self.wake.set()

    def items(self) -> list[tuple[int, Any]]:
        """The waiting messages with their sequence numbers."""
        store = self.rt.store
        return store.outbox(self.name) if store is not None else list(self._memory)

    def drop(self, seq: int) -> None:
        """Remove a delivered (or given up) message."""
        store = self.rt.store
        if store is not None:
            store.outbox_drop(self.name, seq)
        else:
            self._memory = [(s, b) for s, b in self._memory if s != seq]

    async def settle(self) -> None:
        """Wait until what was pushed is on disk (kill -9 safe)."""
        store = self.rt.store
        if store is not None:
            await asyncio.to_thread(store.flush)


class ListUpdate(StrEnum):
    """SendLocalList's outcome (2.0.1 has no NotSupported: it answers Failed)."""

    ACCEPTED = "Accepted"
    FAILED = "Failed"
    VERSION_MISMATCH = "VersionMismatch"
    NOT_SUPPORTED = "NotSupported"


@dataclass(slots=True)
class Transaction:
    """An OCPP transaction for one evpilot session (kept until its StopTransaction is queued)."""

    session: str
    connector: int
    meter_start: int
    started_at: float
    id_tag: str
    tx_id: int | str | None = None
    stopped: bool = False
    # 2.0.1's seqNo of the transaction's next TransactionEvent.
    seq: int = 0

    def doc(self) -> dict[str, Any]:
        """Plain JSON for the store."""
        return {
            "session": self.session,
            "connector": self.connector,
            "meter_start": self.meter_start,
            "started_at": self.started_at,
            "id_tag": self.id_tag,
            "tx_id": self.tx_id,
            "stopped": self.stopped,
            "seq": self.seq,
        }


@dataclass(slots=True)
class Station:
    """A station's state: connector → charger, profiles, keys, local list and open transactions."""

    rt: Runtime
    config: OcppModel
    id: str
    connectors: dict[int, str]
    profiles: ProfileSet = field(default_factory=ProfileSet)
    keys: Configuration = field(init=False)
    outbox: Outbox = field(init=False)
    local_list: dict[str, str] = field(default_factory=dict)
    local_version: int = 0
    cache: dict[str, str] = field(default_factory=dict)
    transactions: dict[str, Transaction] = field(default_factory=dict)
    statuses: dict[int, str] = field(default_factory=dict)
    # Connectors the backend made unavailable while a session ran: applied when it ends.
    pending_unavailable: set[int] = field(default_factory=set)
    # Sessions whose transaction the backend (or a reset) ended while the car stays plugged in.
    finished: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        c = self.config
        values = defaults(
            len(self.connectors), c.heartbeat_s, c.measurands, c.meter_sample_s, c.clock_aligned_s
        )
        saved = self._get("config")
        if isinstance(saved, dict):
            values.update({k: str(v) for k, v in saved.items() if k in values})
        for key in ("NumberOfConnectors", "GetConfigurationMaxKeys", "ConnectorPhaseRotation"):
            values[key] = defaults(len(self.connectors), 1, [], 0, 0)[key]
        self.keys = Configuration(values, lambda v: self._set("config", v))
        self.outbox = Outbox(self.rt, f"ocpp:{self.id}")
        self.profiles = ProfileSet.from_doc(self._get("profiles"))
        auth = self._get("auth")
        if isinstance(auth, dict):
            self.local_list = {str(k): str(v) for k, v in dict(auth.get("list") or {}).items()}
            self.local_version = int(auth.get("version") or 0)
            self.cache = {str(k): str(v) for k, v in dict(auth.get("cache") or {}).items()}
        for raw in list(self._get("transactions") or []):
            try:
                tx = Transaction(**raw)
            except TypeError:
                continue
            self.transactions[tx.session] = tx
        single = len(self.connectors) == 1
        for number, cid in self.connectors.items():
            self.rt.charger(cid).profile_cap = ConnectorCap(self.profiles, number, station=single)

    # ---- persistence -------------------------------------------------------------------------

    def _get(self, what: str) -> Any:
        store = self.rt.store
        return None if store is None else store.get_setting(f"ocpp:{self.id}:{what}")

    def _set(self, what: str, value: Any) -> None:
        store = self.rt.store
        if store is not None:
            store.set_setting(f"ocpp:{self.id}:{what}", value, self.rt.clock.now())

    def save_profiles(self) -> None:
        """Store the profiles and apply the station-wide cap; the runtime recomputes at once."""
        self._set("profiles", self.profiles.to_doc())
        self.apply_station_cap()
        self.rt.recompute()

    def save_auth(self) -> None:
        """Store the local list and the cache."""
        self._set("auth", {"list": self.local_list, "version": self.local_version, "cache": self.cache})

    def save_transactions(self) -> None:
        """Store the open transactions."""
        self._set("transactions", [t.doc() for t in self.transactions.values()])

    # ---- the station-wide cap ------------------------------------------------------------------

    def apply_station_cap(self) -> float | None:
        """With several connectors, the ChargePointMaxProfile caps them together as a site cap.

        Returns when it next changes (None: never).
        """
        if len(self.connectors) == 1:
            return None
        now = self.rt.clock.now()
        phases = max(self.charger(n).active_phases for n in self.connectors)
        limit = self.profiles.limit_at(now, 0, phases)
        amps = None if limit is None or math.isinf(limit.amps) else min(600.0, limit.amps)
        self.rt.engine.set_site_cap(STATION_CAP, amps)
        return None if limit is None else limit.next_change

    # ---- commands ------------------------------------------------------------------------------

    def stop(self, connector: int) -> None:
        """Stop charging on `connector` (a typed command from the backend)."""
        self.rt.apply(cmd.Stop(self.connectors[connector]), ORIGIN)

    def start(self, connector: int, id_tag: str) -> None:
        """Authorize `id_tag` on `connector` and start charging."""
        self.rt.apply(cmd.Start(self.connectors[connector], id_tag), ORIGIN)

    def set_available(self, connector: int, available: bool) -> None:
        """Put `connector` in or out of service."""
        self.rt.apply(cmd.SetAvailable(self.connectors[connector], available), ORIGIN)

    # ---- lookups -------------------------------------------------------------------------------

    def charger(self, connector: int) -> Charger:
        """The charger on `connector`."""
        return self.rt.charger(self.connectors[connector])

    def connector_of(self, cid: str) -> int | None:
        """The connector number of charger `cid` (None: not on this station)."""
        for number, c in self.connectors.items():
            if c == cid:
                return number
        return None

    def open_transaction(self, connector: int) -> Transaction | None:
        """The transaction running on `connector` (not yet stopped)."""
        for tx in self.transactions.values():
            if tx.connector == connector and not tx.stopped:
                return tx
        return None

    def by_tx_id(self, tx_id: int | str) -> Transaction | None:
        """The open transaction with the backend's id `tx_id`."""
        for tx in self.transactions.values():
            if tx.tx_id == tx_id and not tx.stopped:
                return tx
        return None

    def busy(self) -> bool:
        """A transaction runs on some connector."""
        return any(not tx.stopped for tx in self.transactions.values())

    # ---- the local authorization list and the cache (shared by 1.6 and 2.0.1) ------------------

    def update_local_list(
        self, version: int, full: bool, entries: list[tuple[str, str | None]]
    ) -> ListUpdate:
        """SendLocalList: replace the list (`full`) or apply a newer difference; an entry without a
        status leaves the list. Nothing changes unless the whole update fits."""
        if not self.keys.flag("LocalAuthListEnabled"):
            return ListUpdate.NOT_SUPPORTED
        if len(entries) > self.keys.number("SendLocalListMaxLength"):
            return ListUpdate.FAILED
        if full:
            merged: dict[str, str] = {}
        elif version <= self.local_version:
            return ListUpdate.VERSION_MISMATCH
        else:
            merged = dict(self.local_list)
        for id_tag, status in entries:
            if status is None:
                merged.pop(id_tag, None)
            else:
                merged[id_tag] = status
        if len(merged) > self.keys.number("LocalAuthListMaxLength"):
            return ListUpdate.FAILED
        self.local_list, self.local_version = merged, version
        self.save_auth()
        return ListUpdate.ACCEPTED

    def local_list_version(self) -> int | None:
        """GetLocalListVersion: the list's version (None: the list is disabled)."""
        return self.local_version if self.keys.flag("LocalAuthListEnabled") else None

    def clear_cache(self) -> None:
        """ClearCache: forget every cached Authorize answer."""
        self.cache.clear()
        self.save_auth()

    def authorized_locally(self, id_tag: str) -> str | None:
        """The local list's or the cache's status of `id_tag` (None: unknown)."""
        if self.keys.flag("LocalAuthListEnabled") and id_tag in self.local_list:
            return self.local_list[id_tag]
        if self.keys.flag("AuthorizationCacheEnabled"):
            return self.cache.get(id_tag)
        return None

    # ---- readings ------------------------------------------------------------------------------

    def register_wh(self, connector: int) -> int:
        """Energy.Active.Import.Register of a connector (Wh)."""
        return round(self.charger(connector).lifetime_kwh * 1000)

    def status(self, connector: int) -> str:
        """The 1.6 ChargePointStatus of a connector (2.0.1 maps it to its ConnectorStatus)."""
        ch = self.charger(connector)
        work = ch.work_state()
        if work is WorkState.FAULT:
            return "Faulted"
        if not ch.available:
            return "Unavailable"
        if not ch.plugged:
            return "Available"
        if ch.session is not None and ch.session.id in self.finished:
            return "Finishing"
        if work is WorkState.CHARGING:
            return "Charging"
        if ch.session is None:
            return "Finishing" if ch.has_charged or work is WorkState.END else "Preparing"
        if work is WorkState.END:
            return "SuspendedEV"
        if not ch.permitted() or ch.allocated <= 0:
            return "SuspendedEVSE"
        return "SuspendedEV"

    def sample(self, connector: int, measurands: list[str], context: str) -> list[dict[str, Any]]:
        """The sampledValue entries of one meter value, in 1.6 vocabulary."""
        ch = self.charger(connector)
        values: list[dict[str, Any]] = []

        def add(measurand: str, value: float, unit: str, phase: str | None = None) -> None:
            entry: dict[str, Any] = {
                "value": f"{value:.1f}" if unit != "Wh" else str(round(value)),
                "context": context,
                "measurand": measurand,
                "location": "Outlet",
                "unit": unit,
            }
            if phase is not None:
                entry["phase"] = phase
            values.append(entry)

        for m in measurands:
            if m == "Energy.Active.Import.Register":
                add(m, ch.lifetime_kwh * 1000, "Wh")
            elif m == "Power.Active.Import":
                add(m, ch.power_w, "W")
            elif m == "Current.Import":
                for i, a in enumerate(ch.currents[: max(1, ch.config.phases)]):
                    add(m, a, "A", f"L{i + 1}")
            elif m == "Voltage":
                for i, v in enumerate(ch.voltages[: max(1, ch.config.phases)]):
                    add(m, v, "V", f"L{i + 1}-N")
            elif m == "Current.Offered":
                add(m, ch.signaled, "A")
            # SoC: the pilot gives none, so it is never reported.
        return values

    def offered_w(self, connector: int) -> float:
        """The power the connector may draw now at nominal voltage."""
        ch = self.charger(connector)
        return ch.signaled * NOMINAL_VOLTAGE * ch.active_phases
