"""Commands and sources as values: JSON round trips, the one set of range rules, all-or-nothing batches."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from evpilot.config import ChargerModel, SiteModel, field_bounds
from evpilot.control.clock import ManualClock
from evpilot.control.runtime import Runtime, UnknownCharger
from evpilot.core import commands as cmd
from evpilot.core import sources
from evpilot.core.charger import ChargerConfig
from evpilot.core.errors import CommandError
from evpilot.core.sources import Source, SourceKind
from tests.helpers import make_config

EXAMPLES: list[cmd.Command] = [
    cmd.SetEnabled("cp1", False),
    cmd.SetAvailable("cp1", True),
    cmd.Authorize("cp1", True, "CARD-7"),
    cmd.Start("cp1", "CARD-7"),
    cmd.Stop("cp1"),
    cmd.SetUserLimit("cp1", 10.5),
    cmd.SetOverride("cp1", None),
    cmd.SetLease("cp1", "lease", 12.0, 1000.0),
    cmd.SetPowerLease("cp1", "lease_power", 4140.0, 1000.0),
    cmd.RenewLeases("cp1", ("lease", "lease_power"), 2000.0),
    cmd.SetEnergyCap("cp1", 5.0),
    cmd.SetTimeCap("cp1", 90.0),
    cmd.SetUnderPower("cp1", 500.0),
    cmd.SetAutoCharge("cp1", False),
    cmd.SetMode("cp1", "solar"),
    cmd.SetPhaseMode("cp1", "auto"),
    cmd.ResetFaults("cp1"),
    cmd.ResetLifetime("cp1"),
    cmd.SetSchedule("cp1", 5000.0, 9000.0, True),
    cmd.ClearStart("cp1"),
    cmd.SetSiteMode("normal"),
    cmd.SetCapacityLimit(40.0),
    cmd.SetCapStop(600.0),
    cmd.SetSolar(start_current=8.0),
    cmd.SetMinCurrent(7.0),
    cmd.SetFuses(mains=30.0, charger="cp1", max_current=24.0),
    cmd.SetSiteCap("user", 20.0),
    cmd.SetGridRelay(True),
    cmd.Swipe("cp1", "04A2B3C4"),
    cmd.SetRfidMode("cp1", "learn"),
    cmd.SetSwitch("cp1", True),
    cmd.SetCableLock("cp1", "force_unlock"),
    cmd.LearnCard("04A2B3C4", "Anna", ("cp1",), 1798761600.0, 20.0),
    cmd.DeleteCards(None),
    cmd.SetOcppTag("cp1", "04A2B3C4", "card"),
]


def test_every_kind_has_an_example_and_survives_a_json_round_trip() -> None:
    assert {c.kind for c in EXAMPLES} == set(cmd.CommandKind)
    for command in EXAMPLES:
        text = json.dumps(cmd.to_json(command))
        assert cmd.from_json(json.loads(text)) == command
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(command, dataclasses.fields(command)[0].name, None)


def test_from_json_refuses_an_unknown_kind_or_field() -> None:
    with pytest.raises(CommandError, match="unknown command"):
        cmd.from_json({"command": "launch"})
    with pytest.raises(CommandError):
        cmd.from_json({"command": "set_enabled", "charger": "cp1", "enabled": True, "speed": 9})


@pytest.mark.parametrize(
    ("command", "field", "allowed"),
    [
        (cmd.SetUserLimit("cp", 17.0), "current_limit", (6.0, 16.0)),
        (cmd.SetUserLimit("cp", 5.0), "current_limit", (6.0, 16.0)),
        (cmd.SetOverride("cp", 7.0), "override_current", (8.0, 16.0)),
        (cmd.SetLease("cp", "lease", 81.0), "lease", (0.0, 80.0)),
        (cmd.SetEnergyCap("cp", 1001.0), "global_charge_limit", (0.0, 1000.0)),
        (cmd.SetTimeCap("cp", -1.0), "global_time_limit", (0.0, 1440.0)),
        (cmd.SetUnderPower("cp", float("nan")), "under_power_limit", (0.0, 100_000.0)),
    ],
)
def test_a_refusal_names_the_field_and_this_chargers_range(
    command: cmd.ChargerCommand, field: str, allowed: tuple[float, float]
) -> None:
    config = ChargerConfig("cp", max_current=16.0, min_current=8.0)
    with pytest.raises(CommandError) as err:
        cmd.check(command, config)
    assert (err.value.field, err.value.allowed) == (field, allowed)
    assert f"allowed {allowed[0]:g} to {allowed[1]:g}" in err.value.message


def test_a_one_phase_charger_refuses_phase_switching() -> None:
    with pytest.raises(CommandError, match="1-phase"):
        cmd.check(cmd.SetPhaseMode("cp", "auto"), ChargerConfig("cp", phases=1))
    cmd.check(cmd.SetPhaseMode("cp", "always_1p"), ChargerConfig("cp", phases=1))


def test_a_batch_is_all_or_nothing_and_each_applied_command_is_logged_with_its_origin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="evpilot")
    rt = Runtime(make_config({"chargers": [{"id": "cp1"}, {"id": "cp2"}]}), ManualClock())
    ch = rt.charger("cp1")
    for bad in (
        [cmd.SetUserLimit("cp1", 10.0), cmd.SetMode("cp1", "turbo")],
        [cmd.SetUserLimit("cp1", 10.0), cmd.SetEnabled("nope", False)],
        [cmd.SetSiteMode("normal"), cmd.SetCapacityLimit(5.0)],
        [cmd.SetEnabled("cp1", False), cmd.SetSiteCap("grid", 10.0)],
    ):
        with pytest.raises((CommandError, UnknownCharger)):
            rt.apply(bad, "test")
    assert (ch.user_limit, ch.mode, ch.enabled, rt.engine.site.mode) == (None, None, True, "smart")
    assert not rt.engine.site_caps and not rt.recent_commands
    rt.apply([cmd.SetUserLimit("cp1", 10.0), cmd.SetSiteCap("user", 20.0)], "mqtt:native")
    assert ch.user_limit == 10.0 and rt.engine.site_caps["user"].amps == 20.0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("command ")]
    assert lines == [
        "command {'command': 'set_user_limit', 'charger': 'cp1', 'amps': 10.0} origin=mqtt:native",
        "command {'command': 'set_site_cap', 'source': 'user', 'amps': 20.0, 'expires_at': None}"
        " origin=mqtt:native",
    ]
    assert [(c["origin"], c["command"], c["fields"]) for c in rt.recent_commands] == [
        ("mqtt:native", "set_user_limit", {"charger": "cp1", "amps": 10.0}),
        ("mqtt:native", "set_site_cap", {"source": "user", "amps": 20.0, "expires_at": None}),
    ]


def test_sources_render_as_the_wire_strings_and_parse_back() -> None:
    wire = {
        sources.MAINS: "mains",
        sources.circuit("garage"): "circuit:garage",
        sources.stale("garage"): "stale:garage",
        sources.STALE_CHARGER: "stale:charger",
        sources.lease("lease"): "lease",
        sources.lease("auto_balance"): "auto_balance",
        sources.USER: "user",
        sources.site("user"): "site:user",
        sources.LAPSED: "lease",
        sources.PHASE_SWITCH: "phase_switch",
        sources.ocpp("TxProfile"): "ocpp:TxProfile",
    }
    for source, text in wire.items():
        assert str(source) == source.text == text
        if source is not sources.LAPSED:  # the lapsed allocation shows as `lease`, as it always did
            assert sources.parse(text) == source
    # The site's user cap is not the charger's own user limit.
    assert sources.site("user") != sources.USER and sources.site("user").kind is SourceKind.SITE
    # The OCPP station cap is a site cap whose source is the profile's own (as docs/ocpp.md says).
    station = sources.site("ocpp:ChargePointMaxProfile")
    assert station.kind is SourceKind.OCPP and station.text == "ocpp:ChargePointMaxProfile"
    assert Source(SourceKind.CIRCUIT, "garage") == sources.circuit("garage")
    assert hash(Source(SourceKind.CIRCUIT, "garage")) == hash(sources.circuit("garage"))


def test_the_command_ranges_are_the_config_files() -> None:
    assert field_bounds(SiteModel, "capacity_limit") == cmd.CAPACITY_RANGE
    assert field_bounds(ChargerModel, "min_current") == cmd.MIN_CURRENT_RANGE
    assert field_bounds(ChargerModel, "min_current")[0] == cmd.MIN_LIMIT_A
    assert field_bounds(ChargerModel, "max_current")[1] == cmd.MAX_LEASE_A


def test_a_command_read_from_json_is_checked_like_any_other() -> None:
    rt = Runtime(make_config(), ManualClock())
    for doc in (
        {"command": "set_enabled", "charger": "cp1", "enabled": "no"},
        {"command": "set_user_limit", "charger": "cp1", "amps": "10"},
        {"command": "set_grid_relay", "open": 1},
        {"command": "start", "charger": "cp1", "id_tag": "x" * 65},
    ):
        with pytest.raises(CommandError):
            rt.apply(cmd.from_json(doc), "test")
    assert rt.charger("cp1").enabled and not rt.engine.grid_relay_open and not rt.recent_commands


def test_an_access_command_is_checked_before_anything_changes() -> None:
    rt = Runtime(
        make_config({"chargers": [{"id": "cp1", "rfid": "enable_all"}, {"id": "cp2"}]}), ManualClock()
    )
    for doc, field in (
        ({"command": "swipe", "charger": "cp1", "uid": "04:a2:b3:c4"}, "uid"),
        ({"command": "set_switch", "charger": "cp1", "closed": "yes"}, "closed"),
        ({"command": "set_cable_lock", "charger": "cp1", "setting": "sometimes"}, "setting"),
        ({"command": "set_rfid_mode", "charger": "cp2", "mode": "enable_one"}, "mode"),
        ({"command": "learn_card", "uid": "04A2B3C4", "chargers": ["nope"]}, "chargers"),
        ({"command": "delete_cards", "uid": "xyz"}, "uid"),
        ({"command": "set_ocpp_tag", "charger": "cp1", "tag": "T" * 65, "method": "card"}, "id_tag"),
        ({"command": "set_ocpp_tag", "charger": "cp1", "tag": "T1", "method": "magic"}, "method"),
    ):
        with pytest.raises(CommandError) as err:
            rt.apply([cmd.LearnCard("11223344"), cmd.from_json(doc)], "test")
        assert err.value.field == field
    with pytest.raises(UnknownCharger):
        rt.apply(cmd.Swipe("nope", "04A2B3C4"), "test")
    assert not rt.access.cards and not rt.recent_commands and rt.access.of("cp1").rfid.value == "enable_all"
    rt.apply([cmd.LearnCard("04A2B3C4"), cmd.Swipe("cp1", "04A2B3C4")], "test")
    assert rt.charger("cp1").authorized and rt.access.last_swipe is not None
    assert rt.access.last_swipe.action == "authorize"


def test_a_batch_checks_each_command_against_the_max_and_min_the_earlier_ones_set() -> None:
    rt = Runtime(make_config(), ManualClock())
    ch = rt.charger("cp1")
    assert ch.config.max_current == 32
    lower_max = cmd.SetFuses(charger="cp1", max_current=16)
    with pytest.raises(CommandError, match="allowed 6 to 16"):
        rt.apply([lower_max, cmd.SetOverride("cp1", 20)], "test")
    with pytest.raises(CommandError, match="allowed 10 to 32"):
        rt.apply([cmd.SetMinCurrent(10), cmd.SetOverride("cp1", 8)], "test")
    assert (ch.config.max_current, ch.config.min_current, ch.override) == (32, 6, None)
    rt.apply([lower_max, cmd.SetOverride("cp1", 16)], "test")
    assert (ch.config.max_current, ch.override) == (16, 16)
