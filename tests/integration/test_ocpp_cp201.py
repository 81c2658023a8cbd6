"""evpilot as an OCPP 2.0.1 charging station: the commands on the link's shared behaviour, against a CSMS
built with the `ocpp` library's v201 ChargePoint on a real websockets server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ocpp.v16 import call as call16
from ocpp.v201 import call

from evpilot.sim.ev import CarSpec
from evpilot.store.sqlite import Store
from tests.helpers import free_port, make_config, serve
from tests.integration.test_ocpp_cp import SPEED, ocpp_config
from tests.ocpp_backend import Backend

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend(free_port())
    await b.start()
    yield b
    await b.stop()


def config201(port: int, chargers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    config = ocpp_config(port, version="2.0.1")
    if chargers is not None:
        config["chargers"] = chargers
    return config


def events(backend: Backend, kind: str) -> list[dict[str, Any]]:
    return [e for e in backend.of("TransactionEvent") if e["event_type"] == kind]


async def reconnected(backend: Backend, boots: int) -> Any:
    """The station's connection after its `boots`-th BootNotification."""
    await backend.wait(lambda: len(backend.of("BootNotification")) >= boots)
    return backend.stations["EVPILOT-01"]


async def test_reset_on_idle_waits_for_the_transaction_and_immediate_ends_it(backend: Backend) -> None:
    async with serve(make_config(config201(backend.port)), speed=SPEED) as (_, rt):
        cs = await backend.station("EVPILOT-01")
        assert backend.of("BootNotification")[0]["reason"] == "PowerUp"
        # Only the whole station restarts.
        assert (await cs.call(call.Reset(type="Immediate", evse_id=1))).status == "Rejected"

        rt.sim_plug("cp1", CarSpec())
        await backend.wait(lambda: events(backend, "Started"))
        assert (await cs.call(call.Reset(type="OnIdle"))).status == "Scheduled"
        # A message exchanged after the answer: the station has not restarted meanwhile.
        assert (await cs.call(call.TriggerMessage(requested_message="Heartbeat"))).status == "Accepted"
        await backend.wait(lambda: backend.of("Heartbeat"))
        assert len(backend.of("BootNotification")) == 1 and not events(backend, "Ended")

        rt.sim_unplug("cp1")
        cs = await reconnected(backend, 2)
        assert backend.of("BootNotification")[1]["reason"] == "RemoteReset"
        ended = await backend.wait(lambda: events(backend, "Ended"))
        assert ended[0]["transaction_info"]["stopped_reason"] == "EVDisconnected"

        rt.sim_plug("cp1", CarSpec())
        await backend.wait(lambda: len(events(backend, "Started")) == 2)
        assert (await cs.call(call.Reset(type="Immediate"))).status == "Accepted"
        ended = await backend.wait(lambda: len(events(backend, "Ended")) == 2 and events(backend, "Ended"))
        assert ended[1]["trigger_reason"] == "ResetCommand"
        assert ended[1]["transaction_info"]["stopped_reason"] == "ImmediateReset"
        await reconnected(backend, 3)
        assert backend.of("BootNotification")[2]["reason"] == "RemoteReset"
        # Nothing is pending any more: an idle station resets at once.
        cs = backend.stations["EVPILOT-01"]
        rt.sim_unplug("cp1")
        await backend.wait(lambda: backend.of("StatusNotification")[-1]["connector_status"] == "Available")
        assert (await cs.call(call.Reset(type="OnIdle"))).status == "Accepted"
        await reconnected(backend, 4)


