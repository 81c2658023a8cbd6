"""OCPP 2.0.1: the same charge point as a charging station (one EVSE with one connector per charger).

BootNotification, Heartbeat, StatusNotification, TransactionEvent (Started/Updated/Ended, queued in the
outbox like 1.6's transaction messages), MeterValues, Authorize, SetChargingProfile/ClearChargingProfile/
GetCompositeSchedule on the same schedule core, RequestStart/StopTransaction, Get/SetVariables for the
basic components (mapped onto the 1.6 keys, so both versions share one configuration), and Reset,
ChangeAvailability, UnlockConnector, TriggerMessage, SendLocalList/GetLocalListVersion, ClearCache and
DataTransfer on the link's shared behaviour: this module only words the messages.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.v201 import ChargePoint, call, call_result
from ocpp.v201.enums import Action

from evpilot.api.ocpp.keys import Change
from evpilot.api.ocpp.link import BootReason, Link, Trigger, Unlock, after, on
from evpilot.api.ocpp.station import ListUpdate, Station, Transaction, epoch, iso
from evpilot.core.access import AuthMethod
from evpilot.core.profiles import ChargingProfile, Kind, Period, ProfileError, Purpose, RateUnit, Recurrency

log = logging.getLogger("evpilot.ocpp")

STOPPED = {
    "ev_disconnected": "EVDisconnected",
    "user": "Local",
    "disabled": "Local",
    "energy_limit": "EnergyLimitReached",
    "time_limit": "TimeLimitReached",
    "fault": "Other",
    "shutdown": "Reboot",
    "interrupted": "PowerLoss",
}
ENDED_BY = {
    "EVDisconnected": "EVCommunicationLost",
    "Remote": "RemoteStop",
    "EnergyLimitReached": "EnergyLimitReached",
    "TimeLimitReached": "TimeLimitReached",
    "DeAuthorized": "Deauthorized",
    "ImmediateReset": "ResetCommand",
}
# What a shared unlock outcome is called in 2.0.1: it has no word for a connector without a lock, and
# such a connector cannot be unlocked, so it is UnlockFailed.
UNLOCK = {
    Unlock.UNLOCKED: "Unlocked",
    Unlock.FAILED: "UnlockFailed",
    Unlock.NO_LOCK: "UnlockFailed",
    Unlock.UNKNOWN: "UnknownConnector",
    Unlock.BUSY: "OngoingAuthorizedTransaction",
}
# Sessions authorized by a card swipe: their idToken is the card's ISO 14443 uid.
CARD_METHODS = (AuthMethod.CARD.value, AuthMethod.REMOTE.value)
TRIGGERS = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues", "TransactionEvent")
# 2.0.1 (component, variable) → the 1.6 key that holds its value.
VARIABLES: dict[tuple[str, str], str] = {
    ("OCPPCommCtrlr", "HeartbeatInterval"): "HeartbeatInterval",
    ("OCPPCommCtrlr", "MessageAttempts"): "TransactionMessageAttempts",
    ("OCPPCommCtrlr", "MessageAttemptInterval"): "TransactionMessageRetryInterval",
    ("OCPPCommCtrlr", "WebSocketPingInterval"): "WebSocketPingInterval",
    ("SampledDataCtrlr", "TxUpdatedInterval"): "MeterValueSampleInterval",
    ("SampledDataCtrlr", "TxUpdatedMeasurands"): "MeterValuesSampledData",
    ("SampledDataCtrlr", "TxEndedMeasurands"): "StopTxnSampledData",
    ("AlignedDataCtrlr", "Interval"): "ClockAlignedDataInterval",
    ("AlignedDataCtrlr", "Measurands"): "MeterValuesAlignedData",
    ("AlignedDataCtrlr", "TxEndedMeasurands"): "StopTxnAlignedData",
    ("AuthCtrlr", "AuthorizeRemoteStart"): "AuthorizeRemoteTxRequests",
    ("AuthCtrlr", "LocalAuthorizeOffline"): "LocalAuthorizeOffline",
    ("AuthCtrlr", "LocalPreAuthorize"): "LocalPreAuthorize",
    ("AuthCtrlr", "OfflineTxForUnknownIdEnabled"): "AllowOfflineTxForUnknownId",
    ("AuthCacheCtrlr", "Enabled"): "AuthorizationCacheEnabled",
    ("LocalAuthListCtrlr", "Enabled"): "LocalAuthListEnabled",
    ("LocalAuthListCtrlr", "Entries"): "LocalAuthListMaxLength",
    ("TxCtrlr", "EVConnectionTimeOut"): "ConnectionTimeOut",
    ("TxCtrlr", "StopTxOnEVSideDisconnect"): "StopTransactionOnEVSideDisconnect",
    ("TxCtrlr", "StopTxOnInvalidId"): "StopTransactionOnInvalidId",
    ("SmartChargingCtrlr", "ProfileStackLevel"): "ChargeProfileMaxStackLevel",
    ("SmartChargingCtrlr", "PeriodsPerSchedule"): "ChargingScheduleMaxPeriods",
    ("SmartChargingCtrlr", "RateUnit"): "ChargingScheduleAllowedChargingRateUnit",
    ("SmartChargingCtrlr", "Entries"): "MaxChargingProfilesInstalled",
    ("DeviceDataCtrlr", "ItemsPerMessage"): "GetConfigurationMaxKeys",
}
PURPOSES = {
    "ChargingStationMaxProfile": Purpose.CHARGE_POINT_MAX,
    "TxDefaultProfile": Purpose.TX_DEFAULT,
    "TxProfile": Purpose.TX,
}
STATUS = {"Available": "Available", "Unavailable": "Unavailable", "Faulted": "Faulted"}


def tx_name(session: str) -> str:
    """The 2.0.1 transactionId of an evpilot session (at most 36 characters)."""
    return session if len(session) <= 36 else hashlib.sha1(session.encode()).hexdigest()[:36]


def parse_profile(evse: int, doc: dict[str, Any], now: float) -> ChargingProfile:
    """A 2.0.1 chargingProfile (snake_case keys) as a core profile (its first schedule)."""
    try:
        purpose = PURPOSES.get(doc["charging_profile_purpose"])
        if purpose is None:
            raise ProfileError(
                "chargingProfilePurpose", f"{doc['charging_profile_purpose']} is not supported"
            )
        sched = doc["charging_schedule"][0]
        kind = Kind(doc["charging_profile_kind"])
        start = sched.get("start_schedule")
        start_t = None if start is None else epoch(start)
        if kind is Kind.ABSOLUTE and start_t is None:
            start_t = now
        recurrency = doc.get("recurrency_kind")
        return ChargingProfile(
            id=int(doc["id"]),
            connector=evse,
            stack_level=int(doc["stack_level"]),
            purpose=purpose,
            kind=kind,
            unit=RateUnit(sched["charging_rate_unit"]),
            periods=tuple(
                Period(float(p["start_period"]), float(p["limit"]), p.get("number_phases"))
                for p in sched["charging_schedule_period"]
            ),
            start=start_t,
            duration_s=None if sched.get("duration") is None else float(sched["duration"]),
            recurrency=None if recurrency is None else Recurrency(recurrency),
            valid_from=None if doc.get("valid_from") is None else epoch(doc["valid_from"]),
            valid_to=None if doc.get("valid_to") is None else epoch(doc["valid_to"]),
            transaction_id=doc.get("transaction_id"),
            min_rate=sched.get("min_charging_rate"),
        ).check()
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ProfileError("chargingProfile", str(exc)) from None


def meter_value(entry: dict[str, Any]) -> dict[str, Any]:
    """A 1.6-style meter value (station.sample) in 2.0.1's shape."""
    sampled = []
    for v in entry["sampledValue"]:
        item: dict[str, Any] = {
            "value": float(v["value"]),
            "context": v["context"],
            "measurand": v["measurand"],
            "location": v["location"],
            "unitOfMeasure": {"unit": v["unit"]},
        }
        if "phase" in v:
            item["phase"] = v["phase"]
        sampled.append(item)
    return {"timestamp": entry["timestamp"], "sampledValue": sampled}


