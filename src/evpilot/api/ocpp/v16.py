"""OCPP 1.6J: evpilot as a charge point (Core, SmartCharging, RemoteTrigger, LocalAuthListManagement)."""

from __future__ import annotations

import logging
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action

from evpilot.api.ocpp.link import BootReason, Link, Trigger, Unlock, after, on
from evpilot.api.ocpp.station import Station, Transaction, epoch, iso
from evpilot.core.profiles import ChargingProfile, Kind, Period, ProfileError, Purpose, RateUnit, Recurrency

log = logging.getLogger("evpilot.ocpp")

# evpilot's stop reasons in 1.6's Reason vocabulary.
REASONS = {
    "ev_disconnected": "EVDisconnected",
    "user": "Local",
    "disabled": "Local",
    "fault": "Other",
    "shutdown": "Reboot",
    "interrupted": "PowerLoss",
}
TRIGGERS = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues")
# A shared unlock outcome in 1.6's words: NotSupported is "no connector lock, or ConnectorId is unknown"
# (1.6 ends a transaction first, so it never answers that one is running).
UNLOCK = {
    Unlock.UNLOCKED: "Unlocked",
    Unlock.FAILED: "UnlockFailed",
    Unlock.NO_LOCK: "NotSupported",
    Unlock.UNKNOWN: "NotSupported",
}


def parse_profile(connector: int, doc: dict[str, Any], now: float) -> ChargingProfile:
    """A 1.6 csChargingProfiles (snake_case keys) as a core profile; ProfileError if it cannot apply."""
    sched = doc["charging_schedule"]
    try:
        periods = tuple(
            Period(float(p["start_period"]), float(p["limit"]), p.get("number_phases"))
            for p in sched["charging_schedule_period"]
        )
        kind = Kind(doc["charging_profile_kind"])
        start = sched.get("start_schedule")
        start_t = None if start is None else epoch(start)
        if kind is Kind.ABSOLUTE and start_t is None:
            start_t = now
        recurrency = doc.get("recurrency_kind")
        return ChargingProfile(
            id=int(doc["charging_profile_id"]),
            connector=connector,
            stack_level=int(doc["stack_level"]),
            purpose=Purpose(doc["charging_profile_purpose"]),
            kind=kind,
            unit=RateUnit(sched["charging_rate_unit"]),
            periods=periods,
            start=start_t,
            duration_s=None if sched.get("duration") is None else float(sched["duration"]),
            recurrency=None if recurrency is None else Recurrency(recurrency),
            valid_from=None if doc.get("valid_from") is None else epoch(doc["valid_from"]),
            valid_to=None if doc.get("valid_to") is None else epoch(doc["valid_to"]),
            transaction_id=doc.get("transaction_id"),
            min_rate=sched.get("min_charging_rate"),
        ).check()
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProfileError):
            raise
        raise ProfileError("csChargingProfiles", str(exc)) from None


def _period(start: int, limit: float, phases: int | None) -> dict[str, Any]:
    return {"startPeriod": start, "limit": limit, "numberPhases": phases}