async def test_change_availability_and_unlock_of_a_station_and_its_evses(backend: Backend) -> None:
    chargers = [
        {"id": "cp1", "name": "Socket", "fixed_cable": False, "lock": "solenoid"},
        {"id": "cp2", "name": "Cable", "phase": 2, "phases": 1},
        {"id": "cp3", "name": "Bare socket", "fixed_cable": False, "phase": 3, "phases": 1},
    ]
    async with serve(make_config(config201(backend.port, chargers)), speed=SPEED) as (_, rt):
        cs = await backend.station("EVPILOT-01")

        def last_status(evse: int) -> str | None:
            seen = [s for s in backend.of("StatusNotification") if s["evse_id"] == evse]
            return seen[-1]["connector_status"] if seen else None

        await backend.wait(lambda: last_status(1) == "Available" and last_status(2) == "Available")
        unknown = call.ChangeAvailability(operational_status="Inoperative", evse={"id": 5})
        assert (await cs.call(unknown)).status == "Rejected"
        no_such_connector = call.ChangeAvailability(
            operational_status="Inoperative", evse={"id": 1, "connectorId": 2}
        )
        assert (await cs.call(no_such_connector)).status == "Rejected"

        assert (await cs.call(call.UnlockConnector(evse_id=1, connector_id=1))).status == "Unlocked"
        assert (await cs.call(call.UnlockConnector(evse_id=1, connector_id=2))).status == "UnknownConnector"
        assert (await cs.call(call.UnlockConnector(evse_id=4, connector_id=1))).status == "UnknownConnector"
        # A fixed cable, or a socket without a lock, has no lock to open (2.0.1 has no NotSupported).
        assert (await cs.call(call.UnlockConnector(evse_id=2, connector_id=1))).status == "UnlockFailed"
        assert (await cs.call(call.UnlockConnector(evse_id=3, connector_id=1))).status == "UnlockFailed"
        forced = [(c["origin"], c["fields"]) for c in rt.recent_commands if c["command"] == "set_cable_lock"]
        # No car: the lock was open already, and the forced unlock ends at once (the socket is free).
        assert forced == [
            ("ocpp", {"charger": "cp1", "setting": "force_unlock"}),
            ("lock", {"charger": "cp1", "setting": "auto"}),
        ]

        rt.sim_plug("cp1", CarSpec())
        await backend.wait(lambda: events(backend, "Started"))
        await backend.wait(lambda: rt.access.of("cp1").lock.state.value == "locked")
        # 2.0.1 keeps a charging car locked in (the transaction goes on).
        unlock = await cs.call(call.UnlockConnector(evse_id=1, connector_id=1))
        assert unlock.status == "OngoingAuthorizedTransaction"
        assert rt.access.of("cp1").lock.state.value == "locked"
        assert rt.charger("cp1").session is not None and not events(backend, "Ended")

        # Inoperative while charging: scheduled for the end of the transaction.
        one = call.ChangeAvailability(operational_status="Inoperative", evse={"id": 1})
        assert (await cs.call(one)).status == "Scheduled"
        assert rt.charger("cp1").available
        rt.sim_unplug("cp1")
        await backend.wait(lambda: events(backend, "Ended"))
        await backend.wait(lambda: not rt.charger("cp1").available)
        await backend.wait(lambda: last_status(1) == "Unavailable")
        assert last_status(2) == "Available"

        station_off = call.ChangeAvailability(operational_status="Inoperative")
        assert (await cs.call(station_off)).status == "Accepted"
        await backend.wait(lambda: last_status(2) == "Unavailable")
        station_on = call.ChangeAvailability(operational_status="Operative")
        assert (await cs.call(station_on)).status == "Accepted"
        await backend.wait(lambda: last_status(1) == "Available" and last_status(2) == "Available")
        assert rt.charger("cp1").available and rt.charger("cp2").available
        assert [c["command"] for c in rt.recent_commands if c["origin"] == "ocpp"].count("set_available") >= 3


async def test_unlock_after_the_transaction_opens_the_lock_and_a_jammed_lock_fails(backend: Backend) -> None:
    chargers = [{"id": "cp1", "name": "Socket", "fixed_cable": False, "lock": "motor"}]
    async with serve(make_config(config201(backend.port, chargers)), speed=SPEED) as (base, rt):
        cs = await backend.station("EVPILOT-01")
        lock = rt.access.of("cp1")

        async def stopped_and_still_locked(n: int) -> None:
            rt.sim_plug("cp1", CarSpec())
            started = await backend.wait(
                lambda: len(events(backend, "Started")) == n and events(backend, "Started")
            )
            await backend.wait(lambda: lock.lock.state.value == "locked")
            tx_id = started[-1]["transaction_info"]["transaction_id"]
            assert (await cs.call(call.RequestStopTransaction(transaction_id=tx_id))).status == "Accepted"
            await backend.wait(lambda: len(events(backend, "Ended")) == n)
            # The car is still plugged in and held by the lock.
            assert lock.lock.state.value == "locked" and rt.charger("cp1").plugged

        await stopped_and_still_locked(1)
        assert (await cs.call(call.UnlockConnector(evse_id=1, connector_id=1))).status == "Unlocked"
        assert lock.lock.state.value == "unlocked" and lock.sensed is False

        rt.sim_unplug("cp1")
        await backend.wait(lambda: lock.lock_setting.value == "auto")
        await stopped_and_still_locked(2)
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.put("/api/sim/chargers/cp1/lock", json={"jammed": True})).status_code == 200
            assert (await cs.call(call.UnlockConnector(evse_id=1, connector_id=1))).status == "UnlockFailed"
            access = (await client.get("/api/chargers/cp1/access")).json()
        assert access["lock"]["state"] == "fault" and access["lock"]["locked"] is True
        assert access["lock"]["fault"] == "unlock not confirmed after 3 attempts of 3 s"
        # Freed, the next UnlockConnector drives the lock again and it opens.
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.put("/api/sim/chargers/cp1/lock", json={"jammed": False})).status_code == 200
        assert (await cs.call(call.UnlockConnector(evse_id=1, connector_id=1))).status == "Unlocked"
        assert lock.lock.state.value == "unlocked" and lock.sensed is False


