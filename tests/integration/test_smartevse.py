"""SmartEVSE facade: /settings in the firmware's shape, settings via query parameters, the API meter."""

from __future__ import annotations

import asyncio

import httpx

from tests.helpers import make_config, poll, serve


async def test_settings_document_has_the_firmware_structure() -> None:
    async with serve(make_config(), speed=20) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        doc = await poll(c, "/settings", lambda d: d["evse"]["state"] == "Charging")
        for key in ("mode", "mode_id", "car_connected", "evse", "settings", "ev_meter", "phase_currents"):
            assert key in doc
        assert (doc["mode"], doc["mode_id"], doc["car_connected"]) == ("SMART", 3, True)
        assert doc["evse"]["state_id"] == 2 and doc["evse"]["error"] == "None"
        s = doc["settings"]
        assert (s["current_min"], s["current_max"], s["current_main"]) == (6, 32, 25)
        assert s["charge_current"] >= 60  # dA
        assert set(doc["phase_currents"]) >= {"TOTAL", "L1", "L2", "L3", "last_data_update", "original_data"}
        assert set(doc["home_battery"]) == {"current", "last_update"}
        doc = await poll(c, "/settings", lambda d: d["ev_meter"]["currents"]["TOTAL"] > 0)
        assert doc["ev_meter"]["currents"]["L1"] > 10  # dA


async def test_post_settings_maps_to_charger_and_site() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/settings?mode=1&override_current=83")
        assert r.status_code == 200
        assert r.json() == {"mode": "1", "override_current": 83}
        ch = rt.charger("cp1")
        assert (ch.mode, ch.override, ch.enabled) == ("normal", 8.3, True)
        doc = (await c.get("/settings")).json()
        assert (doc["mode"], doc["mode_id"], doc["settings"]["override_current"]) == ("NORMAL", 1, 83)

        r = await c.post("/settings?disable_override_current=1&mode=0")
        assert r.json() == {"mode": "0", "disable_override_current": "OK"}
        assert ch.override is None and ch.enabled is False
        assert (await c.get("/settings")).json()["mode"] == "OFF"

        query = (
            "mode=2&current_min=8&current_max_sum_mains=40&max_sum_mains_timer=5"
            "&stop_timer=15&solar_start_current=12&solar_max_import=3&enable_C2=4"
        )
        r = await c.post(f"/settings?{query}")
        assert r.status_code == 200, r.text
        assert r.json()["stop_timer"] is True
        assert r.json()["settings"] == {"enable_C2": "Auto"}
        site = rt.engine.site
        assert (site.capacity_limit, site.cap_stop_s) == (40.0, 300.0)
        assert (site.solar.stop_min, site.solar.start_current, site.solar.max_import) == (15.0, 12.0, 3.0)
        assert ch.config.min_current == 8 and ch.phase_mode == "auto" and ch.mode == "solar"
        s = (await c.get("/settings")).json()["settings"]
        assert (s["current_min"], s["current_max_sum_mains"], s["max_sum_mains_time"]) == (8, 40, 5)
        assert (s["solar_stop_time"], s["solar_start_current"], s["solar_max_import"]) == (15, 12, 3)
        assert s["enable_C2"] == "Auto"

        r = await c.post("/settings?current_max_sum_mains=0")
        assert r.status_code == 200 and rt.engine.site.capacity_limit is None


async def test_currents_feed_the_api_mains_meter_and_battery() -> None:
    config = make_config({"site": {"mains_meter": "api"}})
    async with serve(config, speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/currents?L1=100&L2=-50&L3=30&battery_current=-25")
        assert r.status_code == 200
        assert r.json()["TOTAL"] == 80 and r.json()["battery_current"] == -25
        reading = rt.api_meter.latest()
        assert reading is not None and reading.currents == (10.0, -5.0, 3.0)
        assert rt.engine.battery.current == -2.5
        doc = await poll(c, "/settings", lambda d: d["phase_currents"]["L1"] == 100)
        assert (doc["phase_currents"]["L2"], doc["phase_currents"]["L3"]) == (-50, 30)
        assert doc["home_battery"]["current"] == -25 and doc["settings"]["mains_meter"] == "API"


async def test_each_charger_under_its_own_prefix() -> None:
    config = make_config({"chargers": [{"id": "cp1"}, {"id": "cp2"}]})
    async with serve(config, speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        assert (await c.post("/chargers/cp2/settings?mode=1&override_current=100")).status_code == 200
        assert rt.charger("cp2").override == 10.0 and rt.charger("cp1").override is None
        assert (await c.get("/chargers/cp2/settings")).json()["settings"]["override_current"] == 100


async def test_api_meter_data_goes_stale_after_11_s() -> None:
    config = make_config({"site": {"mains_meter": "api"}})
    async with serve(config, speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        assert (await c.post("/currents?L1=50&L2=50&L3=50")).status_code == 200
        fed_at = rt.clock.now()
        site = await poll(c, "/api/site", lambda d: d["mains"] is not None and d["mains"]["fresh"])
        assert site["mains"]["fresh"] is True
        site = await poll(c, "/api/site", lambda d: not d["mains"]["fresh"])
        assert site["mains"]["fresh"] is False and site["fallback"] is True
        assert rt.clock.now() - fed_at >= 11.0
        assert (await c.post("/currents?L1=50&L2=50&L3=50")).status_code == 200
        site = await poll(c, "/api/site", lambda d: d["mains"]["fresh"])
        assert site["mains"]["fresh"] is True


async def test_ev_meter_feed_replaces_the_chargers_own_meter() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        await poll(c, "/settings", lambda d: d["evse"]["state"] == "Charging")
        before = rt.charger("cp1").lifetime_kwh
        # 0.1 s apart at speed 20 is 2 s of clock time: at most 15 Wh at this charger's MAX.
        for wh in (1000, 1010, 1020):
            query = f"L1=55&L2=56&L3=57&import_active_energy={wh}&import_active_power=3800"
            r = await c.post(f"/ev_meter?{query}")
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.1)
        doc = await poll(c, "/api/chargers/cp1", lambda d: d["amperage"] == [5.5, 5.6, 5.7])
        assert doc["amperage"] == [5.5, 5.6, 5.7]
        # The energy counter continues from the feed's deltas (20 Wh), never backwards.
        assert rt.charger("cp1").lifetime_kwh >= before + 0.02 - 1e-6


async def test_post_settings_refuses_every_parameter_it_does_not_apply_by_name() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        before = rt.engine.site
        r = await c.post("/settings?solar_max_import=30")
        assert (r.status_code, r.json()) == (400, {"solar_max_import": "Value not allowed!"})
        assert (await c.post("/settings?solar_max_import=20")).status_code == 200
        for name in ("phases", "cablelock", "backlight"):
            r = await c.post(f"/settings?{name}=1&mode=3")
            assert r.status_code == 400 and set(r.json()) == {name}
            assert "hardware" in r.json()[name]
        r = await c.post("/settings?bogus=1")
        assert (r.status_code, r.json()) == (400, {"bogus": "unknown parameter"})
        assert rt.engine.site.mains_limit == before.mains_limit