class ChargePoint201(ChargePoint):  # type: ignore[misc]
    """The 2.0.1 handlers of one station's connection."""

    def __init__(self, link: Link201, connection: Any) -> None:
        super().__init__(link.station.id, connection, response_timeout=link.station.config.response_timeout_s)
        self.link = link
        self.st = link.station

    async def route_message(self, raw_msg: str) -> None:
        """Route one received message through the link (slow calls in their own task)."""
        await self.link.route(raw_msg, super().route_message)

    @on(Action.request_start_transaction)
    def on_request_start(
        self, id_token: dict[str, Any], remote_start_id: int, evse_id: int | None = None, **_: Any
    ) -> call_result.RequestStartTransaction:
        st = self.st
        if evse_id is None:
            free = [n for n in st.connectors if st.open_transaction(n) is None and st.charger(n).available]
            evse_id = free[0] if free else None
        if evse_id is None or evse_id not in st.connectors:
            return call_result.RequestStartTransaction(status="Rejected")
        ch = st.charger(evse_id)
        if not ch.available or ch.faulted or st.open_transaction(evse_id) is not None:
            return call_result.RequestStartTransaction(status="Rejected")
        self.link.remote_ids[evse_id] = remote_start_id
        st.start(evse_id, str(id_token["id_token"]))
        return call_result.RequestStartTransaction(status="Accepted")

    @on(Action.request_stop_transaction)
    def on_request_stop(self, transaction_id: str, **_: Any) -> call_result.RequestStopTransaction:
        st = self.st
        tx = next((t for t in st.transactions.values() if t.tx_id == transaction_id and not t.stopped), None)
        if tx is None:
            return call_result.RequestStopTransaction(status="Rejected")
        now = st.rt.clock.now()
        st.stop(tx.connector)
        self.link.stop_transaction(tx, st.register_wh(tx.connector), now, "Remote")
        return call_result.RequestStopTransaction(status="Accepted")

    @on(Action.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> call_result.GetVariables:
        results = []
        for item in get_variable_data:
            component, variable = item["component"], item["variable"]
            out: dict[str, Any] = {
                "component": _camel(component),
                "variable": _camel(variable),
                "attributeType": item.get("attribute_type", "Actual"),
            }
            key = VARIABLES.get((component["name"], variable["name"]))
            if item.get("attribute_type", "Actual") != "Actual":
                out["attributeStatus"] = "NotSupportedAttributeType"
            elif key is None:
                known = any(c == component["name"] for c, _ in VARIABLES)
                out["attributeStatus"] = "UnknownVariable" if known else "UnknownComponent"
            else:
                out["attributeStatus"] = "Accepted"
                out["attributeValue"] = self.st.keys.get(key)
            results.append(out)
        return call_result.GetVariables(get_variable_result=results)

    @on(Action.set_variables)
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> call_result.SetVariables:
        results = []
        for item in set_variable_data:
            component, variable = item["component"], item["variable"]
            out: dict[str, Any] = {
                "component": _camel(component),
                "variable": _camel(variable),
                "attributeType": item.get("attribute_type", "Actual"),
            }
            key = VARIABLES.get((component["name"], variable["name"]))
            if item.get("attribute_type", "Actual") != "Actual":
                out["attributeStatus"] = "NotSupportedAttributeType"
            elif key is None:
                known = any(c == component["name"] for c, _ in VARIABLES)
                out["attributeStatus"] = "UnknownVariable" if known else "UnknownComponent"
            else:
                status = self.st.keys.change(key, str(item["attribute_value"]))
                out["attributeStatus"] = "Rejected" if status is Change.NOT_SUPPORTED else status.value
            results.append(out)
        self.link.timers_changed.set()
        self.link.sample_changed.set()
        return call_result.SetVariables(set_variable_result=results)

    @on(Action.set_charging_profile)
    def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **_: Any
    ) -> call_result.SetChargingProfile:
        st = self.st
        if evse_id != 0 and evse_id not in st.connectors:
            return call_result.SetChargingProfile(status="Rejected")
        try:
            profile = parse_profile(evse_id, charging_profile, st.rt.clock.now())
            st.profiles.install(profile)
        except ProfileError as exc:
            log.info("%s: SetChargingProfile rejected: %s", st.id, exc)
            return call_result.SetChargingProfile(status="Rejected", status_info={"reasonCode": exc.field})
        st.save_profiles()
        self.link.profiles_changed.set()
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> call_result.ClearChargingProfile:
        st = self.st
        crit = charging_profile_criteria or {}
        purpose_name = crit.get("charging_profile_purpose")
        purpose = None if purpose_name is None else PURPOSES.get(purpose_name)
        gone = st.profiles.clear(charging_profile_id, crit.get("evse_id"), purpose, crit.get("stack_level"))
        if gone:
            st.save_profiles()
            self.link.profiles_changed.set()
        return call_result.ClearChargingProfile(status="Accepted" if gone else "Unknown")

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> call_result.GetCompositeSchedule:
        st = self.st
        if evse_id != 0 and evse_id not in st.connectors:
            return call_result.GetCompositeSchedule(status="Rejected")
        now = st.rt.clock.now()
        unit = RateUnit(charging_rate_unit or "A")
        numbers = list(st.connectors) if evse_id == 0 else [evse_id]
        phases = max(st.charger(n).active_phases for n in numbers)
        default = sum(st.charger(n).config.max_current for n in numbers)
        periods = st.profiles.composite(now, evse_id, duration, phases, unit, default)
        docs = [{"startPeriod": int(p.start_s), "limit": p.limit, "numberPhases": p.phases} for p in periods]
        if not docs:
            value = default if unit is RateUnit.A else default * 230.0 * phases
            docs = [{"startPeriod": 0, "limit": round(value, 1), "numberPhases": phases}]
        schedule = {
            "evseId": evse_id,
            "duration": duration,
            "scheduleStart": iso(now),
            "chargingRateUnit": unit.value,
            "chargingSchedulePeriod": docs,
        }
        return call_result.GetCompositeSchedule(status="Accepted", schedule=schedule)

    # ---- commands on the link's shared behaviour ------------------------------------------------

    @on(Action.reset)
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> call_result.Reset:
        if evse_id is not None:
            # An EVSE cannot restart on its own: only the whole station resets.
            return call_result.Reset(status="Rejected")
        scheduled = self.link.schedule_reset("ImmediateReset", when_idle=type == "OnIdle")
        return call_result.Reset(status="Scheduled" if scheduled else "Accepted")

    @after(Action.reset)
    def after_reset(self, type: str, evse_id: int | None = None, **_: Any) -> None:
        if evse_id is None:
            self.link.reset_now("ImmediateReset")

    @on(Action.change_availability)
    def on_change_availability(
        self, operational_status: str, evse: dict[str, Any] | None = None, **_: Any
    ) -> call_result.ChangeAvailability:
        number = 0 if evse is None else int(evse["id"])
        if evse is not None and evse.get("connector_id") not in (None, 1):
            return call_result.ChangeAvailability(status="Rejected")
        status = self.link.change_availability(number, operational_status == "Operative")
        return call_result.ChangeAvailability(status=status.value)

    @on(Action.unlock_connector)
    async def on_unlock(self, evse_id: int, connector_id: int, **_: Any) -> call_result.UnlockConnector:
        outcome = Unlock.UNKNOWN
        if connector_id == 1:
            outcome = await self.link.unlock(evse_id, end_transaction=False)
        return call_result.UnlockConnector(status=UNLOCK[outcome])

    @on(Action.trigger_message)
    def on_trigger(
        self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any
    ) -> call_result.TriggerMessage:
        return call_result.TriggerMessage(status=self._trigger(requested_message, evse).value)

    def _trigger(self, message: str, evse: dict[str, Any] | None) -> Trigger:
        st = self.st
        if message not in TRIGGERS:
            return Trigger.NOT_IMPLEMENTED
        number = None if evse is None else int(evse["id"])
        if number is not None and number not in st.connectors:
            return Trigger.REJECTED
        if message == "BootNotification" and self.link.accepted:
            return Trigger.REJECTED  # F06.FR.17: only while the boot is not accepted
        if message == "StatusNotification" and (evse is None or evse.get("connector_id") != 1):
            return Trigger.REJECTED  # F06.FR.12: a status is of one connector
        if message == "MeterValues" and not self.link.measures():
            return Trigger.REJECTED
        if message == "TransactionEvent":
            numbers = list(st.connectors) if number is None else [number]
            if all(st.open_transaction(n) is None for n in numbers):
                return Trigger.REJECTED
        return Trigger.ACCEPTED

    @after(Action.trigger_message)
    def after_trigger(self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any) -> None:
        if self._trigger(requested_message, evse) is Trigger.ACCEPTED:
            number = None if evse is None else int(evse["id"])
            self.link.spawn(self.link.triggered(requested_message, number))

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status=self.link.data_transfer(vendor_id))

    @on(Action.clear_cache)
    def on_clear_cache(self, **_: Any) -> call_result.ClearCache:
        self.st.clear_cache()
        return call_result.ClearCache(status="Accepted")

    @on(Action.send_local_list)
    def on_send_local_list(
        self,
        version_number: int,
        update_type: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> call_result.SendLocalList:
        entries = [
            (
                str(e["id_token"]["id_token"]),
                None if e.get("id_token_info") is None else str(e["id_token_info"]["status"]),
            )
            for e in local_authorization_list or []
        ]
        status = self.st.update_local_list(version_number, update_type == "Full", entries)
        if status is ListUpdate.NOT_SUPPORTED:
            return call_result.SendLocalList(status="Failed", status_info={"reasonCode": "NotEnabled"})
        return call_result.SendLocalList(status=status.value)

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self, **_: Any) -> call_result.GetLocalListVersion:
        return call_result.GetLocalListVersion(version_number=self.st.local_list_version() or 0)


