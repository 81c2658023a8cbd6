"""Every meter is its own node for the stale and invalid rules: mains, a circuit and an EV meter, each a
real driver reading a loopback server, on a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from evpilot.control.build import assemble
from evpilot.control.clock import ManualClock
from evpilot.control.runtime import Runtime
from evpilot.devices.homewizard import PATH
from evpilot.devices.registry import DriverUnavailable
from tests.fixture_http import FixtureServer, fixture
from tests.helpers import make_config

P1 = fixture("homewizard_p1_3phase.json")
EM = fixture("shelly_pro3em_em_status.json")
# What the EV meter says the car draws on its three phases.
EV = {**P1, "active_current_l1_a": 10, "active_current_l2_a": 10, "active_current_l3_a": 10}
EV.update(active_power_l1_w=2300, active_power_l2_w=2300, active_power_l3_w=2300, active_power_w=6900)


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, FixtureServer]]:
    out = {name: FixtureServer() for name in ("mains", "circuit", "ev")}
    out["mains"].json(PATH, P1)
    out["circuit"].json("/rpc/EM.GetStatus", EM)
    out["ev"].json(PATH, EV)
    for s in out.values():
        await s.start()
    yield out
    for s in out.values():
        await s.stop()


def config(servers: dict[str, FixtureServer]) -> dict[str, Any]:
    def hw(name: str) -> dict[str, Any]:
        return {"type": "homewizard", "host": "127.0.0.1", "port": servers[name].port}

    return {
        "site": {
            "mains_limit": 40,
            "mains_meter": hw("mains"),
            "meter_timeout_s": 11,
            "circuits": [
                {
                    "name": "garage",
                    "limit": 32,
                    "meter": {"type": "shelly", "host": "127.0.0.1", "port": servers["circuit"].port},
                }
            ],
        },
        "chargers": [{"id": "cp1", "circuit": "garage", "ev_meter": hw("ev")}],
        "sim": {"pv_kwp": 0, "spike_rate_h": 0, "first_spike_s": None},
    }


async def run_for(rt: Runtime, clock: ManualClock, seconds: int, poll: tuple[str, ...]) -> None:
    """Tick once a second, reading the named meters before each tick."""
    for _ in range(seconds):
        clock.advance(1)
        for name in poll:
            await rt.meters[name].poll()
        rt.tick()


ALL = ("mains", "circuit:garage", "ev:cp1")


async def test_each_meter_goes_stale_on_its_own(servers: dict[str, FixtureServer]) -> None:
    clock = ManualClock()
    rt = Runtime(make_config(config(servers)), clock)
    assert set(rt.meters) == set(ALL)
    await run_for(rt, clock, 30, ALL)
    ch = rt.engine.chargers["cp1"]
    # The EV meter's values are the charger's, stamped with the EV meter's read time.
    assert ch.currents == (10.0, 10.0, 10.0)
    assert ch.reading_at == clock.now()
    assert ch.allocation_source not in ("fallback", "stale:charger", "stale:garage")
    site = rt.site_doc()
    assert site["mains"]["fresh"] is True and site["fallback"] is False
    assert set(site["meters"]) == set(ALL)
    assert site["meters"]["circuit:garage"]["currents"] == [4.029, -4.027, 3.03]

    # The EV meter falls silent: after meter_timeout_s only this charger is stale.
    await servers["ev"].stop()
    await run_for(rt, clock, 12, ("mains", "circuit:garage", "ev:cp1"))
    assert ch.allocation_source.text == "stale:charger"
    assert ch.allocated <= ch.config.safe_current
    assert rt.site_doc()["mains"]["fresh"] is True
    ev_doc = next(m for m in rt.meters_doc() if m["name"] == "ev:cp1")
    assert ev_doc["online"] is False and ev_doc["errors"] == {"unreachable": 12}
    assert ev_doc["reading"]["age_s"] == 12.0

    # It answers again: the charger is back on its meter by itself.
    await servers["ev"].start(servers["ev"].port)
    await run_for(rt, clock, 2, ALL)
    assert ch.allocation_source.text != "stale:charger"

    # The circuit meter falls silent: the chargers below it fall back, the mains stays fresh.
    await servers["circuit"].stop()
    await run_for(rt, clock, 12, ALL)
    assert ch.allocation_source.text == "stale:garage"
    assert rt.site_doc()["mains"]["fresh"] is True

    # The mains meter too: the whole site falls back.
    await servers["mains"].stop()
    await run_for(rt, clock, 12, ALL)
    assert ch.allocation_source.text == "fallback"
    assert rt.site_doc()["fallback"] is True and rt.site_doc()["mains"]["fresh"] is False


async def test_absurd_mains_reading_is_rejected_and_the_node_goes_stale(
    servers: dict[str, FixtureServer],
) -> None:
    clock = ManualClock()
    rt = Runtime(make_config(config(servers)), clock)
    await run_for(rt, clock, 5, ALL)
    servers["mains"].json(PATH, {**P1, "active_current_l1_a": float("nan")})
    await run_for(rt, clock, 12, ALL)
    mains = next(m for m in rt.meters_doc() if m["name"] == "mains")
    assert set(mains["errors"]) == {"protocol"}  # NaN is not JSON: the meter's answer is refused whole
    servers["mains"].json(PATH, {**P1, "active_current_l1_a": -4000})
    await run_for(rt, clock, 1, ALL)
    mains = next(m for m in rt.meters_doc() if m["name"] == "mains")
    assert mains["errors"]["absurd"] == 1
    assert rt.site_doc()["fallback"] is True


def test_a_meter_type_without_a_registered_driver_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    from evpilot.devices import registry

    monkeypatch.delitem(registry.METER_DRIVERS, "shelly")
    cfg = make_config({"site": {"mains_meter": {"type": "shelly", "host": "127.0.0.1"}}})
    with pytest.raises(DriverUnavailable, match="meter mains: driver 'shelly' is not available"):
        assemble(cfg, 0.0)
    [(key, reason)] = registry.unavailable(cfg)
    assert key == "site.mains_meter"
    assert reason.startswith(
        "meter mains: driver 'shelly' is not available in this installation (available: "
    )
    assert "shelly" not in reason.split("available: ")[1]


async def test_an_auto_balance_node_shows_its_shelly_meter() -> None:
    from evpilot.control.autobalance import AutoBalanceSettings

    server = FixtureServer()
    server.json("/rpc/EM.GetStatus", EM)
    await server.start()
    rt = Runtime(make_config({"shelly": {"em_port": server.port}}), ManualClock())
    try:
        await rt.start()
        rt.auto_balance.configure("cp1", AutoBalanceSettings(enable=True, em_ip="127.0.0.1", max_current=20))
        await rt.auto_balance.drivers["cp1"].poll()
        node = next(m for m in rt.meters_doc() if m["name"] == "circuit:auto_balance:cp1")
        assert (node["driver"], node["address"], node["online"]) == (
            "shelly",
            f"127.0.0.1:{server.port}",
            True,
        )
        assert node["reading"]["currents"] == [4.029, -4.027, 3.03]
    finally:
        await rt.stop()
        await server.stop()
