"""Golden scenarios pin the site engine's behaviour (tests/scenarios/*.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scenario_runner import all_scenarios, load, run


def test_there_are_enough_scenarios() -> None:
    assert len(all_scenarios()) >= 25


@pytest.mark.parametrize("path", all_scenarios(), ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    result = run(load(path))
    assert not result.failures, "\n".join(result.failures[:20])
