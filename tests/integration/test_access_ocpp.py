"""rfid: remote: a swipe's uid goes to the OCPP backend's Authorize (real sockets, an `ocpp` library CSMS)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.helpers import free_port, make_config, serve
from tests.integration.test_ocpp_cp import SPEED, ocpp_config
from tests.ocpp_backend import Backend


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend(free_port())
    await b.start()
    yield b
    await b.stop()


async def test_remote_swipes_are_authorized_by_the_backend(backend: Backend) -> None:
    backend.invalid_tags.add("DEADBEEF")
    config = ocpp_config(backend.port)
    config["chargers"] = [{"id": "cp1", "rfid": "remote"}]
    async with (
        serve(make_config(config), speed=SPEED) as (base, rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        await backend.station("EVPILOT-01")
        await c.post("/api/sim/chargers/cp1/plug", json={"soc": 20})
        bad = await c.post("/api/chargers/cp1/swipe", json={"uid": "de:ad:be:ef"})
        assert bad.status_code == 200 and bad.json()["action"] == "remote"
        await backend.wait(lambda: backend.of("Authorize") == [{"id_tag": "DEADBEEF"}])
        await backend.wait(lambda: rt.charger("cp1").paused)
        assert backend.of("StartTransaction") == []
        await c.post("/api/sim/chargers/cp1/unplug")
        await backend.wait(lambda: not rt.charger("cp1").plugged)
        await c.post("/api/sim/chargers/cp1/plug", json={"soc": 20})
        ok = await c.post("/api/chargers/cp1/swipe", json={"uid": "04A2B3C4"})
        assert ok.json()["action"] == "remote"
        await backend.wait(lambda: backend.of("StartTransaction"))
        assert backend.of("StartTransaction")[0]["id_tag"] == "04A2B3C4"
        session = rt.charger("cp1").session
        assert session is not None and session.auth_method == "remote" and session.id_tag == "04A2B3C4"


async def test_remote_swipes_are_authorized_by_a_2_0_1_csms(backend: Backend) -> None:
    backend.invalid_tags.add("DEADBEEF")
    config = ocpp_config(backend.port, version="2.0.1")
    config["chargers"] = [{"id": "cp1", "rfid": "remote"}]
    async with (
        serve(make_config(config), speed=SPEED) as (base, rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        await backend.station("EVPILOT-01")
        await c.post("/api/sim/chargers/cp1/plug", json={"soc": 20})
        bad = await c.post("/api/chargers/cp1/swipe", json={"uid": "de:ad:be:ef"})
        assert bad.status_code == 200 and bad.json()["action"] == "remote"
        token = {"id_token": "DEADBEEF", "type": "ISO14443"}
        await backend.wait(lambda: [a["id_token"] for a in backend.of("Authorize")] == [token])
        await backend.wait(lambda: rt.charger("cp1").paused)
        assert backend.of("TransactionEvent") == []
        await c.post("/api/sim/chargers/cp1/unplug")
        await backend.wait(lambda: not rt.charger("cp1").plugged)
        await c.post("/api/sim/chargers/cp1/plug", json={"soc": 20})
        ok = await c.post("/api/chargers/cp1/swipe", json={"uid": "04A2B3C4"})
        assert ok.json()["action"] == "remote"
        started = await backend.wait(lambda: backend.of("TransactionEvent"))
        assert started[0]["event_type"] == "Started"
        assert started[0]["id_token"] == {"id_token": "04A2B3C4", "type": "ISO14443"}
        assert backend.of("Authorize")[-1]["id_token"] == {"id_token": "04A2B3C4", "type": "ISO14443"}
        session = rt.charger("cp1").session
        assert session is not None and session.auth_method == "remote" and session.id_tag == "04A2B3C4"
