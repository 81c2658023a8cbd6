"""The all-at-fallback rule of the config, and the wiring and phase-switch keys."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from evpilot.config import AppConfig, ConfigError, parse_config
from evpilot.core.units import PhaseRotation


def _problems(data: dict[str, Any]) -> list[str]:
    """The messages of the `site` errors parse_config raises for `data`."""
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert all(key == "site" for key, _ in exc.value.errors), exc.value.errors
    return [msg for _, msg in exc.value.errors]


def _one_phase(cid: str, phase: int, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "phases": 1, "phase": phase, **extra}


def test_message_names_node_phase_sum_and_limit() -> None:
    data = {
        "site": {"mains_limit": 63, "circuits": [{"name": "garage", "limit": 25}]},
        "chargers": [_one_phase(f"cp{i}", 2, circuit="garage", safe_current=16) for i in range(3)],
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    want = "site: circuit 'garage' L2: chargers' safe_current adds up to 48 A, above its 25 A limit"
    assert str(exc.value) == want


def test_eight_chargers_at_16_a_on_a_10_a_circuit_are_refused() -> None:
    data = {
        "site": {"mains_limit": 200, "circuits": [{"name": "row", "limit": 10}], "fallback_current": 0},
        "chargers": [{"id": f"cp{i}", "circuit": "row", "safe_current": 16} for i in range(8)],
    }
    assert _problems(data) == [
        "circuit 'row' L1: chargers' safe_current adds up to 128 A, above its 10 A limit"
    ]


def test_fallback_current_above_the_mains_is_refused() -> None:
    data = {"site": {"mains_limit": 25, "fallback_current": 80}, "chargers": [{"id": "cp1"}]}
    # A charger never draws more than its MAX (32 A by default), so 80 A counts as 32 A.
    assert _problems(data) == ["mains L1: chargers' fallback_current adds up to 32 A, above its 25 A limit"]


def test_both_sums_on_every_node_are_reported() -> None:
    data = {
        "site": {"mains_limit": 25, "fallback_current": 10, "circuits": [{"name": "garage", "limit": 16}]},
        "chargers": [{"id": f"cp{i}", "circuit": "garage", "safe_current": 10} for i in range(3)],
    }
    assert _problems(data) == [
        "mains L1: chargers' safe_current adds up to 30 A, above its 25 A limit",
        "mains L1: chargers' fallback_current adds up to 30 A, above its 25 A limit",
        "circuit 'garage' L1: chargers' safe_current adds up to 30 A, above its 16 A limit",
        "circuit 'garage' L1: chargers' fallback_current adds up to 30 A, above its 16 A limit",
    ]


def test_a_sum_equal_to_the_limit_is_allowed() -> None:
    data = {
        "site": {"mains_limit": 25, "fallback_current": 12.5},
        "chargers": [{"id": "a", "safe_current": 12.5}, {"id": "b", "safe_current": 12.5}],
    }
    assert len(parse_config(data).chargers) == 2


def test_nested_circuits_count_every_charger_below_them() -> None:
    circuits = [
        {"name": "hall", "limit": 32},
        {"name": "row-a", "limit": 20, "parent": "hall"},
        {"name": "row-b", "limit": 20, "parent": "hall"},
        {"name": "bay", "limit": 16, "parent": "row-b"},
    ]
    chargers = [
        {"id": "a1", "circuit": "row-a", "safe_current": 10},
        {"id": "a2", "circuit": "row-a", "safe_current": 10},
        {"id": "b1", "circuit": "bay", "safe_current": 8},
        {"id": "b2", "circuit": "bay", "safe_current": 8},
    ]
    data = {"site": {"mains_limit": 63, "circuits": circuits, "fallback_current": 0}, "chargers": chargers}
    # Each row and the bay fit on their own; the hall carries all four.
    assert _problems(data) == [
        "circuit 'hall' L1: chargers' safe_current adds up to 36 A, above its 32 A limit"
    ]
    chargers[3]["safe_current"] = 4
    assert len(parse_config(data).chargers) == 4


def test_one_phase_chargers_on_different_phases_sum_separately() -> None:
    site = {"mains_limit": 25, "fallback_current": 16}
    spread = [_one_phase("a", 1, safe_current=16), _one_phase("b", 2, safe_current=16), _one_phase("c", 3)]
    assert len(parse_config({"site": site, "chargers": spread}).chargers) == 3
    stacked = [*spread[:2], _one_phase("c", 2)]
    # On L2: safe_current 16 + 6 = 22 A fits, fallback_current 16 + 16 = 32 A does not.
    assert _problems({"site": site, "chargers": stacked}) == [
        "mains L2: chargers' fallback_current adds up to 32 A, above its 25 A limit"
    ]


@pytest.mark.parametrize("rotation", ["L1L2L3", "L2L3L1", "L3L1L2"])
def test_a_rotated_three_phase_charger_loads_every_mains_phase(rotation: str) -> None:
    chargers = [
        {"id": "three", "phase_rotation": rotation, "safe_current": 16},
        _one_phase("one", 3, safe_current=12),
    ]
    data = {"site": {"mains_limit": 25, "fallback_current": 0}, "chargers": chargers}
    assert _problems(data) == ["mains L3: chargers' safe_current adds up to 28 A, above its 25 A limit"]


def test_zero_stops_and_is_always_allowed() -> None:
    data = {
        "site": {"mains_limit": 25, "fallback_current": 0, "circuits": [{"name": "row", "limit": 10}]},
        "chargers": [{"id": f"cp{i}", "circuit": "row", "safe_current": 0} for i in range(50)],
    }
    assert len(parse_config(data).chargers) == 50


def test_the_rule_holds_for_the_model_itself() -> None:
    with pytest.raises(ValidationError, match="chargers' fallback_current adds up to 42 A"):
        chargers = [{"id": f"cp{i}", "safe_current": 0} for i in range(7)]
        AppConfig.model_validate({"site": {"fallback_current": 6}, "chargers": chargers})


def test_default_config_passes() -> None:
    assert AppConfig().chargers[0].safe_current == 6


def test_max_per_session_reaches_the_core() -> None:
    assert parse_config({}).site_core().phase_switch.max_per_session == 4
    config = parse_config({"site": {"phase_switch": {"max_per_session": 0}}})
    assert config.site_core().phase_switch.max_per_session == 0
    config = parse_config({"site": {"phase_switch": {"max_per_session": 100}}})
    assert config.site_core().phase_switch.max_per_session == 100
    for bad in (-1, 101, 2.5):
        with pytest.raises(ConfigError) as exc:
            parse_config({"site": {"phase_switch": {"max_per_session": bad}}})
        assert [key for key, _ in exc.value.errors] == ["site.phase_switch.max_per_session"]


def test_circuit_meter_api_marks_the_circuit_metered() -> None:
    circuits = [{"name": "garage", "limit": 25, "meter": "api"}, {"name": "shed", "limit": 16}]
    site = parse_config({"site": {"circuits": circuits}}).site_core()
    assert [(c.name, c.metered) for c in site.circuits] == [("garage", True), ("shed", False)]


def test_phase_is_refused_on_a_three_phase_charger() -> None:
    with pytest.raises(ConfigError, match="'phase' is for 1-phase chargers"):
        parse_config({"chargers": [{"id": "cp1", "phase": 2}]})


def test_phase_rotation_is_refused_on_a_one_phase_charger() -> None:
    with pytest.raises(ConfigError, match="a 1-phase charger names its mains phase with 'phase'"):
        parse_config({"chargers": [{"id": "cp1", "phases": 1, "phase_rotation": "L2L3L1"}]})


@pytest.mark.parametrize(
    ("rotation", "order"), [("L1L2L3", (0, 1, 2)), ("L2L3L1", (1, 2, 0)), ("L3L1L2", (2, 0, 1))]
)
def test_phase_rotations_are_accepted_and_mapped(rotation: str, order: tuple[int, int, int]) -> None:
    core = parse_config({"chargers": [{"id": "cp1", "phase_rotation": rotation}]}).chargers[0].core()
    assert core.phase_rotation is PhaseRotation(rotation)
    assert core.phase_map.order == order and core.phase_map.used(1) == (order[0],)


def test_unknown_phase_rotation_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"chargers": [{"id": "cp1", "phase_rotation": "L1L3L2"}]})
    assert [key for key, _ in exc.value.errors] == ["chargers.0.phase_rotation"]