async def test_trigger_message_for_each_message_the_station_sends(backend: Backend) -> None:
    async with serve(make_config(config201(backend.port)), speed=SPEED) as (_, rt):
        cs = await backend.station("EVPILOT-01")
        await backend.wait(lambda: backend.of("StatusNotification"))

        async def trigger(message: str, evse: dict[str, Any] | None = None) -> str:
            return str((await cs.call(call.TriggerMessage(requested_message=message, evse=evse))).status)

        # F06.FR.17: the boot is accepted already.
        assert await trigger("BootNotification") == "Rejected"
        assert await trigger("LogStatusNotification") == "NotImplemented"
        assert await trigger("Heartbeat", {"id": 7}) == "Rejected"

        assert await trigger("Heartbeat") == "Accepted"
        await backend.wait(lambda: backend.of("Heartbeat"))

        # F06.FR.12: a status is one connector's.
        assert await trigger("StatusNotification") == "Rejected"
        statuses = len(backend.of("StatusNotification"))
        assert await trigger("StatusNotification", {"id": 1, "connectorId": 1}) == "Accepted"
        await backend.wait(lambda: len(backend.of("StatusNotification")) > statuses)
        assert backend.of("StatusNotification")[-1]["evse_id"] == 1

        assert await trigger("MeterValues", {"id": 1}) == "Accepted"
        values = await backend.wait(lambda: backend.of("MeterValues"))
        assert values[0]["evse_id"] == 1
        assert {v["context"] for v in values[0]["meter_value"][0]["sampled_value"]} == {"Trigger"}

        # A TransactionEvent needs a transaction.
        assert await trigger("TransactionEvent") == "Rejected"
        rt.sim_plug("cp1", CarSpec())
        await backend.wait(lambda: events(backend, "Started"))
        assert await trigger("TransactionEvent", {"id": 1}) == "Accepted"
        updated = await backend.wait(lambda: events(backend, "Updated"))
        assert updated[0]["trigger_reason"] == "Trigger"
        assert updated[0]["meter_value"][0]["sampled_value"][0]["context"] == "Trigger"
        seqs = [e["seq_no"] for e in backend.of("TransactionEvent")]
        assert seqs == list(range(len(seqs)))

        # Without measurands there is nothing to send as MeterValues; a TransactionEvent goes without.
        none = call.SetVariables(
            set_variable_data=[
                {
                    "component": {"name": "SampledDataCtrlr"},
                    "variable": {"name": "TxUpdatedMeasurands"},
                    "attributeValue": "",
                }
            ]
        )
        assert (await cs.call(none)).set_variable_result[0]["attribute_status"] == "Accepted"
        assert await trigger("MeterValues", {"id": 1}) == "Rejected"
        assert await trigger("TransactionEvent") == "Accepted"
        updated = await backend.wait(
            lambda: len(events(backend, "Updated")) == 2 and events(backend, "Updated")
        )
        assert updated[1]["trigger_reason"] == "Trigger" and "meter_value" not in updated[1]