class ChargePoint16(ChargePoint):  # type: ignore[misc]
    """The 1.6 handlers of one station's connection; each answers from the station's state."""

    def __init__(self, link: Link16, connection: Any) -> None:
        super().__init__(link.station.id, connection, response_timeout=link.station.config.response_timeout_s)
        self.link = link
        self.st = link.station

    async def route_message(self, raw_msg: str) -> None:
        """Route one received message through the link (slow calls in their own task)."""
        await self.link.route(raw_msg, super().route_message)

    def _known(self, connector: int | None) -> bool:
        return connector is not None and connector in self.st.connectors

    @on(Action.remote_start_transaction)
    def on_remote_start(
        self, id_tag: str, connector_id: int | None = None, charging_profile: Any = None, **_: Any
    ) -> call_result.RemoteStartTransaction:
        st = self.st
        if connector_id is None:
            free = [n for n in st.connectors if st.open_transaction(n) is None and st.charger(n).available]
            connector_id = free[0] if free else None
        if not self._known(connector_id) or connector_id is None:
            return call_result.RemoteStartTransaction(status="Rejected")
        ch = st.charger(connector_id)
        if not ch.available or ch.faulted or st.open_transaction(connector_id) is not None:
            return call_result.RemoteStartTransaction(status="Rejected")
        if charging_profile is not None:
            if charging_profile.get("charging_profile_purpose") != "TxProfile":
                return call_result.RemoteStartTransaction(status="Rejected")
            self.link.pending_profiles[connector_id] = charging_profile
        st.start(connector_id, id_tag)
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id: int, **_: Any) -> call_result.RemoteStopTransaction:
        tx = self.st.by_tx_id(transaction_id)
        if tx is None:
            return call_result.RemoteStopTransaction(status="Rejected")
        now = self.st.rt.clock.now()
        self.st.stop(tx.connector)
        self.link.stop_transaction(tx, self.st.register_wh(tx.connector), now, "Remote")
        return call_result.RemoteStopTransaction(status="Accepted")

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str, **_: Any) -> call_result.ChangeConfiguration:
        status = self.st.keys.change(key, value)
        self.link.timers_changed.set()
        self.link.sample_changed.set()
        return call_result.ChangeConfiguration(status=status.value)

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> call_result.GetConfiguration:
        known, unknown = self.st.keys.report(key)
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(Action.change_availability)
    def on_change_availability(
        self, connector_id: int, type: str, **_: Any
    ) -> call_result.ChangeAvailability:
        status = self.link.change_availability(connector_id, type == "Operative")
        return call_result.ChangeAvailability(status=status.value)

    @on(Action.reset)
    def on_reset(self, type: str, **_: Any) -> call_result.Reset:
        self.link.schedule_reset(f"{type}Reset", when_idle=False)
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    def after_reset(self, type: str, **_: Any) -> None:
        self.link.reset_now(f"{type}Reset")

    @on(Action.unlock_connector)
    async def on_unlock(self, connector_id: int, **_: Any) -> call_result.UnlockConnector:
        outcome = await self.link.unlock(connector_id, end_transaction=True)
        return call_result.UnlockConnector(status=UNLOCK[outcome])

    @on(Action.trigger_message)
    def on_trigger(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> call_result.TriggerMessage:
        if requested_message not in TRIGGERS:
            return call_result.TriggerMessage(status=Trigger.NOT_IMPLEMENTED.value)
        if connector_id is not None and connector_id != 0 and not self._known(connector_id):
            return call_result.TriggerMessage(status=Trigger.REJECTED.value)
        if requested_message == "MeterValues" and not self.link.measures():
            return call_result.TriggerMessage(status=Trigger.REJECTED.value)
        return call_result.TriggerMessage(status=Trigger.ACCEPTED.value)

    @after(Action.trigger_message)
    def after_trigger(self, requested_message: str, connector_id: int | None = None, **_: Any) -> None:
        if self.on_trigger(requested_message, connector_id).status == Trigger.ACCEPTED:
            self.link.spawn(self.link.triggered(requested_message, connector_id))

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status=self.link.data_transfer(vendor_id))

    @on(Action.clear_cache)
    def on_clear_cache(self, **_: Any) -> call_result.ClearCache:
        self.st.clear_cache()
        return call_result.ClearCache(status="Accepted")

    @on(Action.send_local_list)
    def on_send_local_list(
        self, list_version: int, update_type: str, local_authorization_list: list[Any] | None = None, **_: Any
    ) -> call_result.SendLocalList:
        entries = [
            (str(e["id_tag"]), None if e.get("id_tag_info") is None else str(e["id_tag_info"]["status"]))
            for e in local_authorization_list or []
        ]
        status = self.st.update_local_list(list_version, update_type == "Full", entries)
        return call_result.SendLocalList(status=status.value)

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self, **_: Any) -> call_result.GetLocalListVersion:
        version = self.st.local_list_version()
        return call_result.GetLocalListVersion(list_version=-1 if version is None else version)

    @on(Action.set_charging_profile)
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any
    ) -> call_result.SetChargingProfile:
        st = self.st
        if connector_id != 0 and not self._known(connector_id):
            return call_result.SetChargingProfile(status="Rejected")
        try:
            profile = parse_profile(connector_id, cs_charging_profiles, st.rt.clock.now())
            if profile.id not in st.profiles.profiles and len(st.profiles.profiles) >= st.keys.number(
                "MaxChargingProfilesInstalled"
            ):
                raise ProfileError("chargingProfileId", "no room for another profile")
            st.profiles.install(profile)
        except ProfileError as exc:
            log.info("%s: SetChargingProfile rejected: %s", st.id, exc)
            return call_result.SetChargingProfile(status="Rejected")
        st.save_profiles()
        self.link.profiles_changed.set()
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> call_result.ClearChargingProfile:
        st = self.st
        purpose = None if charging_profile_purpose is None else Purpose(charging_profile_purpose)
        gone = st.profiles.clear(id, connector_id, purpose, stack_level)
        if gone:
            st.save_profiles()
            self.link.profiles_changed.set()
        return call_result.ClearChargingProfile(status="Accepted" if gone else "Unknown")

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> call_result.GetCompositeSchedule:
        st = self.st
        if connector_id != 0 and not self._known(connector_id):
            return call_result.GetCompositeSchedule(status="Rejected")
        now = st.rt.clock.now()
        unit = RateUnit(charging_rate_unit or "A")
        if connector_id == 0:
            phases = max(st.charger(n).active_phases for n in st.connectors)
            default = sum(st.charger(n).config.max_current for n in st.connectors)
        else:
            phases = st.charger(connector_id).active_phases
            default = st.charger(connector_id).config.max_current
        periods = st.profiles.composite(now, connector_id, duration, phases, unit, default)
        if not periods:
            value = default if unit is RateUnit.A else default * 230.0 * phases
            periods_doc = [_period(0, round(value, 1), phases)]
        else:
            periods_doc = [_period(int(p.start_s), p.limit, p.phases) for p in periods]
        return call_result.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=iso(now),
            charging_schedule={
                "duration": duration,
                "startSchedule": iso(now),
                "chargingRateUnit": unit.value,
                "chargingSchedulePeriod": periods_doc,
            },
        )


