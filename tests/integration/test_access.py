"""Access to charging through real HTTP: cards, swipes per RFID mode, pending authorization, switch, lock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from evpilot.control.clock import ManualClock
from evpilot.control.runtime import Runtime
from evpilot.core.access import Card
from evpilot.store.sqlite import Store
from tests.helpers import make_config, serve

Doc = dict[str, Any]
UID = "04A2B3C4"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store in a temporary file (sessions are listed from the store)."""
    db = Store(tmp_path / "db.sqlite")
    yield db
    db.close()


def config(**charger: Any) -> Any:
    return make_config(
        {"sim": {"cars": [], "start_tod_h": 10.0}, "chargers": [{"id": "cp1", **charger}, {"id": "cp2"}]}
    )


async def until(c: httpx.AsyncClient, path: str, ok: Callable[[Any], bool], what: str) -> Any:
    """Poll `path` until `ok` holds for its JSON (fails after 10 s of real time)."""
    doc: Any = None
    for _ in range(500):
        doc = (await c.get(path)).json()
        if ok(doc):
            return doc
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: last {path} answer {doc}")


def charging(doc: Doc) -> bool:
    return bool(doc["charging"])


async def plug(c: httpx.AsyncClient, cid: str = "cp1") -> None:
    r = await c.post(f"/api/sim/chargers/{cid}/plug", json={"soc": 20})
    assert r.status_code == 200, r.text