async def test_local_list_cache_and_data_transfer_shared_with_1_6(backend: Backend, tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    chargers = [{"id": "cp1", "rfid": "remote"}]
    try:
        async with (
            serve(make_config(config201(backend.port, chargers)), speed=SPEED, store=store) as (base, _),
            httpx.AsyncClient(base_url=base) as client,
        ):
            cs = await backend.station("EVPILOT-01")
            assert (await cs.call(call.GetLocalListVersion())).version_number == 0

            def entry(token: str, status: str | None) -> dict[str, Any]:
                doc: dict[str, Any] = {"idToken": {"idToken": token, "type": "ISO14443"}}
                if status is not None:
                    doc["idTokenInfo"] = {"status": status}
                return doc

            full = call.SendLocalList(
                version_number=3,
                update_type="Full",
                local_authorization_list=[entry("0A0B0C0D", "Accepted"), entry("0E0E0E0E", "Blocked")],
            )
            assert (await cs.call(full)).status == "Accepted"
            assert (await cs.call(call.GetLocalListVersion())).version_number == 3
            stale = call.SendLocalList(version_number=2, update_type="Differential")
            assert (await cs.call(stale)).status == "VersionMismatch"
            diff = call.SendLocalList(
                version_number=4,
                update_type="Differential",
                local_authorization_list=[entry("0E0E0E0E", None), entry("01020304", "Accepted")],
            )
            assert (await cs.call(diff)).status == "Accepted"
            assert (await cs.call(call.GetLocalListVersion())).version_number == 4

            # A listed card is authorized by the list: no Authorize goes to the CSMS.
            await client.post("/api/sim/chargers/cp1/plug", json={"soc": 20})
            swiped = await client.post("/api/chargers/cp1/swipe", json={"uid": "0a:0b:0c:0d"})
            assert swiped.json()["action"] == "remote"
            started = await backend.wait(lambda: events(backend, "Started"))
            assert started[0]["id_token"]["id_token"] == "0A0B0C0D"
            assert backend.of("Authorize") == []

            # An unlisted card goes to the CSMS; its answer is cached (in the store) until ClearCache.
            await client.post("/api/sim/chargers/cp1/unplug")
            await backend.wait(lambda: events(backend, "Ended"))
            await client.post("/api/sim/chargers/cp1/plug", json={"soc": 20})
            await client.post("/api/chargers/cp1/swipe", json={"uid": "0F0F0F0F"})
            asked = await backend.wait(lambda: backend.of("Authorize"))
            assert asked[0]["id_token"] == {"id_token": "0F0F0F0F", "type": "ISO14443"}
            await backend.wait(lambda: len(events(backend, "Started")) == 2)
            auth = store.get_setting("ocpp:EVPILOT-01:auth")
            assert auth["cache"] == {"0F0F0F0F": "Accepted"} and auth["version"] == 4
            assert (await cs.call(call.ClearCache())).status == "Accepted"
            auth = store.get_setting("ocpp:EVPILOT-01:auth")
            assert auth["cache"] == {} and set(auth["list"]) == {"0A0B0C0D", "01020304"}
            assert (await cs.call(call.DataTransfer(vendor_id="acme", message_id="x"))).status == (
                "UnknownVendorId"
            )
            assert (await cs.call(call.DataTransfer(vendor_id="evpilot"))).status == "Rejected"

        # The same station as a 1.6 charge point: one list, one version.
        config16 = ocpp_config(backend.port)
        config16["chargers"] = chargers
        async with serve(make_config(config16), speed=SPEED, store=store):
            cp = await reconnected(backend, 2)
            assert (await cp.call(call16.GetLocalListVersion())).list_version == 4
            stale16 = call16.SendLocalList(
                list_version=4, update_type="Differential", local_authorization_list=[]
            )
            assert (await cp.call(stale16)).status == "VersionMismatch"
            off = call16.ChangeConfiguration(key="LocalAuthListEnabled", value="false")
            assert (await cp.call(off)).status == "Accepted"
            assert (await cp.call(call16.GetLocalListVersion())).list_version == -1

        # Back on 2.0.1 with the list disabled (the key both versions share).
        async with serve(make_config(config201(backend.port, chargers)), speed=SPEED, store=store):
            cs = await reconnected(backend, 3)
            got = await cs.call(
                call.GetVariables(
                    get_variable_data=[
                        {"component": {"name": "LocalAuthListCtrlr"}, "variable": {"name": "Enabled"}}
                    ]
                )
            )
            assert got.get_variable_result[0]["attribute_value"] == "false"
            refused = call.SendLocalList(version_number=5, update_type="Full")
            assert (await cs.call(refused)).status == "Failed"
            assert (await cs.call(call.GetLocalListVersion())).version_number == 0
    finally:
        store.close()
