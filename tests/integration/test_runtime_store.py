"""The runtime on a manual clock with a real SQLite store: sessions, settings, counters, leases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from evpilot.control.clock import ManualClock
from evpilot.control.runtime import Runtime, UnknownCharger
from evpilot.core import commands as cmd
from evpilot.core.errors import CommandError
from evpilot.core.session import SessionRecord
from evpilot.sim.ev import CarSpec
from evpilot.store.sqlite import SCHEMA_VERSION, Store
from tests.helpers import make_config

QUIET = {"sim": {"first_spike_s": None, "spike_rate_h": 0}}


def run_for(rt: Runtime, clock: ManualClock, seconds: int) -> None:
    """Tick the runtime once per clock second."""
    for _ in range(seconds):
        clock.advance(1.0)
        rt.tick()


def test_store_schema_sessions_settings_and_counters(tmp_path: Path) -> None:
    path = tmp_path / "db" / "evpilot.sqlite3"
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    rec = SessionRecord("s1", "cp1", 100.0, 200.0, 1.5, 7000.0, "user", "TAG")
    store.add_session(rec)
    store.add_session(SessionRecord("s2", "cp2", 300.0, 400.0, 2.0, 3000.0, "shutdown", None))
    store.set_setting("site", {"mode": "solar"})
    store.save_lifetime({"cp1": 10.0})
    store.save_lifetime({"cp1": 4.0})  # never lowers the stored counter
    store.close()
    again = Store(path)
    assert [s.id for s in again.sessions()] == ["s2", "s1"]
    assert again.sessions("cp1") == [rec]
    assert again.sessions(limit=1)[0].id == "s2"
    assert again.get_setting("site") == {"mode": "solar"}
    assert again.get_setting("missing") is None
    assert again.lifetime("cp1") == 10.0 and again.lifetime("cp9") == 0.0
    again.close()


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "evpilot.sqlite3"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(RuntimeError, match="newer"):
        Store(path)


def test_settings_survive_a_restart_and_a_stale_one_is_dropped_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    rt = Runtime(make_config(QUIET), ManualClock(), store)
    rt.apply(cmd.SetUserLimit("cp1", 20.0), "test")
    rt.apply(cmd.SetEnergyCap("cp1", 12.0), "test")
    rt.apply(cmd.SetMode("cp1", "solar"), "test")
    rt.set_site_mode("normal")
    again = Runtime(make_config(QUIET), ManualClock(), store)
    ch = again.charger("cp1")
    assert (ch.user_limit, ch.energy_cap_kwh, ch.mode) == (20.0, 12.0, "solar")
    assert again.engine.site.mode == "normal"
    # MAX lowered below the saved user limit: the limit is dropped, the other settings stay.
    smaller = make_config({**QUIET, "chargers": [{"id": "cp1", "max_current": 16}]})
    third = Runtime(smaller, ManualClock(), store)
    ch = third.charger("cp1")
    assert ch.user_limit is None and ch.energy_cap_kwh == 12.0 and ch.mode == "solar"
    store.close()


def test_refused_command_changes_nothing_and_unknown_charger_raises(tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.sqlite3")
    try:
        rt = Runtime(make_config(QUIET), ManualClock(), store)
        rt.apply(cmd.SetUserLimit("cp1", 10.0), "test")
        with pytest.raises(CommandError):
            rt.apply(cmd.SetUserLimit("cp1", 5.9), "test")
        assert rt.charger("cp1").user_limit == 10.0
        with pytest.raises(UnknownCharger):
            rt.apply(cmd.SetEnabled("nope", False), "test")
        with pytest.raises(CommandError):
            rt.set_site_mode("turbo")
    finally:
        store.close()  # its writer thread would outlive the test


async def test_shutdown_closes_sessions_and_keeps_the_lifetime_counter(tmp_path: Path) -> None:
    path = tmp_path / "evpilot.sqlite3"
    clock = ManualClock()
    store = Store(path)
    rt = Runtime(make_config(QUIET), clock, store)
    rt.tick()
    run_for(rt, clock, 120)
    ch = rt.charger("cp1")
    assert ch.session is not None and ch.session.energy_kwh > 0.2
    lifetime = ch.lifetime_kwh
    await rt.stop()
    (rec,) = store.sessions()
    assert rec.stop_reason == "shutdown" and rec.energy_kwh == pytest.approx(lifetime, abs=1e-3)
    store.close()
    store = Store(path)
    clock2 = ManualClock(clock.now() + 10)
    rt2 = Runtime(make_config(QUIET), clock2, store)
    assert rt2.charger("cp1").lifetime_kwh == pytest.approx(lifetime)
    rt2.tick()
    run_for(rt2, clock2, 30)
    assert rt2.charger("cp1").lifetime_kwh > lifetime
    await rt2.stop()
    assert len(store.sessions()) == 2
    assert store.lifetime("cp1") == pytest.approx(rt2.charger("cp1").lifetime_kwh)
    store.close()


def test_lapsed_allocation_lease_makes_the_sim_hardware_fall_back(tmp_path: Path) -> None:
    clock = ManualClock()
    config = make_config(
        {**QUIET, "chargers": [{"id": "cp1", "safe_current": 8}], "control": {"lease_ticks": 3}}
    )
    rt = Runtime(config, clock, None)
    rt.tick()
    run_for(rt, clock, 30)
    assert min(rt.charger("cp1").currents) > 20
    # The controller stops renewing (no ticks); the simulated charger falls back on its own.
    assert rt.sim is not None
    rt.sim.advance_to(clock.now() + 15)
    assert max(rt.sim.pilots["cp1"].currents) == pytest.approx(8.0)


def test_sim_plug_twice_is_refused_and_unplug_ends_the_session(tmp_path: Path) -> None:
    clock = ManualClock()
    store = Store(tmp_path / "evpilot.sqlite3")
    rt = Runtime(make_config(QUIET), clock, store)
    rt.tick()
    run_for(rt, clock, 5)
    with pytest.raises(CommandError):
        rt.sim_plug("cp1", CarSpec())
    rt.sim_unplug("cp1")
    run_for(rt, clock, 1)
    (rec,) = store.sessions()
    assert rec.stop_reason == "ev_disconnected"
    rt.sim_plug("cp1", CarSpec(soc=99.9))
    run_for(rt, clock, 2)
    assert rt.charger("cp1").session is not None
    store.close()


def test_site_settings_changed_at_run_time_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "evpilot.sqlite3"
    store = Store(path)
    rt = Runtime(make_config(QUIET), ManualClock(), store)
    rt.set_site_mode("solar")
    rt.set_min_current(8)
    rt.set_capacity_limit(40)
    rt.update_site(cap_stop_s=300.0, solar={"stop_min": 15.0, "max_import": 3.0})
    rt.update_site(solar={"start_current": 12.0})
    store.close()

    store = Store(path)
    again = Runtime(make_config(QUIET), ManualClock(), store)
    site = again.engine.site
    assert (site.mode, site.capacity_limit, site.cap_stop_s) == ("solar", 40, 300.0)
    assert (site.solar.stop_min, site.solar.max_import, site.solar.start_current) == (15.0, 3.0, 12.0)
    assert again.charger("cp1").config.min_current == 8
    store.close()


def test_a_chargers_min_max_and_priority_survive_a_restart_and_a_later_site_min_replaces_its_min(
    tmp_path: Path,
) -> None:
    path = tmp_path / "evpilot.sqlite3"
    two = QUIET | {"chargers": [{"id": "cp1"}, {"id": "cp2"}]}
    store = Store(path)
    rt = Runtime(make_config(two), ManualClock(), store)
    rt.apply(cmd.SetFuses(charger="cp1", min_current=10, max_current=20, priority=4), "test")
    with pytest.raises(CommandError, match="priority"):
        rt.apply(cmd.SetFuses(charger="cp2", priority=True), "test")  # type: ignore[arg-type]
    store.close()

    store = Store(path)
    again = Runtime(make_config(two), ManualClock(), store)
    cp1, cp2 = again.charger("cp1").config, again.charger("cp2").config
    assert (cp1.min_current, cp1.max_current, cp1.priority) == (10, 20, 4)
    assert (cp2.min_current, cp2.max_current, cp2.priority) == (6, 32, 0)
    again.set_min_current(7)
    store.close()

    store = Store(path)
    third = Runtime(make_config(two), ManualClock(), store)
    assert [third.charger(c).config.min_current for c in ("cp1", "cp2")] == [7, 7]
    assert third.charger("cp1").config.priority == 4
    store.close()
