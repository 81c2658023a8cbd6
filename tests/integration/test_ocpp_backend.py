"""evpilot as the OCPP 1.6J backend, against wallboxes built with the `ocpp` library over real WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from ocpp.charge_point import snake_to_camel_case
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from evpilot.control.runtime import Runtime
from evpilot.core import sources
from evpilot.devices.ocpp_backend import OcppLink, charging_profile, parse_meter_value, parse_time
from evpilot.store.sqlite import Store
from tests.helpers import make_config, serve

TICK_S = 0.5
LEASE_TICKS = 4
LEASE_S = TICK_S * LEASE_TICKS


def config(**server: Any) -> dict[str, Any]:
    return {
        "site": {"mains_limit": 25, "mains_meter": "api", "meter_timeout_s": 3, "ramp_step": 80},
        "chargers": [
            {
                "id": "w7",
                "max_current": 16,
                "safe_current": 6,
                "driver": {"type": "ocpp", "id": "WALLBOX-7", "connector": 1},
            }
        ],
        "sim": {"enabled": False},
        "ocpp_server": {"host": "127.0.0.1", "port": 0, **server},
        "control": {"tick_s": TICK_S, "lease_ticks": LEASE_TICKS},
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Received:
    """A profile the wallbox acknowledged, with when it came (on the wallbox's clock)."""

    at: float
    connector: int
    profile: dict[str, Any]


class Wallbox(ChargePoint):  # type: ignore[misc]
    """A third-party OCPP 1.6 wallbox, made of the ocpp library's charge point."""

    def __init__(self, ident: str, conn: ClientConnection, clock: Callable[[], float] = time.time) -> None:
        super().__init__(ident, conn)
        self.clock = clock
        self.profiles: list[Received] = []
        # The live profiles refused (monotonic time, limit).
        self.refused: list[tuple[float, float]] = []
        # Refuse live profiles (stack level 1) while set.
        self.refuse = False
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        # What a triggered MeterValues reports (None: no triggered report).
        self.trigger_amps: float | None = None

    @on(Action.set_charging_profile)
    def on_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        # The library hands the payload over in snake_case: back to the wire's names.
        profile = snake_to_camel_case(cs_charging_profiles)
        if profile["stackLevel"] == 1 and self.refuse:
            self.refused.append((time.monotonic(), _limit(profile)))
            self.changed.set()
            return call_result.SetChargingProfile(status="Rejected")
        self.profiles.append(Received(self.clock(), connector_id, profile))
        self.changed.set()
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag: str, **kw: Any) -> Any:
        self.commands.append(("RemoteStartTransaction", {"id_tag": id_tag, **kw}))
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id: int) -> Any:
        self.commands.append(("RemoteStopTransaction", {"transaction_id": transaction_id}))
        return call_result.RemoteStopTransaction(status="Accepted")

    @on(Action.trigger_message)
    def on_trigger(self, requested_message: str, connector_id: int | None = None) -> Any:
        self.commands.append(("TriggerMessage", {"requested_message": requested_message}))
        return call_result.TriggerMessage(status="Accepted")

    @after(Action.trigger_message)
    async def after_trigger(self, requested_message: str, connector_id: int | None = None) -> None:
        if requested_message == "MeterValues" and self.trigger_amps is not None:
            await self.meter(self.trigger_amps, 2000)

    @on(Action.unlock_connector)
    def on_unlock(self, connector_id: int) -> Any:
        self.commands.append(("UnlockConnector", {"connector_id": connector_id}))
        return call_result.UnlockConnector(status="Unlocked")

    @on(Action.change_availability)
    def on_availability(self, connector_id: int, type: str) -> Any:
        self.commands.append(("ChangeAvailability", {"connector_id": connector_id, "type": type}))
        return call_result.ChangeAvailability(status="Accepted")

    def live(self) -> list[Received]:
        return [r for r in self.profiles if r.profile["stackLevel"] == 1]

    async def wait_profile(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10) -> Received:
        """The first acknowledged live profile (from now on or already there) that satisfies `pred`."""
        async with asyncio.timeout(timeout):
            while True:
                for r in reversed(self.live()):
                    if pred(r.profile):
                        return r
                self.changed.clear()
                await self.changed.wait()

    async def begin(self, id_tag: str = "CARD-1", meter_start: int = 0) -> Any:
        """Preparing, StartTransaction on connector 1, Charging: the StartTransaction's answer."""
        await self.status("Preparing")
        start = await self.call(
            call.StartTransaction(connector_id=1, id_tag=id_tag, meter_start=meter_start, timestamp=now_iso())
        )
        await self.status("Charging")
        return start

    async def status(self, status: str, connector: int = 1) -> None:
        await self.call(
            call.StatusNotification(
                connector_id=connector, error_code="NoError", status=status, timestamp=now_iso()
            )
        )

    async def meter(self, amps: float, wh: int, tx: int | None = None) -> None:
        sampled = [{"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]
        sampled += [
            {"value": f"{amps:.1f}", "measurand": "Current.Import", "phase": p, "unit": "A"}
            for p in ("L1", "L2", "L3")
        ]
        await self.call(
            call.MeterValues(
                connector_id=1,
                transaction_id=tx,
                meter_value=[{"timestamp": now_iso(), "sampledValue": sampled}],
            )
        )


@contextlib.asynccontextmanager
async def wallbox(
    port: int,
    ident: str = "WALLBOX-7",
    boot: bool = True,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Wallbox]:
    """A wallbox connected (with these handshake headers; over wss:// with `tls`) and booted; it
    stamps the profiles it takes with `clock`."""
    url = f"{'ws' if tls is None else 'wss'}://127.0.0.1:{port}/ocpp/{ident}"
    async with connect(url, subprotocols=["ocpp1.6"], additional_headers=headers, ssl=tls) as conn:  # type: ignore[list-item]
        cp = Wallbox(ident, conn, clock)
        task = asyncio.create_task(cp.start())
        try:
            if boot:
                res = await cp.call(
                    call.BootNotification(charge_point_model="Box", charge_point_vendor="Acme")
                )
                assert res.status == "Accepted" and res.interval == 300
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def backend_port(rt: Runtime) -> int:
    assert rt.ocpp is not None
    async with asyncio.timeout(5):
        while rt.ocpp.port is None:
            await asyncio.sleep(0.01)
    return rt.ocpp.port


@contextlib.asynccontextmanager
async def mains_feed(
    client: httpx.AsyncClient, rt: Runtime, house: list[float]
) -> AsyncIterator[list[float]]:
    """Act as the mains meter: house load (changeable through the yielded list) + the wallbox's draw."""

    async def feed() -> None:
        while True:
            amps = rt.engine.chargers["w7"].currents
            mains = [h + a for h, a in zip(house, amps, strict=True)]
            r = await client.put("/api/meters/mains", json={"currents": mains})
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.2)

    task = asyncio.create_task(feed())
    try:
        yield house
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(pred: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.05)


async def metering(cp: Wallbox, amps: list[float], tx: int | None) -> None:
    """The car wants `amps[0]` and draws it, up to the live limit the wallbox took last."""
    wh = 1000
    while True:
        live = cp.live()
        await cp.meter(min(amps[0], _limit(live[-1].profile)) if live else amps[0], wh, tx)
        wh += 5
        await asyncio.sleep(0.3)


async def test_a_wallbox_boots_charges_and_follows_the_mains() -> None:
    async with (
        serve(make_config(config())) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
        mains_feed(client, rt, [5.0, 5.0, 5.0]) as house,
    ):
        port = await backend_port(rt)
        async with wallbox(port) as cp:
            link = rt.links["w7"]
            assert isinstance(link, OcppLink)
            await cp.status("Preparing")
            ch = rt.engine.chargers["w7"]
            await until(lambda: ch.letter == "B")
            auth = await cp.call(call.Authorize(id_tag="CARD-1"))
            assert auth.id_tag_info["status"] == "Accepted"
            start = await cp.call(
                call.StartTransaction(connector_id=1, id_tag="CARD-1", meter_start=1000, timestamp=now_iso())
            )
            tx = start.transaction_id
            assert isinstance(tx, int) and start.id_tag_info["status"] == "Accepted"
            await cp.status("Charging")
            amps = [10.0]
            meter_task = asyncio.create_task(metering(cp, amps, tx))
            try:
                # The standing fallback: a TxDefaultProfile at the safe current, without validTo.
                await until(lambda: any(r.profile["stackLevel"] == 0 for r in cp.profiles))
                fallback = next(r.profile for r in cp.profiles if r.profile["stackLevel"] == 0)
                assert fallback["chargingProfilePurpose"] == "TxDefaultProfile" and "validTo" not in fallback
                assert fallback["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 6.0
                # The live profile: a TxProfile for the transaction at the engine's allocation (max 16 A).
                got = await cp.wait_profile(lambda p: p.get("transactionId") == tx and _limit(p) == 16.0)
                assert got.profile["chargingProfilePurpose"] == "TxProfile"
                assert got.profile["chargingSchedule"]["chargingRateUnit"] == "A"
                # Meter values feed the engine, with the wallbox's timestamps.
                await until(lambda: ch.currents == (10.0, 10.0, 10.0) and ch.letter == "C")
                doc = (await client.get("/api/chargers/w7")).json()
                assert doc["amperage"] == [10.0, 10.0, 10.0] and doc["charging"] is True
                link = doc["link"]
                assert link["driver"] == "ocpp" and link["address"] == "ocpp:WALLBOX-7/1"
                assert link["online"] is True and link["errors"] == 0
                assert link["commanded_a"] in [_limit(r.profile) for r in cp.live()[-2:]]
                # The mains changes: 14 A of house load leaves 11 A; the wallbox gets it as a profile.
                house[:] = [14.0, 14.0, 14.0]
                got = await cp.wait_profile(lambda p: _limit(p) == 11.0)
                assert got.profile["transactionId"] == tx
                assert ch.allocated == 11.0
                # The stations list.
                stations = (await client.get("/api/ocpp/stations")).json()
                (st,) = stations
                assert st["id"] == "WALLBOX-7" and st["assigned"] and st["connected"] and st["booted"]
                assert st["boot"]["charge_point_vendor"] == "Acme"
                conn = st["connectors"]["1"]
                assert conn["status"] == "Charging" and conn["transaction_id"] == tx
                assert conn["charger"] == "w7" and conn["profile"]["purpose"] == "TxProfile"
                # The transaction ends: the live profile becomes a TxDefaultProfile again.
                amps[0] = 0.0
                await cp.call(call.StopTransaction(meter_stop=1200, timestamp=now_iso(), transaction_id=tx))
                await cp.status("Finishing")
                got = await cp.wait_profile(lambda p: p["chargingProfilePurpose"] == "TxDefaultProfile")
                assert "transactionId" not in got.profile
            finally:
                meter_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await meter_task


def _limit(profile: dict[str, Any]) -> float:
    return float(profile["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"])


async def test_profiles_carry_the_lease_and_are_renewed_before_it_ends() -> None:
    async with (
        serve(make_config(config())) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
        mains_feed(client, rt, [5.0, 5.0, 5.0]),
    ):
        port = await backend_port(rt)
        # The wallbox stamps what it takes in evpilot's clock: validTo is in that clock too.
        async with wallbox(port, clock=rt.clock.now) as cp:
            await cp.status("Preparing")
            await cp.wait_profile(lambda p: True)
            first = len(cp.live())
            # Four renewals after the first live profile: a loaded machine may take longer, not fail.
            await until(lambda: len(cp.live()) >= first + 4, timeout=60)
            live = cp.live()[first - 1 :]
            for prev, nxt in itertools.pairwise(live):
                valid_to = parse_time(prev.profile["validTo"])
                valid_from = parse_time(prev.profile["validFrom"])
                assert valid_to is not None and valid_from is not None
                # validTo is the engine's lease end: a lease after it was sent (whole seconds on the wire).
                assert LEASE_S - 1.5 <= valid_to - valid_from <= LEASE_S + 1.5
                # The renewal was sent before the lease ran out ...
                renewed = parse_time(nxt.profile["validFrom"])
                assert renewed is not None and renewed <= valid_to
                # ... and taken before it ran out: the wallbox never fell back (validTo is cut to whole
                # seconds, so the lease ends within the second after it).
                assert nxt.at < valid_to + 1.0
            link = rt.links["w7"]
            assert isinstance(link, OcppLink) and link.pushed is not None
            assert link.pushed.valid_to - link.pushed.sent_at == pytest.approx(LEASE_S, abs=TICK_S + 0.2)


async def test_unknown_identities_are_refused_at_the_handshake() -> None:
    async with serve(make_config(config())) as (base, rt):
        port = await backend_port(rt)
        with pytest.raises(InvalidStatus) as err:
            async with connect(f"ws://127.0.0.1:{port}/ocpp/STRANGER", subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
                pass
        assert err.value.response.status_code == 404
        with pytest.raises(InvalidStatus):
            async with connect(f"ws://127.0.0.1:{port}/other/WALLBOX-7", subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
                pass
        # A known identity without the ocpp1.6 subprotocol: refused too.
        with pytest.raises(InvalidStatus) as err:
            async with connect(f"ws://127.0.0.1:{port}/ocpp/WALLBOX-7"):
                pass
        assert err.value.response.status_code == 400
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            (st,) = (await client.get("/api/ocpp/stations")).json()
        assert st["id"] == "WALLBOX-7" and st["connected"] is False and st["boot"] is None


async def test_accept_unknown_lists_them_as_unassigned() -> None:
    async with (
        serve(make_config(config(accept_unknown=True))) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        port = await backend_port(rt)
        async with wallbox(port, "STRANGER") as cp:
            await cp.status("Available")
            stations = {s["id"]: s for s in (await client.get("/api/ocpp/stations")).json()}
            st = stations["STRANGER"]
            assert st["assigned"] is False and st["connected"] is True and st["booted"] is True
            assert st["connectors"]["1"]["status"] == "Available" and st["connectors"]["1"]["charger"] is None
            assert stations["WALLBOX-7"]["assigned"] is True
            assert cp.profiles == []  # no charger: nothing to balance
        await until(lambda: not rt.ocpp.stations["STRANGER"].session if rt.ocpp else False)
        stations = {s["id"]: s for s in (await client.get("/api/ocpp/stations")).json()}
        assert stations["STRANGER"]["connected"] is False and stations["STRANGER"]["last_seen"] is not None


async def test_a_silent_wallbox_goes_stale_at_its_last_limit() -> None:
    async with (
        serve(make_config(config())) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
        mains_feed(client, rt, [5.0, 5.0, 5.0]),
    ):
        port = await backend_port(rt)
        async with wallbox(port) as cp:
            start = await cp.begin()
            meter_task = asyncio.create_task(metering(cp, [12.0], start.transaction_id))
            ch = rt.engine.chargers["w7"]
            try:
                await until(lambda: ch.currents == (12.0, 12.0, 12.0))
                assert ch.allocation_source != "stale:charger"
            finally:
                meter_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await meter_task
            # No more MeterValues (the wallbox still answers): past meter_timeout_s it is stale.
            await until(lambda: ch.allocation_source is sources.STALE_CHARGER, timeout=10)
            doc = (await client.get("/api/chargers/w7")).json()
            assert doc["limit_source"] == "stale:charger"


async def test_disabling_an_ocpp_charger_is_the_local_command_plus_change_availability() -> None:
    # As for a local charger: `set_enabled` (kept) and no current at once; the wallbox is also told
    # Inoperative, and gets a 0 A profile whatever it answers (a busy one would say Scheduled).
    async with (
        serve(make_config(config())) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
        mains_feed(client, rt, [5.0, 5.0, 5.0]),
        wallbox(await backend_port(rt)) as cp,
    ):
        await cp.status("Preparing")
        start = await cp.call(
            call.StartTransaction(connector_id=1, id_tag="CARD-1", meter_start=1000, timestamp=now_iso())
        )
        tx = start.transaction_id
        await cp.status("Charging")
        meter_task = asyncio.create_task(metering(cp, [10.0], tx))
        try:
            await cp.wait_profile(lambda p: p.get("transactionId") == tx and _limit(p) == 16.0)
            for enabled, kind, want in ((False, "Inoperative", 0.0), (True, "Operative", 16.0)):
                seen = len(cp.live())
                r = await client.put("/api/chargers/w7/enabled", json={"enabled": enabled})
                assert r.status_code == 200, r.text
                doc = r.json()
                assert doc["enabled"] is enabled
                assert doc["ocpp"] == {"action": "ChangeAvailability", "status": "Accepted"}
                assert cp.commands[-1] == ("ChangeAvailability", {"connector_id": 1, "type": kind})
                applied = [c for c in rt.recent_commands if c["command"] == "set_enabled"][-1]
                assert (applied["origin"], applied["fields"]["enabled"]) == ("rest:native", enabled)
                await until(lambda w=want, n=seen: any(_limit(r.profile) == w for r in cp.live()[n:]))
        finally:
            meter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await meter_task


async def test_remote_commands_reach_the_wallbox() -> None:
    async with (
        serve(make_config(config())) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        # Not connected yet: the engine takes the command, the wallbox cannot.
        r = await client.post("/api/chargers/w7/unlock")
        assert r.status_code == 200 and r.json()["ocpp"]["status"] == "Offline"
        port = await backend_port(rt)
        async with wallbox(port) as cp:
            await cp.status("Preparing")
            r = await client.post("/api/chargers/w7/start", json={"id_tag": "FLEET-9"})
            assert r.status_code == 200, r.text
            assert r.json()["ocpp"] == {"action": "RemoteStartTransaction", "status": "Accepted"}
            assert cp.commands[-1] == ("RemoteStartTransaction", {"id_tag": "FLEET-9", "connector_id": 1})
            r = await client.post("/api/chargers/w7/stop")
            assert r.json()["ocpp"]["status"] == "NoTransaction"
            start = await cp.call(
                call.StartTransaction(connector_id=1, id_tag="FLEET-9", meter_start=0, timestamp=now_iso())
            )
            r = await client.post("/api/chargers/w7/stop")
            assert r.json()["ocpp"] == {"action": "RemoteStopTransaction", "status": "Accepted"}
            assert cp.commands[-1] == ("RemoteStopTransaction", {"transaction_id": start.transaction_id})
            r = await client.post("/api/chargers/w7/unlock")
            assert r.json()["ocpp"] == {"action": "UnlockConnector", "status": "Unlocked"}
            r = await client.put("/api/chargers/w7/enabled", json={"enabled": False})
            assert r.json()["ocpp"]["status"] == "Accepted"
            assert cp.commands[-1] == ("ChangeAvailability", {"connector_id": 1, "type": "Inoperative"})
            r = await client.post("/api/chargers/w7/start", json={"id_tag": "X" * 21})
            assert r.status_code == 400 and r.json()["problems"][0]["field"] == "id_tag"


def test_meter_values_parse_per_phase_currents_energy_and_power() -> None:
    entry = {
        "timestamp": "2026-01-01T00:00:00Z",
        "sampled_value": [
            {"value": "12.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
            {"value": "7.1", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
            {"value": "231", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
            {"value": "3.3", "measurand": "Power.Active.Import", "unit": "kW"},
            {"value": "9", "measurand": "Current.Import", "location": "EV"},
            {"value": "oops", "measurand": "Current.Import", "phase": "L1"},
        ],
    }
    s = parse_meter_value(entry)
    assert s.at == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert s.energy_kwh == 12.5 and s.currents == (None, 7.1, None) and s.voltages == (231.0, None, None)
    assert s.power_w == 3300.0
    wh = parse_meter_value({"sampled_value": [{"value": "1500"}]})
    assert wh.energy_kwh == 1.5 and wh.at is None


def test_a_profile_is_one_absolute_period_in_amps() -> None:
    p = charging_profile(13, 1, "TxProfile", 10.04, 3, 1_800_000_000.0, 1_800_000_005.0, 42)
    assert p == {
        "chargingProfileId": 13,
        "stackLevel": 1,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute",
        "validFrom": "2027-01-15T08:00:00Z",
        "validTo": "2027-01-15T08:00:05Z",
        "transactionId": 42,
        "chargingSchedule": {
            "startSchedule": "2027-01-15T08:00:00Z",
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0, "numberPhases": 3}],
        },
    }


async def test_a_reconnecting_wallbox_gets_its_profiles_again() -> None:
    async with (
        serve(make_config(config())) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
        mains_feed(client, rt, [5.0, 5.0, 5.0]),
    ):
        port = await backend_port(rt)
        async with wallbox(port) as cp:
            await cp.status("Preparing")
            await cp.wait_profile(lambda p: True)
        assert rt.ocpp is not None
        station = rt.ocpp.stations["WALLBOX-7"]
        await until(lambda: station.session is None)
        # Back without a new BootNotification (it booted earlier in this run): profiles resume, the
        # standing fallback first, since a restarted wallbox may have lost it.
        async with wallbox(port, boot=False) as cp:
            await until(lambda: len(cp.profiles) >= 2, timeout=5)
            assert cp.profiles[0].profile["stackLevel"] == 0
            assert cp.profiles[1].profile["stackLevel"] == 1


async def test_charging_before_any_meter_values_counts_as_its_limit() -> None:
    async with (
        serve(make_config(config())) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
        mains_feed(client, rt, [5.0, 5.0, 5.0]),
    ):
        port = await backend_port(rt)
        async with wallbox(port) as cp:
            await cp.status("Preparing")
            ch = rt.engine.chargers["w7"]
            await until(lambda: ch.letter == "B" and ch.allocation_source != "stale:charger")
            await cp.status("Charging")
            # Drawing, but how much is not known yet: stale, so the engine counts its limit.
            await until(lambda: ch.letter == "C" and ch.allocation_source is sources.STALE_CHARGER)
            await cp.meter(8.0, 100)
            await until(lambda: ch.allocation_source != "stale:charger" and ch.currents == (8.0, 8.0, 8.0))


async def test_a_changed_limit_asks_the_wallbox_for_meter_values() -> None:
    async with (
        serve(make_config(config())) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
        mains_feed(client, rt, [5.0, 5.0, 5.0]) as house,
    ):
        port = await backend_port(rt)
        async with wallbox(port) as cp:
            start = await cp.begin()
            amps = [6.0]  # the car takes the 6 A offered in Preparing, then what it is given
            meter_task = asyncio.create_task(metering(cp, amps, start.transaction_id))
            ch = rt.engine.chargers["w7"]
            try:
                await cp.wait_profile(lambda p: _limit(p) == 16.0)
                amps[0] = 16.0
                await until(lambda: ch.currents == (16.0, 16.0, 16.0))
            finally:
                meter_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await meter_task
            cp.trigger_amps = 11.0  # the car follows the lower limit; the wallbox reports only when asked
            house[:] = [14.0, 14.0, 14.0]
            await cp.wait_profile(lambda p: _limit(p) < 16.0)
            await until(lambda: ("TriggerMessage", {"requested_message": "MeterValues"}) in cp.commands)
            await until(lambda: ch.currents == (11.0, 11.0, 11.0))


async def test_a_wallbox_that_refuses_limits_is_retried_with_backoff_and_counted_at_its_last_one() -> None:
    async with (
        serve(make_config(config())) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
        mains_feed(client, rt, [5.0, 5.0, 5.0]) as house,
    ):
        port = await backend_port(rt)
        async with wallbox(port) as cp:
            start = await cp.begin()
            amps = [0.0]
            meter_task = asyncio.create_task(metering(cp, amps, start.transaction_id))
            ch = rt.engine.chargers["w7"]
            link = rt.links["w7"]
            assert isinstance(link, OcppLink)
            try:
                await cp.wait_profile(lambda p: _limit(p) == 16.0)
                amps[0] = 16.0
                await until(lambda: ch.currents == (16.0, 16.0, 16.0))
                # The wallbox refuses every limit from now on; the house grows so 16 A no longer fits.
                cp.refuse = True
                house[:] = [14.0, 14.0, 14.0]
                await until(lambda: link.failed_in_row >= 4, timeout=30)
                refused = [at for at, _ in cp.refused]
                gaps = [b - a for a, b in itertools.pairwise(refused)]
                # Capped exponential backoff: each wait is about twice the one before, not one per tick.
                assert len(gaps) >= 3 and all(b > 1.5 * a for a, b in itertools.pairwise(gaps[:3])), gaps
                # Meanwhile the engine counts the wallbox at what it may still apply: its last acknowledged
                # limit until that lease ends, then its fallback profile's safe current.
                assert ch.held in (16.0, 6.0)
                await until(lambda: ch.held == 6.0)
                (st,) = (await client.get("/api/ocpp/stations")).json()
                conn = st["connectors"]["1"]
                assert conn["failed_in_row"] >= 4 and conn["last_status"] == "Rejected"
                assert conn["next_retry_in_s"] is not None and 0.0 <= conn["next_retry_in_s"] <= 60.0
                assert conn["held_a"] == 6.0 and conn["profile"]["limit"] == 16.0
                # The house the engine sees includes what the wallbox may draw on top of what it is
                # subtracted for it (at most the lowest limit sent since its reading: 0 A by now).
                site = rt.engine.last
                assert site is not None and site.base_load[0] >= 14.0 + 6.0 - 0.01
                # It takes limits again: at the next retry the backoff ends.
                cp.refuse = False
                await until(lambda: link.failed_in_row == 0, timeout=70)
                assert ch.held == 0.0 or link.held(rt.engine.last_tick or 0.0) is None
                (st,) = (await client.get("/api/ocpp/stations")).json()
                conn = st["connectors"]["1"]
                assert conn["failed_in_row"] == 0 and conn["next_retry_in_s"] is None
                assert conn["held_a"] is None
            finally:
                meter_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await meter_task


async def _sessions(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await client.get("/api/sessions", params={"charger": "w7"})
    assert r.status_code == 200, r.text
    sessions: list[dict[str, Any]] = r.json()
    return sessions


async def test_a_remote_or_local_stop_closes_the_session_with_the_meter_energy(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        async with (
            serve(make_config(config()), store=store) as (base, rt),
            httpx.AsyncClient(base_url=base, timeout=5) as client,
        ):
            port = await backend_port(rt)
            ch = rt.engine.chargers["w7"]
            async with wallbox(port) as cp:
                await cp.status("Preparing")
                start = await cp.call(
                    call.StartTransaction(
                        connector_id=1, id_tag="CARD-1", meter_start=2000, timestamp=now_iso()
                    )
                )
                await cp.status("Charging")
                await cp.meter(8.0, 2100, start.transaction_id)
                await until(lambda: ch.session is not None and ch.currents[0] == 8.0)
                # A stop through the native API: RemoteStopTransaction, and the wallbox's StopTransaction.
                r = await client.post("/api/chargers/w7/stop")
                assert r.json()["ocpp"] == {"action": "RemoteStopTransaction", "status": "Accepted"}
                await cp.call(
                    call.StopTransaction(
                        meter_stop=2750,
                        timestamp=now_iso(),
                        transaction_id=start.transaction_id,
                        reason="Remote",
                    )
                )
                await cp.status("Finishing")
                await until(lambda: ch.session is None)
                (rec,) = await _sessions(client)
                assert rec["energy_kwh"] == pytest.approx(0.75) and rec["stop_reason"] == "user"
                # Still plugged in: no new session until the wallbox starts a transaction again.
                await asyncio.sleep(4 * TICK_S)
                assert ch.session is None
                # The wallbox starts one of its own (a card at the wallbox) and stops it itself.
                again = await cp.call(
                    call.StartTransaction(
                        connector_id=1, id_tag="CARD-2", meter_start=2750, timestamp=now_iso()
                    )
                )
                await cp.status("Charging")
                await until(lambda: ch.session is not None)
                await cp.call(
                    call.StopTransaction(
                        meter_stop=3000, timestamp=now_iso(), transaction_id=again.transaction_id
                    )
                )
                await until(lambda: ch.session is None)
                recs = await _sessions(client)
                assert len(recs) == 2
                assert recs[0]["energy_kwh"] == pytest.approx(0.25) and recs[0]["stop_reason"] == "user"
    finally:
        store.close()


async def test_a_transaction_survives_an_evpilot_restart_and_its_stop_closes_the_session(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        async with serve(make_config(config()), store=store) as (base, rt):
            port = await backend_port(rt)
            ch = rt.engine.chargers["w7"]
            async with wallbox(port) as cp:
                await cp.status("Preparing")
                start = await cp.call(
                    call.StartTransaction(
                        connector_id=1, id_tag="CARD-1", meter_start=5000, timestamp=now_iso()
                    )
                )
                tx = start.transaction_id
                await cp.status("Charging")
                await cp.meter(8.0, 5200, tx)
                await until(lambda: ch.session is not None and ch.currents[0] == 8.0)
                session_id = ch.session.id if ch.session is not None else None
        # evpilot restarts while the wallbox goes on charging.
        async with (
            serve(make_config(config()), store=store) as (base, rt),
            httpx.AsyncClient(base_url=base, timeout=5) as client,
        ):
            port = await backend_port(rt)
            ch = rt.engine.chargers["w7"]
            assert ch.session is not None and ch.session.id == session_id
            stations = (await client.get("/api/ocpp/stations")).json()
            assert stations[0]["connectors"]["1"]["transaction_id"] == tx
            async with wallbox(port) as cp:
                await cp.status("Charging")
                await cp.meter(8.0, 5600, tx)
                # The live profile is a TxProfile for the transaction the wallbox still runs.
                await cp.wait_profile(lambda p: p.get("transactionId") == tx)
                assert ch.session is not None and ch.session.id == session_id
                await cp.call(
                    call.StopTransaction(
                        meter_stop=6500, timestamp=now_iso(), transaction_id=tx, reason="EVDisconnected"
                    )
                )
                await cp.status("Available")
                await until(lambda: ch.session is None)
                (rec,) = await _sessions(client)
                assert rec["id"] == session_id and rec["stop_reason"] == "ev_disconnected"
                assert rec["energy_kwh"] == pytest.approx(1.5)
                stations = (await client.get("/api/ocpp/stations")).json()
                assert stations[0]["connectors"]["1"]["transaction_id"] is None
                # A new transaction gets a fresh id.
                await cp.status("Preparing")
                new = await cp.call(
                    call.StartTransaction(
                        connector_id=1, id_tag="CARD-1", meter_start=6500, timestamp=now_iso()
                    )
                )
                assert new.transaction_id != tx
    finally:
        store.close()