def _camel(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "".join(w.capitalize() if i else w for i, w in enumerate(k.split("_"))): v for k, v in doc.items()
    }


class Link201(Link):
    """A station's 2.0.1 connection (transactions as TransactionEvents, ids named by the station)."""

    subprotocol = "ocpp2.0.1"

    def __init__(self, station: Station) -> None:
        super().__init__(station)
        self.cp: ChargePoint201 | None = None
        self.remote_ids: dict[int, int] = {}

    def make_cp(self, ws: Any) -> ChargePoint201:
        """The library's 2.0.1 charge point on this connection."""
        self.cp = ChargePoint201(self, ws)
        return self.cp

    async def send(self, payload: Any) -> Any:
        """A CALL; raises OCPPError on a CALLERROR."""
        assert self.cp is not None
        return await self.cp.call(payload, suppress=False)

    async def boot(self, reason: BootReason) -> tuple[str, int]:
        """BootNotification with its reason."""
        c = self.station.config
        resp = await self.send(
            call.BootNotification(
                charging_station={"model": c.model, "vendorName": c.vendor}, reason=reason.value
            )
        )
        return str(resp.status), int(resp.interval)

    async def heartbeat(self) -> None:
        """Heartbeat."""
        await self.send(call.Heartbeat())

    async def status_notification(self, connector: int, status: str) -> None:
        """StatusNotification of an EVSE's connector; the station itself (0) has none in 2.0.1."""
        if connector == 0:
            return
        await self.send(
            call.StatusNotification(
                timestamp=iso(self.rt.clock.now()),
                connector_status=STATUS.get(status, "Occupied"),
                evse_id=connector,
                connector_id=1,
            )
        )

    async def authorize(self, id_tag: str) -> str:
        """Authorize an ISO 14443 token."""
        resp = await self.send(call.Authorize(id_token={"idToken": id_tag, "type": "ISO14443"}))
        return str(resp.id_token_info["status"])

    async def meter_values(
        self, connector: int, values: list[dict[str, Any]], tx_id: int | str | None
    ) -> None:
        """MeterValues of an EVSE."""
        await self.send(call.MeterValues(evse_id=connector, meter_value=[meter_value(v) for v in values]))

    def _event(self, tx: Transaction, kind: str, trigger: str, at: float, **extra: Any) -> dict[str, Any]:
        tx.seq += 1
        self.station.save_transactions()
        info: dict[str, Any] = {"transactionId": tx_name(tx.session)}
        info.update(extra.pop("info", {}))
        payload: dict[str, Any] = {
            "event_type": kind,
            "timestamp": iso(at),
            "trigger_reason": trigger,
            "seq_no": tx.seq - 1,
            "transaction_info": info,
            **extra,
        }
        return {"action": "TransactionEvent", "session": tx.session, "payload": payload}

    def start_message(self, tx: Transaction) -> dict[str, Any]:
        """TransactionEvent Started, with the meter start as a Transaction.Begin value."""
        tx.tx_id = tx_name(tx.session)
        self.station.profiles.start_transaction(tx.connector, tx.tx_id, tx.started_at)
        begin = {
            "timestamp": iso(tx.started_at),
            "sampledValue": [
                {
                    "value": float(tx.meter_start),
                    "context": "Transaction.Begin",
                    "measurand": "Energy.Active.Import.Register",
                    "unitOfMeasure": {"unit": "Wh"},
                }
            ],
        }
        info: dict[str, Any] = {"chargingState": "EVConnected"}
        remote = self.remote_ids.pop(tx.connector, None)
        if remote is not None:
            info["remoteStartId"] = remote
        session = self.station.charger(tx.connector).session
        carded = session is not None and session.id == tx.session and session.auth_method in CARD_METHODS
        token_type = "Central" if remote is not None else "ISO14443" if carded else "Local"
        return self._event(
            tx,
            "Started",
            "RemoteStart" if remote is not None else "CablePluggedIn",
            tx.started_at,
            info=info,
            evse={"id": tx.connector, "connectorId": 1},
            id_token={"idToken": tx.id_tag, "type": token_type},
            meter_value=[begin],
        )

    def stop_message(self, tx: Transaction, meter_stop: int, at: float, reason: str) -> dict[str, Any]:
        """TransactionEvent Ended, with the meter stop as a Transaction.End value."""
        end = {
            "timestamp": iso(at),
            "sampledValue": [
                {
                    "value": float(meter_stop),
                    "context": "Transaction.End",
                    "measurand": "Energy.Active.Import.Register",
                    "unitOfMeasure": {"unit": "Wh"},
                }
            ],
        }
        return self._event(
            tx,
            "Ended",
            ENDED_BY.get(reason, "StopAuthorized"),
            at,
            info={"stoppedReason": reason, "chargingState": "Idle"},
            meter_value=[end],
        )

    def meter_message(
        self, tx: Transaction, values: list[dict[str, Any]], triggered: bool = False
    ) -> dict[str, Any]:
        """TransactionEvent Updated with a periodic (or a triggered) meter value; without measurands
        (a triggered event) it carries none."""
        at = values[0]["timestamp"]
        extra: dict[str, Any] = {}
        measured = [meter_value(v) for v in values if v["sampledValue"]]
        if measured:
            extra["meter_value"] = measured
        return self._event(
            tx,
            "Updated",
            "Trigger" if triggered else "MeterValuePeriodic",
            epoch(at),
            info={"chargingState": "Charging"},
            **extra,
        )

    def reason(self, stop_reason: str) -> str:
        """2.0.1's stoppedReason for an evpilot stop reason."""
        return STOPPED.get(stop_reason, "Other")

    async def deliver(self, body: dict[str, Any]) -> None:
        """Send one queued TransactionEvent."""
        st = self.station
        payload = dict(body["payload"])
        tx = st.transactions.get(body["session"])
        resp = await self.send(call.TransactionEvent(**payload))
        if payload["event_type"] == "Started" and tx is not None and not tx.stopped:
            st.profiles.start_transaction(tx.connector, tx_name(tx.session), tx.started_at)
            info = resp.id_token_info or {}
            if info.get("status", "Accepted") != "Accepted" and st.keys.flag("StopTransactionOnInvalidId"):
                now = self.rt.clock.now()
                st.stop(tx.connector)
                self.stop_transaction(tx, st.register_wh(tx.connector), now, "DeAuthorized")
        if payload["event_type"] == "Ended" and tx is not None:
            del st.transactions[tx.session]
            st.save_transactions()

    def is_call_error(self, exc: BaseException) -> bool:
        """The backend answered with a CALLERROR."""
        return isinstance(exc, OCPPError)
