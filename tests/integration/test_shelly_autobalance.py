"""Shelly auto_balance end to end: a metered circuit node fed by a simulated Shelly Pro 3EM over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from evpilot.api.shelly import ShellyFacade
from evpilot.control.autobalance import node_name
from evpilot.control.runtime import Runtime
from evpilot.store.sqlite import Store
from tests.helpers import free_port, make_config, serve


def _config(em_port: int) -> Any:
    return make_config(
        {
            "site": {"mains_limit": 40, "meter_timeout_s": 2},
            "sim": {"pv_kwp": 0, "spike_rate_h": 0, "first_spike_s": None},
            # the simulated Pro 3EM is served by evpilot itself and measures the simulated mains
            "shelly": {"sim_em_port": em_port, "em_port": em_port, "em_poll_s": 0.05},
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


NODE = node_name("cp1")


def _node(rt: Runtime) -> float | None:
    """The limit of cp1's auto_balance node, None while cp1 is not below one."""
    node = next((c for c in rt.engine.site.circuits if c.name == NODE), None)
    if node is None:
        return None
    assert rt.charger("cp1").config.circuit == NODE and node.metered
    return node.limit


async def test_auto_balance_keeps_the_site_under_max_current(tmp_path: Path) -> None:
    em_port = free_port()
    store = Store(tmp_path / "db.sqlite3")
    # Fast: the balancer's pacing (raises, the pause after a shortage) runs in clock time.
    async with serve(_config(em_port), speed=20, store=store) as (base, rt):
        facade: ShellyFacade = rt_facade(rt)
        # The simulated meter and the auto_balance node are the runtime's, not the facade's.
        assert rt.sim_em is not None and rt.sim_em.port == em_port
        balance = rt.auto_balance
        assert facade.balance is balance
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

            assert _node(rt) == 16

            # the EV may take 16 A minus the house (the EV's own current is excluded from the EM reading)
            def cap_matches_house() -> bool:
                cap = balance.status("cp1").get("cap")
                return cap is not None and abs(cap - (16 - max(sim.house_currents))) <= 0.6

            await _until(cap_matches_house)
            await _until(lambda: 0 < ch.signaled <= 16 - max(sim.house_currents) + 0.6)
            await _until(lambda: max(sim.mains_currents) <= 16.7)
            # the one balancer binds the charger at its node; no lease or second loop is involved
            await _until(lambda: ch.allocation_source.text == f"circuit:{NODE}")
            assert "auto_balance" not in ch.leases
            # the meter sees the house and the EV (8 A each)
            await _until(lambda: max(balance.status("cp1").get("em_currents") or [0.0]) > 15)
            status = (await _rpc(client, "Service.GetStatus", {"id": 0}))["result"]["auto_balance"]
            assert status["active"] is True and status["reason"] in ("ok", "stale")
            assert status["error"] is None
            assert len(status["em_currents"]) == 3

            # a limit that leaves less than MIN for the EV pauses charging
            await _rpc(client, "Service.SetConfig", {"config": {"auto_balance": {"max_current": 6}}})
            await _until(lambda: ch.signaled == 0)
            await _rpc(client, "Service.SetConfig", {"config": {"auto_balance": {"max_current": 16}}})

            assert _node(rt) == 16
            await _until(lambda: ch.signaled > 0)

            # the meter goes away: after meter_timeout_s the node falls back (at most the fallback current)
            await rt.sim_em.stop()
            try:
                await _until(lambda: balance.status("cp1").get("reason") == "stale")
            except AssertionError:
                # Seen rarely in full-suite runs under load: say what the poller was doing.
                raise AssertionError(
                    f"auto_balance never went stale: {balance.status('cp1')}, tasks {rt.supervisor.health()}"
                ) from None
            await _until(lambda: ch.allocation_source.text == f"stale:{NODE}")
            assert ch.allocated <= rt.engine.site.fallback_current
            assert balance.status("cp1")["error"]

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
        assert _node(rt) == 16
        reply = await _rpc(client, "Service.SetConfig", {"config": {"auto_balance": {"enable": False}}})
        assert "result" in reply
        # off: the node is gone and the charger is back on its configured circuit (the mains here)
        assert _node(rt) is None and rt.charger("cp1").config.circuit is None
        assert NODE not in rt.engine.circuit_meters and "autobalance:cp1" not in rt.auto_balance.drivers
    store.close()


def rt_facade(rt: Runtime) -> ShellyFacade:
    """The Shelly facade mounted for this runtime (it registers a change listener)."""
    for listener in [*rt.listeners, *rt.view_listeners]:
        owner = getattr(listener, "__self__", None)
        if isinstance(owner, ShellyFacade):
            return owner
    raise AssertionError("no Shelly facade")


async def test_the_node_sits_between_the_charger_and_its_circuit_which_the_facades_still_name() -> None:
    config = make_config(
        {
            "site": {"mains_limit": 40, "circuits": [{"name": "garage", "limit": 32}]},
            "chargers": [{"id": "cp1", "circuit": "garage"}],
            "shelly": {"em_port": free_port()},  # nothing answers there: the node has no reading
        }
    )
    async with serve(config, speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as client:
        config_doc = {"auto_balance": {"enable": True, "em_ip": "127.0.0.1", "max_current": 20}}
        assert "result" in await _rpc(client, "Service.SetConfig", {"config": config_doc})
        node = next(c for c in rt.engine.site.circuits if c.name == NODE)
        assert (node.parent, node.limit, node.fuse) == ("garage", 20, 32)
        await _until(lambda: rt.auto_balance.status("cp1")["reason"] == "no_reading")
        await _until(lambda: rt.charger("cp1").allocation_source.text == f"stale:{NODE}")
        # SmartEVSE's CIRCUIT and SECC's circuit are the configured one, not the node above the charger.
        r = await client.post("/settings?current_max_circuit=30")
        assert r.status_code == 200, r.text
        assert rt.circuit_limit("garage") == 30 and _node(rt) == 20
        assert (await client.get("/settings")).json()["settings"]["current_max_circuit"] == 30
        assert (await client.get("/api/v1/configuration")).json()["circuit"] == "garage"
        assert "result" in await _rpc(
            client, "Service.SetConfig", {"config": {"auto_balance": {"enable": False}}}
        )
        assert _node(rt) is None and rt.charger("cp1").config.circuit == "garage"
