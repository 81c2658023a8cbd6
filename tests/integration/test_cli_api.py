"""`evpilot run` as a subprocess: every native REST endpoint and the WebSocket over real sockets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from websockets.asyncio.client import connect

from evpilot.api.native import build_router
from evpilot.control.clock import ManualClock
from evpilot.control.runtime import Runtime
from tests.helpers import CHARGING_FIELDS, evpilot_process, make_config

T = TypeVar("T")
SPEED = 20.0
CONFIG: dict[str, Any] = {
    "site": {"mains_limit": 25},
    "chargers": [
        {"id": "cp1", "name": "Garage"},
        {"id": "cp2", "name": "Drive", "max_current": 16, "auto_charge": False},
    ],
    "sim": {"seed": 3, "first_spike_s": None, "spike_rate_h": 0, "cars": [{"charger": "cp1", "soc": 20}]},
}
EXERCISED: set[tuple[str, str]] = set()


def until(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy (generous timeout: the box is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Api:
    """An httpx client that remembers which endpoint templates were called."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=10)

    def call(self, method: str, template: str, body: Any = None, **params: str) -> httpx.Response:
        """Call `template` (e.g. /api/chargers/{cid}) with path parameters filled in."""
        EXERCISED.add((method, template))
        path = template.format(**params)
        if body is None:
            return self.http.request(method, path)
        return self.http.request(method, path, json=body)

    def ok(self, method: str, template: str, body: Any = None, **params: str) -> Any:
        """Call and expect 200 with a JSON body."""
        r = self.call(method, template, body, **params)
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, pred: Callable[[dict[str, Any]], bool], cid: str = "cp1") -> dict[str, Any]:
        """Poll a charger until `pred` holds for its document; returns that document."""
        return until(lambda: (lambda d: d if pred(d) else None)(self.charger(cid)), what=f"{cid} state")

    def charger(self, cid: str = "cp1") -> dict[str, Any]:
        """GET one charger."""
        return self.ok("GET", "/api/chargers/{cid}", cid=cid)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One evpilot process for the module (two chargers; a car on cp1 from the start)."""
    tmp = tmp_path_factory.mktemp("evpilot")
    with evpilot_process(tmp, CONFIG, speed=SPEED) as (base, _proc):
        client = Api(base)
        yield client
        client.http.close()


def settings_of(api: Api, cid: str = "cp1") -> dict[str, Any]:
    """Everything a command could change, to prove a refused command changed nothing."""
    d = api.http.get(f"/api/chargers/{cid}").json()
    return {
        k: d[k]
        for k in ("enabled", "available", "auto_charge", "start_requested", "mode_setting", "phase_mode")
    } | {
        "user": d["limits"]["user"],
        "caps": d["caps"],
        "errors": d["errors"],
        "settings": {k: v for k, v in api.http.get("/api/settings").json().items() if k != "speed"},
    }


# ---- reading state ---------------------------------------------------------------------------


def test_default_car_charges_and_the_chain_is_consistent(api: Api) -> None:
    doc = api.wait(lambda d: d["work_state"] == "charger_charging")
    assert doc["state"] == "C2" and doc["plugged"] and doc["charging"]
    assert doc["session"] is not None and doc["power_w"] > 1000
    cur = doc["current"]
    assert cur["signaled"] <= cur["commanded"] + 6 and cur["commanded"] <= cur["available"]
    assert cur["available"] <= 32.0 and cur["signaled"] >= 6.0
    chain = api.ok("GET", "/api/chargers/{cid}/charging", cid="cp1")
    assert set(chain) == CHARGING_FIELDS
    assert len(chain["amperage"]) == 3 and len(chain["voltage"]) == 3
    assert 49.5 < chain["frequency"] < 50.5


def test_meters_lists_the_simulated_mains_meter(api: Api) -> None:
    [mains] = api.ok("GET", "/api/meters")
    assert {k: mains[k] for k in ("name", "driver", "model", "address", "online", "errors")} == {
        "name": "mains",
        "driver": "sim",
        "model": None,
        "address": "simulator",
        "online": True,
        "errors": {},
    }
    reading = mains["reading"]
    assert len(reading["currents"]) == 3 and reading["age_s"] >= 0
    assert all(200 < v < 260 for v in reading["voltages"]) and 49.5 < reading["frequency"] < 50.5
    assert reading["import_kwh"] >= 0
    site_meters = api.ok("GET", "/api/site")["meters"]
    assert set(site_meters) == {"mains"} and set(site_meters["mains"]) == set(reading)


def test_site_and_charger_lists(api: Api) -> None:
    site = api.ok("GET", "/api/site")
    assert site["mode"] == "smart" and site["mains_limit"] == 25
    assert site["chargers"] == ["cp1", "cp2"]
    assert len(site["mains"]["currents"]) == 3 and site["sim"] is not None
    chargers = api.ok("GET", "/api/chargers")
    assert [c["id"] for c in chargers] == ["cp1", "cp2"]
    assert chargers[1]["work_state"] == "charger_free" and chargers[1]["limits"]["max_current"] == 16


def test_openapi_docs_and_status_page(api: Api) -> None:
    spec = api.http.get("/openapi.json").json()
    assert "/api/chargers/{cid}/current_limit" in spec["paths"]
    assert api.http.get("/docs").status_code == 200
    page = api.http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script type="module" src="/web/app.js">' in page.text
    script = api.http.get("/web/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "/api/ws" in script.text
    assert api.http.get("/web/app.css").status_code == 200 and api.http.get("/web/nope.js").status_code == 404


def test_settings_get_and_put(api: Api) -> None:
    s = api.ok("GET", "/api/settings")
    assert s["speed"] == SPEED and s["mode"] == "smart"
    assert api.ok("PUT", "/api/settings", {"mode": "normal"})["mode"] == "normal"
    assert api.ok("GET", "/api/site")["mode"] == "normal"
    assert api.ok("PUT", "/api/settings", {"mode": "smart"})["mode"] == "smart"


def test_settings_change_limits_solar_and_chargers_together(api: Api) -> None:
    before = api.ok("GET", "/api/settings")
    body = {
        "mains_limit": 30,
        "capacity_limit": 60,
        "solar": {"start_current": 9, "stop_min": 5, "max_import": 2},
        "chargers": {"cp2": {"min_current": 8, "max_current": 14, "priority": 2}},
    }
    s = api.ok("PUT", "/api/settings", body)
    assert (s["mains_limit"], s["capacity_limit"]) == (30, 60)
    assert s["solar"] == {"start_current": 9, "stop_min": 5, "max_import": 2}
    assert s["chargers"]["cp2"] == {"min_current": 8, "max_current": 14, "priority": 2}
    assert s["chargers"]["cp1"] == before["chargers"]["cp1"]
    assert api.charger("cp2")["limits"]["max_current"] == 14
    # A user limit above the new MAX is refused with the charger's new range.
    r = api.http.put("/api/chargers/cp2/current_limit", json={"current": 15})
    assert r.status_code == 400 and "allowed 6 to 14 A" in r.json()["detail"]
    restore = {k: before[k] for k in ("mains_limit", "capacity_limit", "solar")}
    s = api.ok("PUT", "/api/settings", restore | {"chargers": {"cp2": before["chargers"]["cp2"]}})
    assert {k: v for k, v in s.items() if k != "speed"} == {k: v for k, v in before.items() if k != "speed"}


# ---- commands --------------------------------------------------------------------------------


def test_current_limit_is_followed_by_the_car(api: Api) -> None:
    doc = api.ok("PUT", "/api/chargers/{cid}/current_limit", {"current": 8.5}, cid="cp1")
    assert doc["limits"]["user"] == 8.5
    doc = api.wait(lambda d: d["current"]["signaled"] == 8.5)
    assert doc["available_source"] == "user"
    until(lambda: max(api.charger()["amperage"]) == pytest.approx(8.5, abs=0.01), what="car at 8.5 A")
    api.ok("PUT", "/api/chargers/{cid}/current_limit", {"current": None}, cid="cp1")
    until(lambda: api.charger()["current"]["signaled"] > 8.5, what="limit removed")


def test_enable_disable(api: Api) -> None:
    api.ok("PUT", "/api/chargers/{cid}/enabled", {"enabled": False}, cid="cp1")
    doc = api.wait(lambda d: d["work_state"] == "charger_pause")
    assert doc["current"]["signaled"] == 0 and not doc["enabled"] and doc["state"] in ("C1", "C2")
    api.ok("PUT", "/api/chargers/{cid}/enabled", {"enabled": True}, cid="cp1")
    until(lambda: api.charger()["work_state"] == "charger_charging", what="charging again")


def test_applied_commands_are_listed_with_their_origin(api: Api) -> None:
    # cp2 starts on command (auto_charge off in the config) and is left so.
    api.ok("PUT", "/api/chargers/{cid}/auto_charge", {"auto_charge": True}, cid="cp2")
    api.ok("PUT", "/api/chargers/{cid}/auto_charge", {"auto_charge": False}, cid="cp2")
    bad = api.call("PUT", "/api/chargers/{cid}/current_limit", {"current": 17}, cid="cp2")
    assert bad.status_code == 400
    recent = api.ok("GET", "/api/commands")
    last_two = [{k: c[k] for k in ("origin", "command", "fields")} for c in recent[-2:]]
    expected = {"origin": "rest:native", "command": "set_auto_charge"}
    assert last_two == [
        expected | {"fields": {"charger": "cp2", "auto_charge": True}},
        expected | {"fields": {"charger": "cp2", "auto_charge": False}},
    ]
    assert all(set(c) == {"at", "origin", "command", "fields"} for c in recent)
    assert all(isinstance(c["at"], float | int) for c in recent)
    assert len(api.http.get("/api/commands", params={"limit": 1}).json()) == 1


def test_stop_pauses_an_auto_charge_charger_until_start(api: Api) -> None:
    api.ok("POST", "/api/chargers/{cid}/stop", cid="cp1")
    doc = api.wait(lambda d: d["work_state"] == "charger_pause")
    assert doc["current"]["signaled"] == 0 and doc["session"] is not None
    api.ok("POST", "/api/chargers/{cid}/start", cid="cp1")
    api.wait(lambda d: d["work_state"] == "charger_charging")


def test_energy_cap_stops_then_lifting_it_resumes(api: Api) -> None:
    session_kwh = api.charger()["session"]["energy_kwh"]
    api.ok("PUT", "/api/chargers/{cid}/caps", {"energy_kwh": session_kwh + 0.01, "time_min": 600}, cid="cp1")
    doc = api.wait(lambda d: d["limit_reached"] == "energy")
    assert doc["caps"] == {"energy_kwh": session_kwh + 0.01, "time_min": 600}
    doc = api.wait(lambda d: d["work_state"] == "charger_end")
    assert doc["current"]["signaled"] == 0
    api.ok("PUT", "/api/chargers/{cid}/caps", {"energy_kwh": None}, cid="cp1")
    doc = api.wait(lambda d: d["work_state"] == "charger_charging")
    assert doc["caps"] == {"energy_kwh": None, "time_min": 600}  # an omitted cap stays
    api.ok("PUT", "/api/chargers/{cid}/caps", {"time_min": 0}, cid="cp1")
    assert api.charger()["caps"]["time_min"] is None


def test_mode_phase_mode_and_auto_charge_settings(api: Api) -> None:
    doc = api.ok("PUT", "/api/chargers/{cid}/mode", {"mode": "normal"}, cid="cp1")
    assert doc["mode"] == "normal" and doc["mode_setting"] == "normal"
    doc = api.ok("PUT", "/api/chargers/{cid}/mode", {"mode": None}, cid="cp1")
    assert doc["mode"] == "smart" and doc["mode_setting"] is None
    assert (
        api.ok("PUT", "/api/chargers/{cid}/phase_mode", {"phase_mode": "always_3p"}, cid="cp1")["phase_mode"]
        == "always_3p"
    )
    api.ok("PUT", "/api/chargers/{cid}/phase_mode", {"phase_mode": "not_present"}, cid="cp1")
    assert not api.ok("PUT", "/api/chargers/{cid}/auto_charge", {"auto_charge": False}, cid="cp1")[
        "auto_charge"
    ]
    assert api.ok("PUT", "/api/chargers/{cid}/auto_charge", {"auto_charge": True}, cid="cp1")["auto_charge"]


def test_explicit_start_stop_and_session_history(api: Api) -> None:
    # cp2 has auto_charge off: plugging in waits for a start.
    doc = api.ok(
        "POST",
        "/api/sim/chargers/{cid}/plug",
        {"battery_kwh": 40, "soc": 50, "max_current": 16, "phases": 1},
        cid="cp2",
    )
    assert doc["id"] == "cp2"  # the car is seen on the next control tick
    doc = api.wait(lambda d: d["state"] == "C1", "cp2")
    assert doc["work_state"] == "charger_insert" and doc["session"] is None
    doc = api.ok("POST", "/api/chargers/{cid}/start", {"id_tag": "CARD-7"}, cid="cp2")
    assert doc["start_requested"]
    doc = api.wait(lambda d: d["work_state"] == "charger_charging", "cp2")
    assert doc["session"]["id_tag"] == "CARD-7"
    assert doc["amperage"][1] == 0 and doc["amperage"][2] == 0 and doc["amperage"][0] > 5  # 1-phase car
    api.ok("POST", "/api/chargers/{cid}/stop", cid="cp2")
    doc = api.wait(lambda d: d["work_state"] == "charger_pause", "cp2")
    session_id = doc["session"]["id"]
    api.ok("POST", "/api/sim/chargers/{cid}/unplug", cid="cp2")
    until(lambda: api.charger("cp2")["work_state"] == "charger_free", what="cp2 free")
    history = api.ok("GET", "/api/sessions")
    rec = next(r for r in history if r["id"] == session_id)
    assert rec["charger_id"] == "cp2" and rec["stop_reason"] == "ev_disconnected"
    assert rec["id_tag"] == "CARD-7" and rec["energy_kwh"] > 0 and rec["ended_at"] > rec["started_at"]
    only = api.ok("GET", "/api/sessions?charger=cp2&limit=1")
    assert [r["id"] for r in only] == [session_id]
    EXERCISED.add(("GET", "/api/sessions"))


def test_history_and_session_exports_of_the_running_process(api: Api) -> None:
    def filled() -> dict[str, Any] | None:
        doc = api.ok("GET", "/api/history")
        values = [v for v in doc["series"].get("mains_l1", []) if v is not None]
        return doc if values else None

    doc = until(filled, what="a stored history minute")
    assert doc["step"] == 300 and doc["to"] - doc["from"] == 86400 and len(doc["t"]) == 289
    assert "charger:cp1:current" in doc["series"] and "pv_w" in doc["series"]
    stored = api.ok("GET", "/api/sessions?limit=1000")
    table = api.call("GET", "/api/sessions.csv")
    assert table.status_code == 200 and table.text.splitlines()[0].startswith("id,charger_id,card,")
    assert len(table.text.splitlines()) == 1 + len(stored)
    totals = api.ok("GET", "/api/sessions/totals")
    assert totals["by"] == "day" and totals["sessions"] == len(stored)
    bad = api.http.get("/api/history", params={"from": "not-a-time"})
    assert bad.status_code == 400 and bad.json()["field"] == "from"


def test_health_lists_the_supervised_tasks(api: Api) -> None:
    doc = api.ok("GET", "/api/health")
    assert doc["status"] == "ok" and doc["mqtt"] is None
    control = next(t for t in doc["tasks"] if t["name"] == "control")
    assert control == {"name": "control", "state": "running", "restarts": 0, "crashes": 0, "last_error": None}


def test_sim_fault_and_reset(api: Api) -> None:
    api.ok("POST", "/api/sim/chargers/{cid}/fault", {"rcm": True}, cid="cp1")
    doc = api.wait(lambda d: "rcm_triggered" in d["errors"])
    doc = api.wait(lambda d: d["work_state"] == "charger_fault")
    assert doc["state"] == "F" and doc["current"]["signaled"] == 0
    api.ok("POST", "/api/sim/chargers/{cid}/fault", {"rcm": False}, cid="cp1")
    time.sleep(0.2)
    assert "rcm_triggered" in api.charger()["errors"]  # latched
    doc = api.ok("POST", "/api/chargers/{cid}/reset", cid="cp1")
    until(lambda: api.charger()["work_state"] == "charger_charging", what="charging after reset")


def test_sim_house_pv_ambient_and_meter(api: Api) -> None:
    assert api.ok("PUT", "/api/sim/house", {"currents": [5, 6, 7]})["currents"] == [5, 6, 7]
    until(lambda: api.ok("GET", "/api/site")["sim"]["house"] == [5, 6, 7], what="house load")
    assert api.ok("PUT", "/api/sim/pv", {"power_w": 0})["power_w"] == 0
    until(lambda: api.ok("GET", "/api/site")["sim"]["pv_w"] == 0, what="pv off")
    # 25 A fuse, 7 A of house on L3: the charger gets at most 18 A.
    until(lambda: api.charger()["current"]["allocated"] <= 18.0, what="balanced")
    api.ok("PUT", "/api/sim/house", {"currents": None})
    api.ok("PUT", "/api/sim/pv", {"power_w": None})
    assert api.ok("PUT", "/api/sim/ambient", {"temperature_c": 30.5})["temperature_c"] == 30.5
    assert api.ok("GET", "/api/site")["sim"]["ambient_c"] == 30.5
    api.ok("PUT", "/api/sim/ambient", {"temperature_c": 25})
    assert api.ok("PUT", "/api/sim/mains_meter", {"online": False}) == {"online": False}
    until(lambda: api.ok("GET", "/api/site")["mains"]["fresh"] is False, what="stale meter")
    api.ok("PUT", "/api/sim/mains_meter", {"online": True})
    until(lambda: api.ok("GET", "/api/site")["mains"]["fresh"] is True, what="fresh meter")


def test_site_limit_grid_relay_and_meter_feeds(api: Api) -> None:
    r = api.ok("PUT", "/api/site/limit", {"amps": 10})
    assert r["amps"] == 10
    until(lambda: api.charger()["current"]["allocated"] <= 10, what="site limit")
    api.ok("PUT", "/api/site/limit", {"amps": None})
    assert api.ok("PUT", "/api/site/grid_relay", {"open": True}) == {"open": True}
    assert api.ok("GET", "/api/site")["grid_relay_open"] is True
    until(lambda: api.charger()["current"]["commanded"] * 3 * 230 <= 4200, what="§14a cap")
    api.ok("PUT", "/api/site/grid_relay", {"open": False})
    # The API-fed meters accept readings even while the site reads the simulated meter.
    assert api.ok("PUT", "/api/meters/mains", {"currents": [1.5, -2, 3]})["accepted"] is True
    r = api.call("PUT", "/api/meters/circuits/{name}", {"currents": [1, 2, 3]}, name="garage")
    assert r.status_code == 400 and r.json()["field"] == "name"


# ---- bad input -------------------------------------------------------------------------------

UNKNOWN = [
    ("GET", "/api/chargers/nope", None),
    ("GET", "/api/chargers/nope/charging", None),
    ("POST", "/api/chargers/nope/start", None),
    ("POST", "/api/chargers/nope/stop", None),
    ("PUT", "/api/chargers/nope/enabled", {"enabled": False}),
    ("PUT", "/api/chargers/nope/current_limit", {"current": 10}),
    ("PUT", "/api/chargers/nope/caps", {"energy_kwh": 5}),
    ("PUT", "/api/chargers/nope/auto_charge", {"auto_charge": False}),
    ("PUT", "/api/chargers/nope/mode", {"mode": "solar"}),
    ("PUT", "/api/chargers/nope/phase_mode", {"phase_mode": "auto"}),
    ("POST", "/api/chargers/nope/reset", None),
    ("GET", "/api/sessions?charger=nope", None),
    ("POST", "/api/sim/chargers/nope/plug", {}),
    ("POST", "/api/sim/chargers/nope/unplug", None),
    ("POST", "/api/sim/chargers/nope/fault", {"rcm": True}),
]


@pytest.mark.parametrize(("method", "path", "body"), UNKNOWN)
def test_unknown_charger_is_404_json(api: Api, method: str, path: str, body: Any) -> None:
    before = settings_of(api)
    r = api.http.request(method, path, json=body) if body is not None else api.http.request(method, path)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found" and "nope" in r.json()["detail"]
    assert r.json()["chargers"] == ["cp1", "cp2"]
    assert settings_of(api) == before


C = "/api/chargers/cp1"
# (method, path, raw JSON body, status, field, words the message must contain)
BAD = [
    # The limit's range is this charger's: 6 A to its MAX (cp1 32 A, cp2 16 A).
    ("PUT", f"{C}/current_limit", '{"current": 5.9}', 400, "current", ["5.9", "allowed 6 to 32"]),
    ("PUT", f"{C}/current_limit", '{"current": 32.1}', 400, "current", ["32.1", "allowed 6 to 32"]),
    ("PUT", f"{C}/current_limit", '{"current": 90}', 400, "current", ["allowed 6 to 32"]),
    ("PUT", "/api/chargers/cp2/current_limit", '{"current": 20}', 400, "current", ["allowed 6 to 16"]),
    ("PUT", f"{C}/current_limit", '{"current": 16.05}', 400, "current", ["0.1 A"]),
    ("PUT", f"{C}/current_limit", '{"current": "16"}', 422, "current", ["number"]),
    ("PUT", f"{C}/current_limit", "{}", 422, "current", ["required"]),
    ("PUT", f"{C}/current_limit", '{"current": NaN}', 422, "current", ["finite"]),
    ("PUT", f"{C}/caps", '{"energy_kwh": 1001}', 422, "energy_kwh", ["0", "1000"]),
    ("PUT", f"{C}/caps", '{"energy_kwh": -0.5}', 422, "energy_kwh", ["0", "1000"]),
    ("PUT", f"{C}/caps", '{"time_min": 1441}', 422, "time_min", ["0", "1440"]),
    ("PUT", f"{C}/caps", '{"energy_kwh": 5, "time_min": -1}', 422, "time_min", ["1440"]),
    ("PUT", f"{C}/caps", '{"energy_kwh": Infinity}', 422, "energy_kwh", ["1000"]),
    ("PUT", f"{C}/caps", '{"kwh": 5}', 422, "kwh", ["not permitted"]),
    ("PUT", f"{C}/enabled", '{"enabled": "no"}', 422, "enabled", ["boolean"]),
    ("PUT", f"{C}/enabled", '{"enabled": 0}', 422, "enabled", ["boolean"]),
    ("PUT", f"{C}/enabled", "[true]", 422, "body", []),
    ("PUT", f"{C}/enabled", "not json", 422, "", ["JSON"]),
    ("PUT", f"{C}/auto_charge", '{"auto_charge": null}', 422, "auto_charge", ["boolean"]),
    ("PUT", f"{C}/mode", '{"mode": "turbo"}', 400, "mode", ["off", "solar"]),
    ("PUT", f"{C}/mode", '{"mode": 3}', 422, "mode", ["string"]),
    ("PUT", f"{C}/phase_mode", '{"phase_mode": "sometimes"}', 400, "phase_mode", ["auto"]),
    ("POST", f"{C}/start", '{"id_tag": "' + "x" * 65 + '"}', 422, "id_tag", ["64"]),
    ("PUT", "/api/settings", '{"mode": "bogus"}', 400, "mode", ["smart"]),
    ("PUT", "/api/settings", '{"mains_limit": 300}', 400, "mains_limit", ["allowed 10 to 200 A"]),
    ("PUT", "/api/settings", '{"mains": 30}', 422, "mains", ["not permitted"]),
    ("PUT", "/api/settings", '{"mode": "solar", "mains_limit": 5}', 400, "mains_limit", ["10 to 200"]),
    ("PUT", "/api/settings", '{"capacity_limit": 5}', 400, "capacity_limit", ["10 to 600"]),
    ("PUT", "/api/settings", '{"circuits": {"nope": 20}}', 400, "circuit", ["no circuit 'nope'"]),
    ("PUT", "/api/settings", '{"solar": {"start_current": 49}}', 400, "start_current", ["0 to 48"]),
    ("PUT", "/api/settings", '{"solar": {"stop_min": 61}}', 400, "stop_min", ["0 to 60"]),
    ("PUT", "/api/settings", '{"solar": {"max_import": 21}}', 400, "max_import", ["0 to 20"]),
    ("PUT", "/api/settings", '{"solar": {"import": 1}}', 422, "solar.import", ["not permitted"]),
    ("PUT", "/api/settings", '{"chargers": {"cp1": {"min_current": 17}}}', 400, "min_current", ["6 to 16"]),
    ("PUT", "/api/settings", '{"chargers": {"cp1": {"max_current": 81}}}', 400, "max_current", ["10 to 80"]),
    (
        "PUT",
        "/api/settings",
        '{"chargers": {"cp2": {"max_current": 12, "min_current": 14}}}',
        400,
        "max_current",
        ["MIN"],
    ),
    ("PUT", "/api/settings", '{"chargers": {"cp1": {"priority": 10}}}', 400, "priority", ["0 to 9"]),
    (
        "PUT",
        "/api/settings",
        '{"chargers": {"cp1": {"priority": 1.5}}}',
        422,
        "chargers.cp1.priority",
        ["integer"],
    ),
    (
        "PUT",
        "/api/settings",
        '{"mode": "solar", "solar": {"start_current": 8}, "chargers": {"cp1": {"priority": 10}}}',
        400,
        "priority",
        ["0 to 9"],
    ),
    ("PUT", "/api/meters/mains", '{"currents": [1, 2]}', 422, "currents", ["3"]),
    ("PUT", "/api/meters/mains", '{"currents": [1, 2, 1e9]}', 400, "currents[2]", ["1000"]),
    (
        "PUT",
        "/api/meters/mains",
        '{"currents": [1, 2, 3], "battery_current": 2000}',
        422,
        "battery_current",
        [],
    ),
    ("PUT", "/api/site/limit", '{"amps": 601}', 422, "amps", ["0", "600"]),
    ("PUT", "/api/site/grid_relay", '{"open": "yes"}', 422, "open", ["boolean"]),
    ("POST", "/api/sim/chargers/cp2/plug", '{"phases": 2}', 400, "phases", ["1 or 3"]),
    ("POST", "/api/sim/chargers/cp2/plug", '{"soc": 101}', 422, "soc", ["0", "100"]),
    ("POST", "/api/sim/chargers/cp2/plug", '{"max_current": 5}', 422, "max_current", ["6", "80"]),
    ("POST", "/api/sim/chargers/cp1/plug", "{}", 400, "charger", ["already"]),
    ("POST", "/api/sim/chargers/cp1/fault", '{"rcm": 1}', 422, "rcm", ["boolean"]),
    ("PUT", "/api/sim/house", '{"currents": [1, 2, -1]}', 400, "currents[2]", ["0", "400"]),
    ("PUT", "/api/sim/pv", '{"power_w": -1}', 422, "power_w", ["0"]),
    ("PUT", "/api/sim/ambient", '{"temperature_c": 100}', 422, "temperature_c", ["-40", "90"]),
    ("PUT", "/api/sim/mains_meter", '{"online": "off"}', 422, "online", ["boolean"]),
    ("GET", "/api/sessions?limit=0", None, 422, "limit", ["1"]),
]


@pytest.mark.parametrize(("method", "path", "raw", "status", "field", "words"), BAD)
def test_bad_input_is_refused_naming_the_field_and_changes_nothing(
    api: Api, method: str, path: str, raw: str | None, status: int, field: str, words: list[str]
) -> None:
    before = settings_of(api)
    ambient = api.http.get("/api/site").json()["sim"]["ambient_c"]
    headers = {"content-type": "application/json"}
    r = api.http.request(method, path, content=raw, headers=headers)
    assert r.status_code == status, r.text
    body = r.json()
    # One envelope for 400 and 422: a sentence, the problems, and a lone problem's field on top.
    assert body["error"] == "invalid" and isinstance(body["detail"], str)
    fields, text = [p["field"] for p in body["problems"]], body["detail"]
    assert text == "; ".join(f"{p['field']}: {p['detail']}" for p in body["problems"])
    assert body.get("field") == (fields[0] if len(fields) == 1 else None)
    if field:
        assert field in fields
    for word in words:
        assert word in text, text
    assert settings_of(api) == before
    assert api.http.get("/api/site").json()["sim"]["ambient_c"] == ambient


def test_the_limit_refusal_gives_this_chargers_range(api: Api) -> None:
    for cid, top in (("cp1", 32.0), ("cp2", 16.0)):
        r = api.http.put(f"/api/chargers/{cid}/current_limit", json={"current": 40})
        assert r.status_code == 400
        detail = f"40 A is out of range (allowed 6 to {top:g} A)"
        assert r.json()["problems"] == [
            {"field": "current", "detail": detail, "allowed": {"min": 6.0, "max": top}}
        ]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_sent_as_json_says_so(api: Api, content_type: str | None) -> None:
    before = settings_of(api)
    headers = {"content-type": content_type} if content_type else {}
    r = api.http.put(f"{C}/current_limit", content=b'{"current": 10}', headers=headers)
    assert r.status_code == 415, r.text
    body = r.json()
    assert body["error"] == "invalid" and body["field"] == "content-type"
    assert body["detail"].startswith("content-type: content-type must be application/json")
    assert settings_of(api) == before
    # With the header (parameters allowed) the same body is taken; a bodiless command needs none.
    json_utf8 = {"content-type": "application/json; charset=utf-8"}
    r = api.http.put(f"{C}/current_limit", content=b'{"current": null}', headers=json_utf8)
    assert r.status_code == 200, r.text
    assert api.http.post(f"{C}/reset").status_code == 200


def test_oversized_body_is_refused(api: Api) -> None:
    r = api.http.put(f"{C}/enabled", content=b"x" * 70_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_ocpp_routes_on_a_site_without_ocpp_wallboxes(api: Api) -> None:
    # The OCPP flows themselves are in test_ocpp_backend.py (a real wallbox over a WebSocket).
    assert api.ok("GET", "/api/ocpp/stations") == []
    r = api.call("POST", "/api/chargers/{cid}/unlock", cid="cp1")
    assert r.status_code == 409 and r.json()["error"] == "not_supported", r.text


def test_unknown_path_is_json_404(api: Api) -> None:
    r = api.http.get("/api/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "http"


# ---- WebSocket -------------------------------------------------------------------------------


async def test_websocket_pushes_state_and_changes(api: Api) -> None:
    ws_url = api.base.replace("http://", "ws://") + "/api/ws"
    async with connect(ws_url, open_timeout=10) as ws:
        first: dict[str, dict[str, Any]] = {}
        while not {"site", "charger", "charging"} <= set(first):
            frame = json.loads(await ws.recv(decode=True))
            assert set(frame) == {"topic", "message"}
            first.setdefault(frame["topic"], frame["message"])
        assert set(first["charging"]) == CHARGING_FIELDS
        assert first["charger"]["id"] in ("cp1", "cp2")
        async with httpx.AsyncClient(base_url=api.base) as client:
            r = await client.put(f"{C}/current_limit", json={"current": 7.3})
            assert r.status_code == 200
            seen_limit = seen_chain = False
            deadline = time.monotonic() + 30
            while not (seen_limit and seen_chain):
                assert time.monotonic() < deadline, "no frame showed the new limit"
                frame = json.loads(await ws.recv(decode=True))
                msg = frame["message"]
                if frame["topic"] == "charger" and msg["id"] == "cp1" and msg["limits"]["user"] == 7.3:
                    seen_limit = True
                if frame["topic"] == "charging":
                    assert set(msg) == CHARGING_FIELDS
                    seen_chain = seen_chain or msg["signaledAmperage"] == 7.3
            await client.put(f"{C}/current_limit", json={"current": None})


# ---- coverage of the native API --------------------------------------------------------------


def test_every_native_endpoint_was_exercised(request: pytest.FixtureRequest) -> None:
    selected = {item.name.split("[")[0] for item in request.session.items}
    tests = {name for name in globals() if name.startswith("test_")}
    if not tests <= selected:
        pytest.skip("needs the whole module to run")
    rt = Runtime(make_config(), ManualClock())
    routes = set()
    for route in build_router(rt).routes:
        for method in getattr(route, "methods", None) or {"WS"}:
            if method != "HEAD":
                routes.add((method, route.path))  # type: ignore[attr-defined]
    routes.discard(("WS", "/api/ws"))  # the WebSocket test above
    missing = routes - EXERCISED
    assert not missing, f"native endpoints without an integration test: {sorted(missing)}"


# ---- restart and shutdown --------------------------------------------------------------------


def test_sigterm_closes_the_session_and_restart_keeps_history_and_lifetime(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = {"sim": {"first_spike_s": None, "spike_rate_h": 0}}
    with evpilot_process(tmp_path, config, speed=50, data_dir=data) as (base, proc):
        api = Api(base)
        doc = api.wait(lambda d: d["lifetime_kwh"] > 0.2)
        session_id = doc["session"]["id"]
        proc.terminate()
        assert proc.wait(30) == 0
        lifetime = doc["lifetime_kwh"]
    log = next(tmp_path.glob("evpilot-*.log")).read_text()
    assert "ended (shutdown)" in log and "evpilot stopped" in log
    with evpilot_process(tmp_path, config, speed=50, data_dir=data) as (base, _proc):
        api = Api(base)
        (rec,) = api.ok("GET", "/api/sessions")
        assert rec["id"] == session_id and rec["stop_reason"] == "shutdown"
        assert rec["energy_kwh"] >= doc["session"]["energy_kwh"]
        doc = api.charger()
        # The counter carried over: the old lifetime plus whatever this run has charged since.
        since = doc["session"]["energy_kwh"] if doc["session"] else 0.0
        assert doc["lifetime_kwh"] >= lifetime + since - 0.002
        assert doc["session"] is None or doc["session"]["id"] != session_id
