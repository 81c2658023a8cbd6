"""Seed 000's Shelly Top AC examples, verbatim URLs, against a running evpilot."""

from __future__ import annotations

import asyncio

import httpx

from tests.helpers import make_config, serve

SEED = "/rpc/{type}.{verb}?owner=%22service:0%22&role=%22{role}%22"
PHASE_KEYS = {"voltage", "current", "power"}


async def test_seed_urls_and_shapes() -> None:
    async with serve(make_config(), speed=60) as (base, rt), httpx.AsyncClient(base_url=base) as client:
        ws = (await client.get('/rpc/Enum.GetStatus?owner="service:0"&role="work_state"')).json()
        assert set(ws) == {"value", "source", "last_update_ts"}
        assert ws["value"] in {
            "charger_free", "charger_insert", "charger_wait", "charger_charging",
            "charger_pause", "charger_end", "charger_fault",
        }  # fmt: skip

        resp = await client.get('/rpc/Number.Set?owner="service:0"&role="current_limit"&value=10')
        assert resp.status_code == 200 and resp.content.strip() == b"null"
        assert rt.charger("cp1").user_limit == 10.0

        phase = (await client.get('/rpc/Object.GetStatus?owner="service:0"&role="phase_info"')).json()
        assert set(phase) == {"value", "source", "last_update_ts"}
        value = phase["value"]
        assert set(value) == {
            "counter", "total_current", "total_power", "total_act_energy", "phase_a", "phase_b", "phase_c",
        }  # fmt: skip
        assert (
            set(value["counter"]) == {"total", "minute_ts", "by_minute"}
            and len(value["counter"]["by_minute"]) == 3
        )
        assert all(set(value[p]) == PHASE_KEYS for p in ("phase_a", "phase_b", "phase_c"))
        assert value["counter"]["minute_ts"] % 60 == 0

        resp = await client.get('/rpc/Boolean.Set?owner="service:0"&role="start_charging"&value=true')
        assert resp.status_code == 200 and resp.json() is None
        assert rt.charger("cp1").start_requested is True

        config = (await client.get("/rpc/Service.GetConfig?id=0")).json()
        assert config == {
            "auto_balance": {"enable": False, "em_ip": None, "max_current": 24, "exclude_self_current": True},
            "auto_charge": True,
            "global_charge_limit": None,
            "global_time_limit": None,
            "id": 0,
        }

        # energy_charge (kWh) and time_charge (whole minutes) follow the session
        ch = rt.charger("cp1")
        for _ in range(400):
            if ch.session is not None and ch.session.duration_s(rt.clock.now()) > 150:
                break
            await asyncio.sleep(0.05)
        assert ch.session is not None
        energy = (await client.get('/rpc/Number.GetStatus?owner="service:0"&role="energy_charge"')).json()
        minutes = (await client.get('/rpc/Number.GetStatus?owner="service:0"&role="time_charge"')).json()
        assert energy["source"] == "sys" and energy["last_update_ts"] > 0
        assert abs(energy["value"] - ch.session.energy_kwh) < 0.05
        assert isinstance(minutes["value"], int) and minutes["value"] >= 2
        assert abs(minutes["value"] - ch.session.duration_s(rt.clock.now()) / 60) <= 1
        lifetime = (await client.get(SEED.format(type="Object", verb="GetStatus", role="phase_info"))).json()
        assert lifetime["value"]["total_act_energy"] >= energy["value"] - 0.01
        assert abs(lifetime["value"]["counter"]["total"] - lifetime["value"]["total_act_energy"] * 1000) < 1


async def test_by_id_and_by_role_agree_and_status_config_carry_the_keys() -> None:
    async with serve(make_config(), speed=1) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        status = (await client.get("/rpc/Shelly.GetStatus")).json()
        config = (await client.get("/rpc/Shelly.GetConfig")).json()
        pairs = {
            "enum:200": "work_state", "number:200": "current_limit", "object:200": "phase_info",
            "boolean:200": "start_charging", "number:201": "energy_charge", "number:202": "time_charge",
        }  # fmt: skip
        for key, role in pairs.items():
            ctype, cid = key.split(":")
            assert (
                config[key]["role"] == role
                and config[key]["owner"] == "service:0"
                and config[key]["id"] == int(cid)
            )
            by_id = (await client.get(f"/rpc/{ctype.capitalize()}.GetConfig?id={cid}")).json()
            by_role = (
                await client.get(SEED.format(type=ctype.capitalize(), verb="GetConfig", role=role))
            ).json()
            assert by_id == by_role == config[key]
            assert set(status[key]) == {"value", "source", "last_update_ts"}
        assert config["number:200"]["min"] == 6 and config["number:200"]["max"] == 32
        assert (
            config["number:200"]["meta"]["ui"]["step"] == 0.1
            and config["number:202"]["meta"]["ui"]["unit"] == "min"
        )
        assert config["service:0"]["id"] == 0 and "sys" in status and "sys" in config

        # paging: two pages of dynamic components
        first = (await client.get("/rpc/Shelly.GetComponents?dynamic_only=true")).json()
        second = (await client.get("/rpc/Shelly.GetComponents?dynamic_only=true&offset=4")).json()
        assert first["total"] == second["total"] == 6 and second["offset"] == 4
        keys = [c["key"] for c in first["components"] + second["components"]]
        assert keys == list(pairs)
        every = (await client.get("/rpc/Shelly.GetComponents")).json()
        assert every["total"] == 8 and every["components"][0]["key"] == "sys"


async def test_evcc_style_frame_posted_to_the_method_url() -> None:
    # evcc's shelly-topac driver POSTs a whole frame to /rpc/<Method>; its params are used.
    async with serve(make_config(), speed=1) as (base, rt), httpx.AsyncClient(base_url=base) as client:
        frame = {"id": 0, "src": "evcc", "method": "Number.Set",
                 "params": {"owner": "service:0", "role": "current_limit", "value": 13}}  # fmt: skip
        resp = await client.post("/rpc/Number.Set", json=frame)
        assert resp.status_code == 200 and resp.json() is None
        assert rt.charger("cp1").user_limit == 13.0
        flat = {
            "id": 0,
            "src": "evcc",
            "method": "Service.SetConfig",
            "params": {"id": 0, "auto_charge": False},
        }
        assert (await client.post("/rpc/Service.SetConfig", json=flat)).json() == {"restart_required": False}
        assert rt.charger("cp1").auto_charge is False
        work = {"id": 0, "src": "evcc", "method": "Enum.GetStatus",
                "params": {"owner": "service:0", "role": "work_state"}}  # fmt: skip
        assert "value" in (await client.post("/rpc/Enum.GetStatus", json=work)).json()