async def test_cards_api_normalises_validates_and_caps_at_100() -> None:
    async with (
        serve(config(rfid="enable_all"), speed=20) as (base, rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        r = await c.post("/api/cards", json={"uid": "04:a2:b3:c4", "name": "Anna", "chargers": ["cp1"]})
        assert r.status_code == 201 and r.json()["uid"] == UID
        assert (await c.get("/api/cards/04a2b3c4")).json()["name"] == "Anna"
        bad = await c.post("/api/cards", json={"uid": "xyz"})
        assert bad.status_code == 400 and bad.json()["problems"][0]["field"] == "uid"
        unknown = await c.post("/api/cards", json={"uid": "11223344", "chargers": ["nope"]})
        assert unknown.status_code == 400 and len(rt.access.cards) == 1
        for i in range(99):
            assert (await c.post("/api/cards", json={"uid": f"{i:08X}"})).status_code == 201
        full = await c.post("/api/cards", json={"uid": "FFFFFFFF"})
        assert full.status_code == 400 and "100" in full.text
        assert len((await c.get("/api/cards")).json()) == 100
        assert (await c.delete(f"/api/cards/{UID}")).json() == {"deleted": 1}
        assert (await c.delete(f"/api/cards/{UID}")).status_code == 404
        assert (await c.delete("/api/cards")).json() == {"deleted": 99}


async def test_cards_survive_a_restart(tmp_path: Any) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        async with (
            serve(config(rfid="enable_all"), store=store) as (base, _),
            httpx.AsyncClient(base_url=base) as c,
        ):
            await c.post("/api/cards", json={"uid": UID, "energy_kwh": 5})
    finally:
        store.close()
    store = Store(tmp_path / "db.sqlite")
    try:
        assert store.schema_version >= 5
        async with serve(config(rfid="enable_all"), store=store) as (base, rt):
            assert rt.access.cards[UID].energy_kwh == 5
    finally:
        store.close()


async def test_enable_all_swipe_after_plugging_starts_and_records_the_card(store: Store) -> None:
    async with (
        serve(config(rfid="enable_all"), speed=20, store=store) as (base, _rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        await c.post("/api/cards", json={"uid": UID})
        await plug(c)
        waiting = await until(c, "/api/chargers/cp1", lambda d: d["plugged"], "plugged")
        await asyncio.sleep(0.3)
        doc = (await c.get("/api/chargers/cp1")).json()
        assert doc["work_state"] == "charger_insert" and not doc["charging"], waiting
        refused = await c.post("/api/chargers/cp1/swipe", json={"uid": "DEADBEEF"})
        assert refused.status_code == 403 and "unknown card" in refused.text
        ok = await c.post("/api/chargers/cp1/swipe", json={"uid": "04a2b3c4"})
        assert ok.status_code == 200 and ok.json()["action"] == "authorize"
        await until(c, "/api/chargers/cp1", charging, "charging after the swipe")
        await c.post("/api/sim/chargers/cp1/unplug")
        sessions = await until(c, "/api/sessions?charger=cp1", lambda s: len(s) == 1, "session record")
        assert sessions[0]["id_tag"] == UID and sessions[0]["auth_method"] == "card"


async def test_swipe_before_plugging_and_the_lapse() -> None:
    cfg = config(rfid="enable_all", authorization_timeout_s=10)
    async with serve(cfg, speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        await c.post("/api/cards", json={"uid": UID})
        assert (await c.post("/api/chargers/cp1/swipe", json={"uid": UID})).status_code == 200
        await plug(c)
        await until(c, "/api/chargers/cp1", charging, "charging: swiped before plugging")
        await c.post("/api/sim/chargers/cp1/unplug")
        await until(c, "/api/chargers/cp1", lambda d: not d["plugged"] and not d["authorized"], "unplugged")
        # A swipe and no car: the authorization lapses after authorization_timeout_s.
        await c.post("/api/chargers/cp1/swipe", json={"uid": UID})
        assert rt.charger("cp1").authorized
        await until(c, "/api/chargers/cp1", lambda d: not d["authorized"], "authorization lapsed")
        await plug(c)
        await asyncio.sleep(0.3)
        assert (await c.get("/api/chargers/cp1")).json()["work_state"] == "charger_insert"


async def test_enable_one_the_same_card_stops_and_unlocks_another_is_refused() -> None:
    cfg = config(rfid="enable_one", fixed_cable=False, lock="solenoid")
    async with serve(cfg, speed=20) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        await c.post("/api/cards", json={"uid": UID})
        await c.post("/api/cards", json={"uid": "11223344"})
        await plug(c)
        await c.post("/api/chargers/cp1/swipe", json={"uid": UID})
        await until(c, "/api/chargers/cp1", charging, "charging")
        access = (await c.get("/api/chargers/cp1/access")).json()
        assert access["lock"]["state"] == "locked" and access["card"] == UID
        other = await c.post("/api/chargers/cp1/swipe", json={"uid": "11223344"})
        assert other.status_code == 403 and "another card" in other.text
        done = await c.post("/api/chargers/cp1/swipe", json={"uid": UID})
        assert done.json()["action"] == "stop"
        await until(c, "/api/chargers/cp1", lambda d: not d["charging"], "stopped")
        await until(c, "/api/chargers/cp1/access", lambda d: d["lock"]["state"] == "unlocked", "unlocked")


async def test_learn_delete_and_delete_all_through_the_simulated_reader() -> None:
    async with serve(config(rfid="learn"), speed=20) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        await c.post("/api/sim/chargers/cp1/card", json={"uid": "04-a2-b3-c4"})
        await until(c, "/api/cards", lambda cards: [x["uid"] for x in cards] == [UID], "learned")
        assert (await c.put("/api/chargers/cp1/rfid", json={"mode": "delete"})).status_code == 200
        await c.post("/api/chargers/cp1/swipe", json={"uid": UID})
        assert (await c.get("/api/cards")).json() == []
        await c.post("/api/cards", json={"uid": UID})
        doc = (await c.put("/api/chargers/cp1/rfid", json={"mode": "delete_all"})).json()
        assert doc["rfid"] == "enable_all" and (await c.get("/api/cards")).json() == []
        bad = await c.put("/api/chargers/cp1/rfid", json={"mode": "sometimes"})
        assert bad.status_code == 400 and bad.json()["problems"][0]["field"] == "mode"


async def test_remote_without_ocpp_refuses_clearly() -> None:
    async with serve(config(rfid="remote"), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/api/chargers/cp1/swipe", json={"uid": UID})
        assert r.status_code == 403 and "ocpp" in r.text
        assert not rt.charger("cp1").authorized


async def test_free_and_api_methods_are_recorded(store: Store) -> None:
    async with (
        serve(config(require_auth=True), speed=20, store=store) as (base, _rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        await plug(c, "cp2")
        await plug(c)
        await c.post("/api/chargers/cp1/start", json={"id_tag": "app-user"})
        await until(c, "/api/chargers/cp1", charging, "charging after the API start")
        await until(c, "/api/chargers/cp2", charging, "cp2 charging")
        await c.post("/api/sim/chargers/cp1/unplug")
        await c.post("/api/sim/chargers/cp2/unplug")
        recs = await until(c, "/api/sessions", lambda s: len(s) == 2, "two records")
        methods = {r["charger_id"]: r["auth_method"] for r in recs}
        assert methods == {"cp1": "api", "cp2": "free"}


async def test_grid_relay_input_caps_the_site_at_4_2_kw() -> None:
    async with (
        serve(config(switch="grid_relay"), speed=20) as (base, rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        await plug(c)
        await until(c, "/api/chargers/cp1", lambda d: d["current"]["signaled"] > 10, "charging above 6 A")
        assert not rt.engine.grid_relay_open
        # The relay opens: the GPIO contact follows it.
        assert (await c.put("/api/sim/chargers/cp1/switch", json={"closed": False})).status_code == 200
        doc = await until(c, "/api/chargers/cp1", lambda d: d["limit_source"] == "grid_relay", "relay cap")
        assert rt.engine.grid_relay_open
        assert doc["current"]["signaled"] * 230 * 3 <= 4200 + 1
        # The same input through the API: closed lifts the cap.
        assert (await c.put("/api/chargers/cp1/switch", json={"closed": True})).status_code == 200
        assert not rt.engine.grid_relay_open
        await until(c, "/api/chargers/cp1", lambda d: d["current"]["signaled"] > 10, "relay closed")


async def test_access_switch_and_custom_inputs() -> None:
    async with (
        serve(config(switch="access_switch"), speed=20) as (base, _rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        await plug(c)
        await until(c, "/api/chargers/cp1", charging, "charging")
        await c.put("/api/chargers/cp1/switch", json={"closed": False})
        await until(c, "/api/chargers/cp1", lambda d: not d["charging"], "access switched off")
        assert (await c.get("/api/chargers/cp1")).json()["limit_source"] == "switch"
        await c.put("/api/chargers/cp1/switch", json={"closed": True})
        await until(c, "/api/chargers/cp1", charging, "access back on")
    async with (
        serve(config(switch="custom_switch"), speed=20) as (base, _rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        await c.put("/api/chargers/cp1/switch", json={"closed": True})
        doc = (await c.get("/api/chargers/cp1/access")).json()
        assert doc["switch"] == {"mode": "custom_switch", "closed": True, "access": True}
        bad = await c.put("/api/chargers/cp1/switch", json={"closed": "yes"})
        assert bad.status_code == 422


async def test_a_jammed_lock_never_lets_charging_start_and_a_fault_stops_it() -> None:
    cfg = config(fixed_cable=False, lock="motor")
    async with serve(cfg, speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        await c.put("/api/sim/chargers/cp1/lock", json={"jammed": True})
        await plug(c)
        await until(c, "/api/chargers/cp1/access", lambda d: d["lock"]["state"] == "fault", "lock fault")
        doc = (await c.get("/api/chargers/cp1")).json()
        assert not doc["charging"] and doc["limit_source"] == "lock"
        await c.put("/api/sim/chargers/cp1/lock", json={"jammed": False})
        await c.post("/api/sim/chargers/cp1/unplug")
        await until(c, "/api/chargers/cp1/access", lambda d: d["lock"]["state"] == "unlocked", "released")
        await plug(c)
        await until(c, "/api/chargers/cp1", charging, "charging once locked")
        # The lock opens while charging: a fault that stops charging.
        hw = rt.access.chargers["cp1"].actuator
        assert hw is not None
        hw.position = hw.target = False
        hw.jammed = True
        await until(c, "/api/chargers/cp1", lambda d: not d["charging"], "stopped by the lock fault")
        assert (await c.get("/api/chargers/cp1/access")).json()["lock"]["fault"] == "lock opened while locked"


async def test_schedule_window_is_a_cap_with_source_schedule() -> None:
    # The simulated day starts at 10:00: a window of 12:00-13:00 is closed.
    cfg = config(schedules=[{"start": "12:00", "stop": "13:00"}])
    async with serve(cfg, speed=20) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        await plug(c)
        doc = await until(c, "/api/chargers/cp1", lambda d: d["limit_source"] == "schedule", "schedule cap")
        assert not doc["charging"]
        assert (await c.get("/api/chargers/cp1/access")).json()["schedule_open"] is False


async def test_a_cards_energy_cap_holds_the_charger_with_source_card() -> None:
    async with (
        serve(config(rfid="enable_all"), speed=20) as (base, _rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        await c.post("/api/cards", json={"uid": UID, "energy_kwh": 0.02})
        await plug(c)
        await c.post("/api/chargers/cp1/swipe", json={"uid": UID})
        await until(c, "/api/chargers/cp1", charging, "charging")
        doc = await until(c, "/api/chargers/cp1", lambda d: d["limit_source"] == "card", "card energy cap")
        assert doc["session"]["energy_kwh"] >= 0.02
        await until(c, "/api/chargers/cp1", lambda d: not d["charging"], "stopped at the card's cap")


OTHER = "11223344"


async def test_enable_all_any_learned_card_disables_whoever_enabled_the_charger() -> None:
    # Seed 001: "Accept all learned cards for enabling/disabling": a swipe of any learned card
    # stops charging while the charger is enabled, also when the API enabled it.
    async with (
        serve(config(rfid="enable_all"), speed=20) as (base, rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        for uid in (UID, OTHER):
            await c.post("/api/cards", json={"uid": uid})
        await plug(c)
        await c.post("/api/chargers/cp1/start", json={"id_tag": "app-user"})
        await until(c, "/api/chargers/cp1", charging, "charging after the API start")
        r = await c.post("/api/chargers/cp1/swipe", json={"uid": OTHER})
        assert r.json()["action"] == "stop" and r.json()["access"]["authorized"] is False
        await until(c, "/api/chargers/cp1", lambda d: not d["charging"], "stopped by a card")
        assert (await c.post("/api/chargers/cp1/swipe", json={"uid": UID})).json()["action"] == "authorize"
        await until(c, "/api/chargers/cp1", charging, "charging again")
        assert (await c.post("/api/chargers/cp1/swipe", json={"uid": OTHER})).json()["action"] == "stop"
        await until(c, "/api/chargers/cp1", lambda d: not d["charging"], "stopped by another card")
        assert not rt.charger("cp1").authorized


async def test_every_access_change_is_a_command_with_its_origin() -> None:
    async with (
        serve(config(rfid="enable_all", switch="smart_solar_button"), speed=20) as (base, rt),
        httpx.AsyncClient(base_url=base) as c,
    ):
        await c.post("/api/cards", json={"uid": "04:a2:b3:c4", "chargers": ["cp1"]})
        await c.post("/api/chargers/cp1/swipe", json={"uid": UID})
        await c.put("/api/chargers/cp1/switch", json={"closed": True})
        await c.post("/api/sim/chargers/cp1/card", json={"uid": UID})
        await until(c, "/api/commands", lambda log: log[-1]["origin"] == "reader", "the reader's swipe")
        await c.put("/api/chargers/cp1/rfid", json={"mode": "learn"})
        await c.delete(f"/api/cards/{UID}")
        log = [
            (x["origin"], x["command"], x["fields"])
            for x in (await c.get("/api/commands")).json()
            if x["origin"] != "timer"
        ]
        assert log == [
            (
                "rest:native",
                "learn_card",
                {"uid": UID, "name": "", "chargers": ["cp1"], "expires_at": None, "energy_kwh": None},
            ),
            ("rest:native", "swipe", {"charger": "cp1", "uid": UID}),
            ("rest:native", "set_switch", {"charger": "cp1", "closed": True}),
            ("rest:native", "set_site_mode", {"mode": "solar"}),
            ("reader", "swipe", {"charger": "cp1", "uid": UID}),
            ("rest:native", "set_rfid_mode", {"charger": "cp1", "mode": "learn"}),
            ("rest:native", "delete_cards", {"uid": UID}),
        ]
        # The reader's swipe of the same card disabled the charger again (enable_all).
        assert rt.engine.site.mode == "solar" and not rt.charger("cp1").authorized
        # A refused request sends nothing.
        before = len(rt.recent_commands)
        bad = await c.put("/api/chargers/cp1/rfid", json={"mode": "sometimes"})
        assert bad.status_code == 400 and len(rt.recent_commands) == before


async def test_rfid_mode_lock_setting_and_holding_card_survive_a_restart(tmp_path: Path) -> None:
    cfg = config(rfid="enable_all", fixed_cable=False, lock="solenoid", authorization_timeout_s=600)
    path = tmp_path / "db.sqlite"
    store = Store(path)
    try:
        async with (
            serve(cfg, speed=20, store=store) as (base, rt),
            httpx.AsyncClient(base_url=base) as c,
        ):
            for uid in (UID, OTHER):
                await c.post("/api/cards", json={"uid": uid})
            assert (await c.put("/api/chargers/cp1/rfid", json={"mode": "enable_one"})).status_code == 200
            await plug(c)
            await c.post("/api/chargers/cp1/swipe", json={"uid": UID})
            await until(c, "/api/chargers/cp1", charging, "charging")
            rt.access.set_lock("cp2", "always", "rest:native")
    finally:
        store.close()
    store = Store(path)
    try:
        async with (
            serve(cfg, speed=20, store=store) as (base, rt),
            httpx.AsyncClient(base_url=base) as c,
        ):
            doc = (await c.get("/api/chargers/cp1/access")).json()
            assert (doc["rfid"], doc["card"], doc["authorized"]) == ("enable_one", UID, True)
            assert rt.access.of("cp2").lock_setting.value == "always"
            # The card still holds the charger: another is refused, the car charges, the card ends it.
            other = await c.post("/api/chargers/cp1/swipe", json={"uid": OTHER})
            assert other.status_code == 403 and "another card holds this charger" in other.text
            await plug(c)
            await until(c, "/api/chargers/cp1", charging, "charging on the kept card")
            assert (await c.get("/api/chargers/cp1/access")).json()["lock"]["state"] == "locked"
            assert (await c.post("/api/chargers/cp1/swipe", json={"uid": UID})).json()["action"] == "stop"
            await until(c, "/api/chargers/cp1/access", lambda d: d["lock"]["state"] == "unlocked", "unlocked")
            await c.put("/api/chargers/cp1/rfid", json={"mode": "learn"})
    finally:
        store.close()
    store = Store(path)
    try:
        async with serve(cfg, speed=20, store=store) as (_, rt):
            st = rt.access.of("cp1")
            assert (st.rfid.value, st.operating.value, st.holder) == ("learn", "enable_one", None)
            assert not rt.charger("cp1").authorized
    finally:
        store.close()


def test_kept_access_settings_that_no_longer_validate_are_dropped_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        store.put_card(Card(OTHER))
        # cp1 now asks for no authorization: an operating mode is refused, the lock setting stays.
        kept = {"rfid": "enable_one", "operating": "enable_one", "config": "disabled", "lock": "always"}
        store.set_setting("access:cp1", kept)
        # cp2's card was deleted meanwhile and its lock setting is not one: both dropped alone.
        kept = {"rfid": "enable_one", "config": "enable_all", "holder": UID, "lock": "sometimes"}
        store.set_setting("access:cp2", kept)
        cfg = make_config(
            {"sim": {"cars": []}, "chargers": [{"id": "cp1"}, {"id": "cp2", "rfid": "enable_all"}]}
        )
        rt = Runtime(cfg, ManualClock(), store)
        cp1, cp2 = rt.access.of("cp1"), rt.access.of("cp2")
        assert (cp1.rfid.value, cp1.operating.value, cp1.lock_setting.value) == (
            "disabled",
            "disabled",
            "always",
        )
        assert (cp2.rfid.value, cp2.holder, cp2.lock_setting.value) == ("enable_one", None, "auto")
        assert not rt.charger("cp2").authorized
        # A kept holder whose card is still learned comes back with its authorization.
        store.set_setting("access:cp2", {"rfid": "enable_one", "config": "enable_all", "holder": OTHER})
        rt = Runtime(cfg, ManualClock(), store)
        assert rt.access.of("cp2").holder == OTHER and rt.charger("cp2").authorized
        assert rt.charger("cp2").pending_method == "card"
        # The config's rfid was edited since the mode was stored: the config's mode applies.
        edited = make_config(
            {"sim": {"cars": []}, "chargers": [{"id": "cp1"}, {"id": "cp2", "rfid": "remote"}]}
        )
        rt = Runtime(edited, ManualClock(), store)
        assert rt.access.of("cp2").rfid.value == "remote" and rt.access.of("cp2").holder is None
    finally:
        store.close()


async def test_native_unlock_forces_the_lock_open_and_a_new_unlock_retries_a_fault() -> None:
    async with (
        serve(config(fixed_cable=False, lock="motor"), speed=20) as (base, rt),
        httpx.AsyncClient(base_url=base, timeout=10) as c,
    ):
        # No lock on cp2 and not an OCPP charger: a clear refusal, and nothing is commanded.
        r = await c.post("/api/chargers/cp2/unlock")
        assert r.status_code == 409 and r.json()["error"] == "not_supported", r.text
        assert r.json()["field"] == "charger" and "has no cable lock" in r.json()["detail"]
        assert not [x for x in rt.recent_commands if x["command"] == "set_cable_lock"]

        await plug(c)
        await until(c, "/api/chargers/cp1", charging, "charging")
        assert (await c.get("/api/chargers/cp1/access")).json()["lock"]["state"] == "locked"
        r = await c.post("/api/chargers/cp1/unlock")
        assert r.status_code == 200, r.text
        done = r.json()
        opened = {"action": "force_unlock", "status": "Unlocked", "state": "unlocked", "detail": None}
        assert done["lock"] == opened
        assert "ocpp" not in done and not done["charging"] and done["limit_source"] == "lock"
        forced = [x for x in rt.recent_commands if x["command"] == "set_cable_lock"]
        assert [(x["origin"], x["fields"]["setting"]) for x in forced] == [("rest:native", "force_unlock")]

        # The socket is freed and the next car locked in; then the lock jams.
        await c.post("/api/sim/chargers/cp1/unplug")
        await until(c, "/api/chargers/cp1/access", lambda d: d["lock"]["setting"] == "auto", "back to auto")
        await plug(c)
        await until(c, "/api/chargers/cp1", charging, "charging again")
        hw = rt.access.chargers["cp1"].actuator
        assert hw is not None
        assert (await c.put("/api/sim/chargers/cp1/lock", json={"jammed": True})).status_code == 200
        r = await c.post("/api/chargers/cp1/unlock")
        assert r.status_code == 200, r.text
        failed = r.json()["lock"]
        reason = "unlock not confirmed after 3 attempts of 3 s"
        assert failed == {**opened, "status": "UnlockFailed", "state": "fault", "detail": reason}

        # Still jammed: a new unlock is a new set of attempts, each driving the actuator again.
        drives = hw.drives
        r = await c.post("/api/chargers/cp1/unlock")
        assert r.json()["lock"]["status"] == "UnlockFailed" and hw.drives == drives + 3

        # Freed, the stalled lock stays shut and in fault until told again; then it opens.
        assert (await c.put("/api/sim/chargers/cp1/lock", json={"jammed": False})).status_code == 200
        since = rt.clock.now()
        while rt.clock.now() < since + 2:
            await asyncio.sleep(0.02)
        access = (await c.get("/api/chargers/cp1/access")).json()
        assert access["lock"]["state"] == "fault" and access["lock"]["locked"] is True
        drives = hw.drives
        r = await c.post("/api/chargers/cp1/unlock")
        assert r.json()["lock"] == opened
        assert hw.drives == drives + 1
        access = (await c.get("/api/chargers/cp1/access")).json()
        assert access["lock"] == {
            "mode": "motor",
            "setting": "force_unlock",
            "state": "unlocked",
            "locked": False,
            "fault": None,
        }
