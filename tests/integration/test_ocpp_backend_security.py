"""evpilot's OCPP backend secured: basic auth (profile 1), wss:// (profile 2), refused handshakes and id tags
checked against the cards, with wallboxes built on the `ocpp` library over real sockets."""

from __future__ import annotations

import base64
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from ocpp.v16 import call
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from evpilot import cli
from evpilot.security import FREE_FAILURES, hash_password
from tests.helpers import make_config, self_signed, serve, write_config
from tests.integration.test_ocpp_backend import (
    _limit,
    backend_port,
    config,
    mains_feed,
    now_iso,
    until,
    wallbox,
)

PASSWORD = "s3cret-wallbox-7-key"


def basic(name: str, password: str) -> dict[str, str]:
    """The Authorization header a wallbox sends (built here, not with evpilot's helper)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def secured(driver: dict[str, Any], **server: Any) -> dict[str, Any]:
    data = config(**server)
    data["chargers"][0]["driver"].update(driver)
    return data


async def refused(url: str, **options: Any) -> Any:
    """The HTTP response that refused the WebSocket handshake."""
    with pytest.raises(InvalidStatus) as err:
        async with connect(url, subprotocols=["ocpp1.6"], **options):  # type: ignore[list-item]
            pass
    return err.value.response


async def test_profile_1_basic_auth_on_the_handshake(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with (
        serve(make_config(secured({"password": PASSWORD}))) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        port = await backend_port(rt)
        url = f"ws://127.0.0.1:{port}/ocpp/WALLBOX-7"
        no_creds = await refused(url)
        assert no_creds.status_code == 401
        assert no_creds.headers["WWW-Authenticate"].startswith("Basic realm=")
        wrong = basic("WALLBOX-7", "wrong-password")
        assert (await refused(url, additional_headers=wrong)).status_code == 401
        # The right password under another identity's name is not this station's.
        assert (await refused(url, additional_headers=basic("WALLBOX-8", PASSWORD))).status_code == 401
        assert (await refused(url, additional_headers={"Authorization": "Basic !!"})).status_code == 401
        assert rt.ocpp is not None and rt.ocpp.stations["WALLBOX-7"].session is None
        async with wallbox(port, headers=basic("WALLBOX-7", PASSWORD)) as cp:
            await cp.status("Available")
            await until(lambda: rt.engine.chargers["w7"].letter == "A")
            await cp.wait_profile(lambda p: True)
        health = (await client.get("/api/health")).json()["ocpp_server"]
        assert health["tls"] is False and health["port"] == port
        assert health["refused"] == {"no_credentials": 1, "bad_credentials": 3}
        (st,) = (await client.get("/api/ocpp/stations")).json()
        assert st["secured"] is True and st["refused"] == 4 and st["boot"] is not None
        assert st["last_refused"]["reason"] == "bad_credentials"
        assert st["last_refused"]["client"] == "127.0.0.1"
    refusals = [r.getMessage() for r in caplog.records if "refused 'WALLBOX-7'" in r.getMessage()]
    assert len(refusals) == 4 and "bad_credentials" in refusals[-1]
    assert not any(PASSWORD in r.getMessage() or "wrong-password" in r.getMessage() for r in caplog.records)


async def test_a_hashed_password_and_the_throttle() -> None:
    driver = {"password_hash": hash_password(PASSWORD)}
    async with serve(make_config(secured(driver))) as (_base, rt):
        port = await backend_port(rt)
        url = f"ws://127.0.0.1:{port}/ocpp/WALLBOX-7"
        async with wallbox(port, headers=basic("WALLBOX-7", PASSWORD)):
            pass
        for _ in range(FREE_FAILURES + 1):
            assert (await refused(url, additional_headers=basic("WALLBOX-7", "guess"))).status_code == 401
        # Now the address must wait before anything it sends under this identity is checked.
        throttled = await refused(url, additional_headers=basic("WALLBOX-7", PASSWORD))
        assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
        assert rt.ocpp is not None
        assert rt.ocpp.refused["bad_credentials"] == FREE_FAILURES + 1
        assert rt.ocpp.refused["throttled"] == 1


async def test_profile_2_wss_with_basic_auth(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    data = secured({"password": PASSWORD}, host="0.0.0.0", tls={"cert": str(cert), "key": str(key)})
    trust = ssl.create_default_context(cafile=str(cert))
    async with (
        serve(make_config(data)) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        port = await backend_port(rt)
        async with wallbox(port, headers=basic("WALLBOX-7", PASSWORD), tls=trust) as cp:
            got = await cp.call(call.Heartbeat())
            assert got.current_time
        response = await refused(f"wss://127.0.0.1:{port}/ocpp/WALLBOX-7", ssl=trust)
        assert response.status_code == 401
        # Plain ws:// is not served on a wss:// port.
        with pytest.raises(InvalidMessage):
            async with connect(
                f"ws://127.0.0.1:{port}/ocpp/WALLBOX-7",
                subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                additional_headers=basic("WALLBOX-7", PASSWORD),
                open_timeout=5,
            ):
                pass
        health = (await client.get("/api/health")).json()["ocpp_server"]
        assert health["tls"] is True and health["refused"]["no_credentials"] == 1


async def test_refused_handshakes_are_counted_by_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with (
        serve(make_config(config())) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        port = await backend_port(rt)
        assert (await refused(f"ws://127.0.0.1:{port}/ocpp/STRANGER")).status_code == 404
        assert (await refused(f"ws://127.0.0.1:{port}/elsewhere/WALLBOX-7")).status_code == 404
        with pytest.raises(InvalidStatus) as err:
            async with connect(f"ws://127.0.0.1:{port}/ocpp/WALLBOX-7"):
                pass
        assert err.value.response.status_code == 400
        # A station without a password needs none (and ignores one it is given).
        async with wallbox(port, headers=basic("WALLBOX-7", "anything")):
            pass
        health = (await client.get("/api/health")).json()["ocpp_server"]
        assert health["refused"] == {"path": 1, "unknown_id": 1, "subprotocol": 1}
        (st,) = (await client.get("/api/ocpp/stations")).json()
        assert st["secured"] is False and st["refused"] == 1
        assert st["last_refused"]["reason"] == "subprotocol"
        assert "STRANGER" not in {s["id"] for s in (await client.get("/api/ocpp/stations")).json()}
    lines = [r.getMessage() for r in caplog.records if r.name == "evpilot.ocpp"]
    assert any("refused 'STRANGER' from 127.0.0.1: unknown_id (HTTP 404)" in m for m in lines)
    assert any("refused a wrong path from 127.0.0.1: path" in m for m in lines)
    assert any("refused 'WALLBOX-7' from 127.0.0.1: subprotocol (HTTP 400)" in m for m in lines)


def two_wallboxes(require_auth: bool) -> dict[str, Any]:
    data = config()
    data["chargers"][0]["require_auth"] = require_auth
    data["chargers"].append(
        {"id": "w8", "max_current": 16, "driver": {"type": "ocpp", "id": "WALLBOX-8", "connector": 1}}
    )
    return data


async def test_id_tags_are_checked_against_the_cards() -> None:
    async with (
        serve(make_config(two_wallboxes(require_auth=True))) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
        mains_feed(client, rt, [2.0, 2.0, 2.0]),
    ):
        now = rt.clock.now()
        cards = [
            {"uid": "04A2B3C4", "name": "Anna", "expires_at": now + 86400},
            {"uid": "04A2B3C5", "chargers": ["w8"]},
            {"uid": "04A2B3C6", "expires_at": now - 60},
            {"uid": "04A2B3C7", "chargers": ["w7"]},
        ]
        for card in cards:
            assert (await client.post("/api/cards", json=card)).status_code in (200, 201)
        port = await backend_port(rt)
        w7 = rt.engine.chargers["w7"]
        async with wallbox(port) as cp, wallbox(port, "WALLBOX-8") as cp8:
            expected = {
                "04A2B3C4": "Accepted",
                "04a2b3c4": "Accepted",  # tags are normalised as the cards are
                "04A2B3C5": "Blocked",  # for w8 only
                "04A2B3C6": "Expired",
                "04A2B3C7": "Accepted",
                "0BADC0DE": "Invalid",
                "not-a-card": "Invalid",
            }
            for tag, status in expected.items():
                got = await cp.call(call.Authorize(id_tag=tag))
                assert got.id_tag_info["status"] == status, tag
            # An accepted card with an expiry tells the wallbox when it expires (for its cache).
            got = await cp.call(call.Authorize(id_tag="04A2B3C4"))
            expiry = datetime_of(got.id_tag_info["expiry_date"])
            assert abs(expiry - (time.time() + 86400)) < 60
            # w8 needs no authorization: any tag is accepted there.
            got = await cp8.call(call.Authorize(id_tag="not-a-card"))
            assert got.id_tag_info == {"status": "Accepted"}

            await cp.status("Preparing")
            await until(lambda: w7.letter == "B")
            bad = await cp.call(
                call.StartTransaction(connector_id=1, id_tag="0BADC0DE", meter_start=0, timestamp=now_iso())
            )
            assert bad.id_tag_info["status"] == "Invalid" and isinstance(bad.transaction_id, int)
            # The wallbox charges anyway: evpilot still allocates it nothing.
            await cp.status("Charging")
            await cp.wait_profile(lambda p: p.get("transactionId") == bad.transaction_id and _limit(p) == 0.0)
            assert not w7.authorized
            await cp.call(
                call.StopTransaction(meter_stop=0, timestamp=now_iso(), transaction_id=bad.transaction_id)
            )
            await cp.status("Preparing")
            ok = await cp.call(
                call.StartTransaction(connector_id=1, id_tag="04a2b3c7", meter_start=0, timestamp=now_iso())
            )
            assert ok.id_tag_info["status"] == "Accepted"
            tx = ok.transaction_id
            await cp.status("Charging")
            await cp.wait_profile(lambda p: p.get("transactionId") == tx and _limit(p) > 0)
            assert w7.authorized and w7.session is not None
            assert (w7.session.id_tag, w7.session.auth_method) == ("04A2B3C7", "card")
            doc = (await client.get("/api/chargers/w7/access")).json()
            assert doc["card"] == "04A2B3C7"
            stop = await cp.call(
                call.StopTransaction(
                    meter_stop=100, timestamp=now_iso(), transaction_id=tx, id_tag="04A2B3C7"
                )
            )
            assert stop.id_tag_info["status"] == "Accepted"
            await cp.status("Finishing")
            # The transaction is over: w7 waits for the next accepted card.
            await cp.wait_profile(
                lambda p: p["chargingProfilePurpose"] == "TxDefaultProfile" and _limit(p) == 0
            )
            assert not w7.authorized
            # Both ends (the refused transaction's too) and the start went through the commands,
            # origin ocpp (GET /api/commands).
            tags = [
                (c["origin"], c["fields"]["tag"], c["fields"]["method"])
                for c in rt.recent_commands
                if c["command"] == "set_ocpp_tag" and c["fields"]["charger"] == "w7"
            ]
            assert tags == [("ocpp", None, None), ("ocpp", "04A2B3C7", "card"), ("ocpp", None, None)]

            # On w8 (no authorization) any tag starts, and the session records it as free.
            w8 = rt.engine.chargers["w8"]
            await cp8.status("Preparing")
            await until(lambda: w8.letter == "B")
            free = await cp8.call(
                call.StartTransaction(connector_id=1, id_tag="FLEET-CARD", meter_start=0, timestamp=now_iso())
            )
            assert free.id_tag_info == {"status": "Accepted"}
            await until(lambda: w8.session is not None and w8.session.id_tag == "FLEET-CARD")
            assert w8.session is not None and w8.session.auth_method == "free"


async def test_a_remote_start_through_evpilot_is_accepted_on_a_charger_that_needs_a_card() -> None:
    async with (
        serve(make_config(two_wallboxes(require_auth=True))) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        port = await backend_port(rt)
        w7 = rt.engine.chargers["w7"]
        async with wallbox(port) as cp:
            await cp.status("Preparing")
            await until(lambda: w7.letter == "B")
            r = await client.post("/api/chargers/w7/start", json={"id_tag": "DEPOT-OPS"})
            assert r.json()["ocpp"] == {"action": "RemoteStartTransaction", "status": "Accepted"}
            assert cp.commands[-1] == ("RemoteStartTransaction", {"id_tag": "DEPOT-OPS", "connector_id": 1})
            # The wallbox authorizes the tag it was given, then starts with it.
            assert (await cp.call(call.Authorize(id_tag="DEPOT-OPS"))).id_tag_info["status"] == "Accepted"
            start = await cp.call(
                call.StartTransaction(connector_id=1, id_tag="DEPOT-OPS", meter_start=0, timestamp=now_iso())
            )
            assert start.id_tag_info["status"] == "Accepted"
            await until(lambda: w7.session is not None and w7.session.id_tag == "DEPOT-OPS")
            assert w7.session is not None and w7.session.auth_method == "api" and w7.authorized
            # The tag was for that one start: presented again it is an unknown card.
            assert (await cp.call(call.Authorize(id_tag="DEPOT-OPS"))).id_tag_info["status"] == "Invalid"


def datetime_of(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_bad_ocpp_certificate_stops_the_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, _key = self_signed(tmp_path)
    data = config(tls={"cert": str(cert), "key": str(tmp_path / "missing.pem")})
    path = write_config(tmp_path / "evpilot.yaml", data)
    code = cli.main(["run", "--config", str(path), "--data-dir", str(tmp_path / "data")])
    assert code == 2
    assert "config error: ocpp_server.tls:" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


async def test_open_stations_on_a_reachable_address_are_warned(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    data = two_wallboxes(require_auth=False)
    data["ocpp_server"]["host"] = "0.0.0.0"
    data["ocpp_server"]["allow_plain_auth"] = True
    data["chargers"][1]["driver"]["password"] = PASSWORD
    async with serve(make_config(data)) as (_base, rt):
        await backend_port(rt)
    (line,) = [r.getMessage() for r in caplog.records if "without a password" in r.getMessage()]
    assert "station(s) WALLBOX-7 connect without a password" in line
