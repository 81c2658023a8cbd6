"""evpilot as an OCPP 1.6J charge point, against a backend built with the `ocpp` library on real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from ocpp.v16 import call

from evpilot.sim.ev import CarSpec
from evpilot.store.sqlite import Store
from tests.helpers import free_port, make_config, serve
from tests.ocpp_backend import Backend

pytestmark = pytest.mark.asyncio
QUIET: dict[str, Any] = {"sim": {"first_spike_s": None, "spike_rate_h": 0, "cars": []}}
SPEED = 20.0


def ocpp_config(port: int, **extra: Any) -> dict[str, Any]:
    return {
        **QUIET,
        "ocpp": {
            "url": f"ws://127.0.0.1:{port}/ocpp/",
            "id": "EVPILOT-01",
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            "meter_sample_s": 0,
            "clock_aligned_s": 0,
            **extra,
        },
    }


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend(free_port())
    await b.start()
    yield b
    await b.stop()


def iso_in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


async def test_boot_retry_status_transaction_meter_values_and_remote_stop(
    backend: Backend, tmp_path: Path
) -> None:
    backend.boot_answers = ["Pending"]
    backend.interval = 1
    store = Store(tmp_path / "evpilot.sqlite3")
    try:
        await _core_flow(backend, store)
    finally:
        store.close()


async def _core_flow(backend: Backend, store: Store) -> None:
    async with serve(make_config(ocpp_config(backend.port)), speed=SPEED, store=store) as (base, rt):
        cs = await backend.station("EVPILOT-01")
        # Pending: asked again after the returned interval, then accepted.
        await backend.wait(lambda: len(backend.of("BootNotification")) == 2)
        boot = backend.of("BootNotification")[0]
        assert boot["charge_point_vendor"] == "evpilot"
        await backend.wait(lambda: {s["connector_id"] for s in backend.of("StatusNotification")} == {0, 1})
        assert backend.of("StatusNotification")[-1]["status"] == "Available"

        assert (
            await cs.call(call.ChangeConfiguration(key="MeterValueSampleInterval", value="10"))
        ).status == "Accepted"
        assert (
            await cs.call(call.ChangeConfiguration(key="NumberOfConnectors", value="3"))
        ).status == "Rejected"
        assert (
            await cs.call(call.ChangeConfiguration(key="HeartbeatInterval", value="x"))
        ).status == "Rejected"
        assert (await cs.call(call.ChangeConfiguration(key="NoSuchKey", value="1"))).status == "NotSupported"
        conf = await cs.call(call.GetConfiguration(key=["MeterValueSampleInterval", "NoSuchKey"]))
        assert conf.configuration_key == [
            {"key": "MeterValueSampleInterval", "readonly": False, "value": "10"}
        ]
        assert conf.unknown_key == ["NoSuchKey"]
        everything = await cs.call(call.GetConfiguration())
        assert {"key": "NumberOfConnectors", "readonly": True, "value": "1"} in everything.configuration_key

        before = rt.charger("cp1").lifetime_kwh
        rt.sim_plug("cp1", CarSpec())
        start = (await backend.wait(lambda: backend.of("StartTransaction")))[0]
        assert start["connector_id"] == 1 and start["id_tag"] == "evpilot"
        assert start["meter_start"] == round(before * 1000)
        await backend.wait(lambda: any(s["status"] == "Charging" for s in backend.of("StatusNotification")))
        mv = (await backend.wait(lambda: backend.of("MeterValues")))[0]
        assert mv["transaction_id"] == start["transaction_id"]
        measurands = {v["measurand"] for v in mv["meter_value"][0]["sampled_value"]}
        assert measurands == {"Energy.Active.Import.Register", "Power.Active.Import", "Current.Import"}

        assert (await cs.call(call.RemoteStopTransaction(transaction_id=999))).status == "Rejected"
        assert (
            await cs.call(call.RemoteStopTransaction(transaction_id=start["transaction_id"]))
        ).status == "Accepted"
        stop = (await backend.wait(lambda: backend.of("StopTransaction")))[0]
        assert stop["transaction_id"] == start["transaction_id"] and stop["reason"] == "Remote"
        assert stop["meter_stop"] >= start["meter_start"]
        await backend.wait(
            lambda: backend.of("StatusNotification")[-1]["status"] in ("Finishing", "SuspendedEVSE")
        )
        async with httpx.AsyncClient(base_url=base) as client:
            doc = (await client.get("/api/chargers/cp1")).json()
        assert doc["limits"]["profiles"] == {}


async def test_remote_start_authorize_and_the_core_commands(backend: Backend) -> None:
    config = ocpp_config(backend.port)
    config["chargers"] = [{"id": "cp1", "name": "Garage", "auto_charge": False}]
    async with serve(make_config(config), speed=SPEED) as (_, rt):
        cs = await backend.station("EVPILOT-01")
        rt.sim_plug("cp1", CarSpec())
        await backend.wait(lambda: any(s["status"] == "Preparing" for s in backend.of("StatusNotification")))
        assert backend.of("StartTransaction") == []
        assert (
            await cs.call(call.RemoteStartTransaction(id_tag="TAG-1", connector_id=2))
        ).status == "Rejected"
        assert (await cs.call(call.RemoteStartTransaction(id_tag="TAG-1"))).status == "Accepted"
        start = (await backend.wait(lambda: backend.of("StartTransaction")))[0]
        assert start["id_tag"] == "TAG-1"
        assert backend.of("Authorize") == [{"id_tag": "TAG-1"}]

        # Local list and cache.
        assert (await cs.call(call.GetLocalListVersion())).list_version == 0
        entries = [
            {"idTag": "A", "idTagInfo": {"status": "Accepted"}},
            {"idTag": "B", "idTagInfo": {"status": "Blocked"}},
        ]
        sent = await cs.call(
            call.SendLocalList(list_version=3, update_type="Full", local_authorization_list=entries)
        )
        assert sent.status == "Accepted"
        assert (await cs.call(call.GetLocalListVersion())).list_version == 3
        stale = await cs.call(
            call.SendLocalList(list_version=2, update_type="Differential", local_authorization_list=[])
        )
        assert stale.status == "VersionMismatch"
        assert (await cs.call(call.ClearCache())).status == "Accepted"

        assert (
            await cs.call(call.DataTransfer(vendor_id="acme", message_id="x"))
        ).status == "UnknownVendorId"
        assert (await cs.call(call.DataTransfer(vendor_id="evpilot"))).status == "Rejected"
        assert (await cs.call(call.UnlockConnector(connector_id=1))).status == "NotSupported"  # fixed cable

        beats = len(backend.of("Heartbeat"))
        assert (await cs.call(call.TriggerMessage(requested_message="Heartbeat"))).status == "Accepted"
        await backend.wait(lambda: len(backend.of("Heartbeat")) > beats)
        assert (
            await cs.call(call.TriggerMessage(requested_message="MeterValues", connector_id=1))
        ).status == "Accepted"
        triggered = await backend.wait(lambda: backend.of("MeterValues"))
        assert triggered[0]["meter_value"][0]["sampled_value"][0]["context"] == "Trigger"

        # Inoperative while charging: scheduled for the end of the transaction.
        assert (
            await cs.call(call.ChangeAvailability(connector_id=1, type="Inoperative"))
        ).status == "Scheduled"
        assert rt.charger("cp1").available
        rt.sim_unplug("cp1")
        stop = (await backend.wait(lambda: backend.of("StopTransaction")))[0]
        assert stop["reason"] == "EVDisconnected"
        await backend.wait(lambda: not rt.charger("cp1").available)
        await backend.wait(lambda: backend.of("StatusNotification")[-1]["status"] == "Unavailable")
        assert (await cs.call(call.ChangeAvailability(connector_id=0, type="Operative"))).status == "Accepted"
        await backend.wait(lambda: backend.of("StatusNotification")[-1]["status"] == "Available")

        boots = len(backend.of("BootNotification"))
        assert (await cs.call(call.Reset(type="Soft"))).status == "Accepted"
        await backend.wait(lambda: len(backend.of("BootNotification")) > boots)


async def test_an_invalid_tag_stops_charging(backend: Backend) -> None:
    backend.invalid_tags.add("BAD")
    config = ocpp_config(backend.port)
    config["chargers"] = [{"id": "cp1", "name": "Garage", "auto_charge": False}]
    async with serve(make_config(config), speed=SPEED) as (_, rt):
        cs = await backend.station("EVPILOT-01")
        rt.sim_plug("cp1", CarSpec())
        await cs.call(call.RemoteStartTransaction(id_tag="BAD", connector_id=1))
        await backend.wait(lambda: backend.of("Authorize"))
        await backend.wait(lambda: rt.charger("cp1").paused)
        assert backend.of("StartTransaction") == []


async def test_basic_auth_security_profile_1(tmp_path: Path) -> None:
    backend = Backend(free_port(), password="s3cret-s3cret-16")
    await backend.start()
    try:
        async with serve(make_config(ocpp_config(backend.port, password="wrong-password-16")), speed=SPEED):
            await backend.wait(lambda: backend.refused >= 1 or None)
            assert backend.of("BootNotification") == []
        async with serve(make_config(ocpp_config(backend.port, password="s3cret-s3cret-16")), speed=SPEED):
            await backend.station("EVPILOT-01")
    finally:
        await backend.stop()