class Link16(Link):
    """A station's 1.6 connection: boot, heartbeat, status, transactions, meter values, the outbox."""

    subprotocol = "ocpp1.6"

    def __init__(self, station: Station) -> None:
        super().__init__(station)
        self.pending_profiles: dict[int, dict[str, Any]] = {}
        self.cp: ChargePoint16 | None = None

    def make_cp(self, ws: Any) -> ChargePoint16:
        """The library's charge point on this connection, with evpilot's handlers."""
        self.cp = ChargePoint16(self, ws)
        return self.cp

    async def send(self, payload: Any) -> Any:
        """A CALL to the backend; raises OCPPError on a CALLERROR, TimeoutError without an answer."""
        assert self.cp is not None
        return await self.cp.call(payload, suppress=False)

    async def boot(self, reason: BootReason) -> tuple[str, int]:
        """BootNotification: the status and the interval the backend returned (1.6 sends no reason)."""
        c = self.station.config
        resp = await self.send(
            call.BootNotification(charge_point_model=c.model, charge_point_vendor=c.vendor)
        )
        return str(resp.status), int(resp.interval)

    async def heartbeat(self) -> None:
        """Heartbeat."""
        await self.send(call.Heartbeat())

    async def status_notification(self, connector: int, status: str) -> None:
        """StatusNotification for one connector (0 = the station)."""
        error = "OtherError" if status == "Faulted" else "NoError"
        await self.send(
            call.StatusNotification(
                connector_id=connector,
                error_code=error,
                status=status,
                timestamp=iso(self.station.rt.clock.now()),
            )
        )

    async def authorize(self, id_tag: str) -> str:
        """Authorize: the backend's idTagInfo status."""
        resp = await self.send(call.Authorize(id_tag=id_tag))
        return str(resp.id_tag_info["status"])

    async def meter_values(
        self, connector: int, values: list[dict[str, Any]], tx_id: int | str | None
    ) -> None:
        """A MeterValues not tied to the outbox (clock-aligned without a transaction, triggered)."""
        await self.send(call.MeterValues(connector_id=connector, meter_value=values, transaction_id=tx_id))

    # ---- the outbox's messages ------------------------------------------------------------------

    def start_message(self, tx: Transaction) -> dict[str, Any]:
        """The queued StartTransaction of `tx`."""
        payload = {
            "connector_id": tx.connector,
            "id_tag": tx.id_tag,
            "meter_start": tx.meter_start,
            "timestamp": iso(tx.started_at),
        }
        return {"action": "StartTransaction", "session": tx.session, "payload": payload}

    def stop_message(self, tx: Transaction, meter_stop: int, at: float, reason: str) -> dict[str, Any]:
        """The queued StopTransaction of `tx`."""
        payload: dict[str, Any] = {
            "meter_stop": meter_stop,
            "timestamp": iso(at),
            "reason": reason,
            "id_tag": tx.id_tag,
        }
        measurands = self.station.keys.csl("StopTxnSampledData")
        if measurands:
            # The end values: the register as the session counted it, the rest as measured now.
            sampled = self.station.sample(tx.connector, measurands, "Transaction.End")
            for v in sampled:
                if v["measurand"] == "Energy.Active.Import.Register":
                    v["value"] = str(meter_stop)
            payload["transaction_data"] = [{"timestamp": iso(at), "sampledValue": sampled}]
        return {"action": "StopTransaction", "session": tx.session, "payload": payload}

    def meter_message(
        self, tx: Transaction, values: list[dict[str, Any]], triggered: bool = False
    ) -> dict[str, Any]:
        """A queued transaction MeterValues (its values carry the context)."""
        payload = {"connector_id": tx.connector, "meter_value": values}
        return {"action": "MeterValues", "session": tx.session, "payload": payload}

    def reason(self, stop_reason: str) -> str:
        """1.6's Reason for an evpilot stop reason."""
        return REASONS.get(stop_reason, "Other")

    async def deliver(self, body: dict[str, Any]) -> None:
        """Send one queued message, filling in the backend's transaction id."""
        st = self.station
        action = body["action"]
        tx = st.transactions.get(body["session"])
        payload = dict(body["payload"])
        if action == "StartTransaction":
            resp = await self.send(call.StartTransaction(**payload))
            status = str(resp.id_tag_info["status"])
            if tx is not None:
                tx.tx_id = int(resp.transaction_id)
                if not tx.stopped:
                    st.profiles.start_transaction(tx.connector, tx.tx_id, tx.started_at)
                    pending = self.pending_profiles.pop(tx.connector, None)
                    if pending is not None:
                        self._install_pending(tx, pending)
                st.save_transactions()
                if status != "Accepted" and not tx.stopped and st.keys.flag("StopTransactionOnInvalidId"):
                    now = st.rt.clock.now()
                    st.stop(tx.connector)
                    self.stop_transaction(tx, st.register_wh(tx.connector), now, "DeAuthorized")
            return
        if tx is None or tx.tx_id is None:
            log.warning("%s: %s of session %s has no transaction id: dropped", st.id, action, body["session"])
            return
        payload["transaction_id"] = tx.tx_id
        if action == "StopTransaction":
            await self.send(call.StopTransaction(**payload))
            del st.transactions[tx.session]
            st.save_transactions()
        else:
            await self.send(call.MeterValues(**payload))

    def _install_pending(self, tx: Transaction, doc: dict[str, Any]) -> None:
        st = self.station
        try:
            profile = parse_profile(tx.connector, {**doc, "transaction_id": tx.tx_id}, st.rt.clock.now())
            st.profiles.install(profile)
        except ProfileError as exc:
            log.info("%s: the RemoteStartTransaction profile was not installed: %s", st.id, exc)
            return
        st.save_profiles()

    def is_call_error(self, exc: BaseException) -> bool:
        """The backend answered with a CALLERROR."""
        return isinstance(exc, OCPPError)
