"""The under-power limit: a session whose power stays below it for a minute is stopped."""

from __future__ import annotations

import pytest

from evpilot.core.charger import UNDER_POWER_S, Charger, ChargerConfig, PilotReading
from evpilot.core.errors import CommandError
from evpilot.core.session import LimitReached


def charging(now: float, amps: float) -> PilotReading:
    return PilotReading(taken_at=now, letter="C", currents=(amps, amps, amps), voltages=(230.0,) * 3)


def started(limit_w: float) -> Charger:
    ch = Charger.create(ChargerConfig(id="cp1"))
    ch.set_under_power_limit(limit_w)
    ch.observe(charging(0.0, 0.0))
    ch.apply(0.0, 16.0, "test", 3, 5.0)
    assert ch.contactor
    return ch


def test_low_power_for_a_minute_reaches_the_limit() -> None:
    ch = started(2000)
    ch.observe(charging(1.0, 1.0))  # 690 W
    ch.observe(charging(1.0 + UNDER_POWER_S - 1, 1.0))
    assert ch.limit_reached is None
    ch.observe(charging(1.0 + UNDER_POWER_S, 1.0))
    assert ch.limit_reached == LimitReached.UNDER_POWER
    assert not ch.permitted()
    ch.set_under_power_limit(None)
    assert ch.limit_reached is None


def test_power_back_above_the_limit_restarts_the_wait() -> None:
    ch = started(2000)
    ch.observe(charging(1.0, 1.0))
    ch.observe(charging(40.0, 10.0))  # 6.9 kW
    ch.observe(charging(41.0, 1.0))
    ch.observe(charging(41.0 + UNDER_POWER_S - 1, 1.0))
    assert ch.limit_reached is None


def test_range_is_checked() -> None:
    ch = Charger.create(ChargerConfig(id="cp1"))
    with pytest.raises(CommandError):
        ch.set_under_power_limit(-1)
    ch.set_under_power_limit(0)
    assert ch.under_power_w is None
