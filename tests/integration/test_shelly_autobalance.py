"""Shelly auto_balance end to end: evpilot polls a simulated Shelly Pro 3EM over HTTP, caps the charger."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from evpilot.api.shelly import ShellyFacade
from evpilot.control.runtime import Runtime
from evpilot.store.sqlite import Store
from tests.helpers import free_port, make_config, serve


def _config(em_port: int) -> Any:
    return make_config(
        {
            "site": {"mains_limit": 40, "meter_timeout_s": 1},
            "sim": {"pv_kwp": 0, "spike_rate_h": 0, "first_spike_s": None},
            # the simulated Pro 3EM is served by evpilot itself and measures the simulated mains
            "shelly": {"sim_em_port": em_port, "em_port": em_port, "em_poll_s": 0.1},
        }
    )


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def _rpc(client: httpx.AsyncClient, method: str, params: dict[str, Any]) -> dict[str, Any]:
    reply = (
        await client.post("/rpc", json={"id": 1, "src": "test", "method": method, "params": params})
    ).json()
    assert isinstance(reply, dict)
    return reply


def _lease(rt: Runtime) -> float | None:
    lease = rt.charger("cp1").leases.get("auto_balance")
    return None if lease is None else lease.value


async def test_auto_balance_keeps_the_site_under_max_current(tmp_path: Path) -> None:
    em_port = free_port()
    store = Store(tmp_path / "db.sqlite3")
    async with serve(_config(em_port), speed=10, store=store) as (base, rt):
        facade: ShellyFacade = rt_facade(rt)
        assert facade.sim_em is not None and facade.sim_em.port == em_port
        async with httpx.AsyncClient(base_url=base) as client:
            await client.put("/api/sim/house", json={"currents": [8, 8, 8]})
            ch = rt.charger("cp1")
            sim = rt.sim
            assert sim is not None
            await _until(lambda: ch.signaled > 20)  # charging fast before auto_balance
            reply = await _rpc(
                client,
                "Service.SetConfig",
                {
                    "id": 0,
                    "config": {"auto_balance": {"enable": True, "em_ip": "127.0.0.1", "max_current": 16}},
                },
            )
            assert reply["result"] == {"restart_required": False}

            # the EV may take 16 A minus the house (the EV's own current is excluded from the EM reading)
            def cap_matches_house() -> bool:
                lease = _lease(rt)
                return lease is not None and abs(lease - (16 - max(sim.house_currents))) <= 0.6

            await _until(cap_matches_house)
            await _until(lambda: 0 < ch.signaled <= 16 - max(sim.house_currents) + 0.6)
            await _until(lambda: max(sim.mains_currents) <= 16.7)
            doc = (await client.get("/api/chargers/cp1")).json()
            assert doc["limits"]["leases"]["auto_balance"]["amps"] < 16
            assert doc["available_source"] == "auto_balance"
            status = (await _rpc(client, "Service.GetStatus", {"id": 0}))["result"]["auto_balance"]
            assert status["active"] is True and status["reason"] == "ok" and status["error"] is None
            assert max(status["em_currents"]) > 15

            # a limit that leaves less than MIN for the EV pauses charging
            await _rpc(client, "Service.SetConfig", {"config": {"auto_balance": {"max_current": 6}}})
            await _until(lambda: ch.signaled == 0)
            await _rpc(client, "Service.SetConfig", {"config": {"auto_balance": {"max_current": 16}}})

            # the meter goes away: after meter_timeout_s the cap falls back to the site's fallback current
            assert facade.sim_em is not None
            await facade.sim_em.stop()
            try:
                await _until(lambda: facade.balancer.status("cp1").get("reason") == "stale")
            except AssertionError:
                # Seen rarely in full-suite runs under load: say what the poller was doing.
                raise AssertionError(
                    f"auto_balance never went stale: {facade.balancer.status('cp1')},"
                    f" tasks {rt.supervisor.health()}"
                ) from None
            assert _lease(rt) == 6.0
            assert facade.balancer.status("cp1")["error"]

            config = (await _rpc(client, "Service.GetConfig", {"id": 0}))["result"]
            assert config["auto_balance"] == {
                "enable": True,
                "em_ip": "127.0.0.1",
                "max_current": 16,
                "exclude_self_current": True,
            }

    # the settings survive a restart (persisted in the store)
    async with (
        serve(_config(free_port()), speed=10, store=store) as (base, rt),
        httpx.AsyncClient(base_url=base) as client,
    ):
        config = (await _rpc(client, "Service.GetConfig", {"id": 0}))["result"]
        assert config["auto_balance"]["enable"] is True and config["auto_balance"]["max_current"] == 16
        await _until(lambda: _lease(rt) is not None)
        reply = await _rpc(client, "Service.SetConfig", {"config": {"auto_balance": {"enable": False}}})
        assert "result" in reply
        await _until(lambda: _lease(rt) is None)
    store.close()


def rt_facade(rt: Runtime) -> ShellyFacade:
    """The Shelly facade mounted for this runtime (it registers a change listener)."""
    for listener in rt.listeners:
        owner = getattr(listener, "__self__", None)
        if isinstance(owner, ShellyFacade):
            return owner
    raise AssertionError("no Shelly facade")
