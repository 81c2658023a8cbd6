"""OCPP charging profiles as schedules: stacking, validity, recurrence, units and the composite."""

from __future__ import annotations

import math

import pytest

from evpilot.core import sources
from evpilot.core.charger import Charger, ChargerConfig
from evpilot.core.profiles import (
    DAY_S,
    WEEK_S,
    ChargingProfile,
    ConnectorCap,
    Kind,
    Period,
    ProfileError,
    ProfileSet,
    Purpose,
    RateUnit,
    Recurrency,
    SchedulePeriod,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a Thursday


def prof(
    pid: int,
    purpose: Purpose,
    periods: list[tuple[float, float]],
    *,
    connector: int = 1,
    level: int = 0,
    kind: Kind = Kind.ABSOLUTE,
    start: float | None = T0,
    duration: float | None = None,
    unit: RateUnit = RateUnit.A,
    **extra: object,
) -> ChargingProfile:
    return ChargingProfile(
        id=pid,
        connector=connector,
        stack_level=level,
        purpose=purpose,
        kind=kind,
        unit=unit,
        periods=tuple(Period(s, lim) for s, lim in periods),
        start=start,
        duration_s=duration,
        **extra,  # type: ignore[arg-type]
    )


def with_tx(connector: int = 1, tx_id: int = 7, at: float = T0) -> ProfileSet:
    ps = ProfileSet()
    ps.start_transaction(connector, tx_id, at)
    return ps


# ---- the §3.13 rules behind the Compliance Test Tool's cases (the cases' own steps, through the wire,
# ---- are in tests/integration/test_ocpp_cp.py) ---------------------------------------------------


def test_composite_schedule_of_a_tx_default_and_a_tx_profile() -> None:
    """§3.13.4 (as in TC_066): in a transaction the TxProfile overrides the TxDefaultProfile."""
    ps = with_tx()
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 16.0)], duration=300))
    ps.install(prof(2, Purpose.TX, [(0, 8.0), (50, 10.0)], duration=100))
    assert ps.composite(T0, 1, 300) == [
        SchedulePeriod(0, 8.0, 3),
        SchedulePeriod(50, 10.0, 3),
        SchedulePeriod(100, 16.0, 3),
    ]
    # Asked for in W, the same schedule at 230 V on the phases in use.
    assert ps.composite(T0, 1, 60, unit=RateUnit.W)[0] == SchedulePeriod(0, 5520.0, 3)
    # Past the TxDefaultProfile's duration the charger's own maximum is all that remains.
    assert ps.composite(T0, 1, 400, default=32.0)[-1] == SchedulePeriod(300, 32.0, 3)


def test_clear_charging_profile_by_id_and_by_criteria() -> None:
    """§5.5 (as in TC_067): a profile is cleared by id and by criteria; an unknown id clears nothing."""
    ps = with_tx()
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 10.0)]))
    assert ps.limit_at(T0, 1) is not None
    assert ps.clear(profile_id=99) == []
    assert ps.clear(profile_id=1) == [1]
    assert ps.limit_at(T0, 1) is None
    assert ps.composite(T0, 1, 300) == []
    ps.install(prof(2, Purpose.TX_DEFAULT, [(0, 10.0)], level=1))
    ps.install(prof(3, Purpose.TX, [(0, 12.0)]))
    assert ps.clear(purpose=Purpose.TX_DEFAULT, stack_level=0) == []
    assert ps.clear(connector=1, purpose=Purpose.TX_DEFAULT) == [2]
    assert sorted(ps.profiles) == [3]


def test_stacking_charging_profiles() -> None:
    """§3.13.2 (as in TC_072): a higher stack level rules for its duration, then the lower one."""
    ps = with_tx()
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 16.0)], duration=DAY_S, level=0))
    ps.install(prof(2, Purpose.TX_DEFAULT, [(0, 10.0)], duration=120, level=1))
    assert ps.composite(T0, 1, 300) == [SchedulePeriod(0, 10.0, 3), SchedulePeriod(120, 16.0, 3)]
    limit = ps.limit_at(T0 + 30, 1)
    assert limit is not None
    assert (limit.amps, limit.source, limit.next_change) == (10.0, "ocpp:TxDefaultProfile", T0 + 120)


def test_charge_point_max_profile_caps_every_connector() -> None:
    """§3.13.1: a ChargePointMaxProfile on connector 0 caps the station and every connector."""
    ps = with_tx()
    ps.install(prof(1, Purpose.CHARGE_POINT_MAX, [(0, 6.0)], connector=0, kind=Kind.RELATIVE, start=None))
    assert ps.composite(T0, 0, 300) == [SchedulePeriod(0, 6.0, 3)]
    ps.install(prof(2, Purpose.TX, [(0, 16.0)]))
    limit = ps.limit_at(T0, 1)
    assert limit is not None and (limit.amps, limit.source) == (6.0, "ocpp:ChargePointMaxProfile")
    # Without the station's cap (when the runtime caps all connectors together) the TxProfile binds.
    alone = ps.limit_at(T0, 1, station=False)
    assert alone is not None and (alone.amps, alone.source) == (16.0, "ocpp:TxProfile")
    with pytest.raises(ProfileError):
        ps.install(prof(3, Purpose.CHARGE_POINT_MAX, [(0, 6.0)], connector=1))


# ---- the rules one by one ----------------------------------------------------------------------------


def test_tx_profile_needs_its_transaction_and_ends_with_it() -> None:
    ps = ProfileSet()
    with pytest.raises(ProfileError, match="transaction"):
        ps.install(prof(1, Purpose.TX, [(0, 10.0)]))
    ps.start_transaction(1, 7, T0)
    with pytest.raises(ProfileError, match="transactionId"):
        ps.install(prof(1, Purpose.TX, [(0, 10.0)], transaction_id=8))
    ps.install(prof(1, Purpose.TX, [(0, 10.0)]))
    assert ps.profiles[1].transaction_id == 7
    ps.end_transaction(1)
    assert ps.profiles == {}


def test_tx_profile_overrides_a_lower_tx_default() -> None:
    ps = with_tx()
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 6.0)], level=5))
    ps.install(prof(2, Purpose.TX, [(0, 20.0)]))
    limit = ps.limit_at(T0, 1)
    assert limit is not None and (limit.amps, limit.source) == (20.0, "ocpp:TxProfile")


def test_connector_tx_default_overrides_connector_zero() -> None:
    ps = ProfileSet()
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 6.0)], connector=0))
    ps.install(prof(2, Purpose.TX_DEFAULT, [(0, 13.0)], connector=2))
    one, two = ps.limit_at(T0, 1), ps.limit_at(T0, 2)
    assert one is not None and one.amps == 6.0
    assert two is not None and two.amps == 13.0


def test_replacement_by_id_and_by_purpose_level_connector() -> None:
    ps = ProfileSet()
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 6.0)], level=2))
    ps.install(prof(2, Purpose.TX_DEFAULT, [(0, 8.0)], level=2))
    assert sorted(ps.profiles) == [2]
    ps.install(prof(2, Purpose.TX_DEFAULT, [(0, 9.0)], level=3))
    assert sorted(ps.profiles) == [2] and ps.profiles[2].stack_level == 3
    ps.install(prof(3, Purpose.TX_DEFAULT, [(0, 9.0)], level=3, connector=2))
    assert sorted(ps.profiles) == [2, 3]


def test_valid_from_and_valid_to() -> None:
    ps = ProfileSet()
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 16.0)], level=0))
    ps.install(prof(2, Purpose.TX_DEFAULT, [(0, 8.0)], level=1, valid_from=T0 + 100, valid_to=T0 + 200))
    before = ps.limit_at(T0, 1)
    assert before is not None and (before.amps, before.next_change) == (16.0, T0 + 100)
    during = ps.limit_at(T0 + 150, 1)
    assert during is not None and (during.amps, during.next_change) == (8.0, T0 + 200)
    after = ps.limit_at(T0 + 200, 1)
    assert after is not None and (after.amps, after.next_change) == (16.0, None)


def test_daily_recurring_profile() -> None:
    # 6 A from 17:00 to 21:00 every day, 16 A the rest of the day.
    start = T0 + 17 * 3600
    ps = ProfileSet()
    ps.install(
        prof(
            1,
            Purpose.TX_DEFAULT,
            [(0, 6.0), (4 * 3600, 16.0)],
            kind=Kind.RECURRING,
            recurrency=Recurrency.DAILY,
            start=start,
            duration=DAY_S,
        )
    )
    for day in (0, 1, 30):
        evening = ps.limit_at(start + day * DAY_S + 3600, 1)
        assert evening is not None and evening.amps == 6.0
        assert evening.next_change == start + day * DAY_S + 4 * 3600
        night = ps.limit_at(start + day * DAY_S + 5 * 3600, 1)
        assert night is not None and night.amps == 16.0
        assert night.next_change == start + (day + 1) * DAY_S
    # Before its startSchedule the previous cycle's pattern applies.
    early = ps.limit_at(start - 3600, 1)
    assert early is not None and early.amps == 16.0


def test_weekly_recurring_profile_with_a_duration() -> None:
    # Capped to 10 A for the first day of each week only.
    ps = ProfileSet()
    ps.install(
        prof(
            1,
            Purpose.TX_DEFAULT,
            [(0, 10.0)],
            kind=Kind.RECURRING,
            recurrency=Recurrency.WEEKLY,
            duration=DAY_S,
        )
    )
    first = ps.limit_at(T0 + WEEK_S + 60, 1)
    assert first is not None and (first.amps, first.next_change) == (10.0, T0 + WEEK_S + DAY_S)
    later = ps.limit_at(T0 + WEEK_S + 2 * DAY_S, 1)
    assert later is not None and (later.amps, later.next_change) == (math.inf, T0 + 2 * WEEK_S)
    cap = ConnectorCap(ps, 1)
    assert cap.limit_at(T0 + WEEK_S + 2 * DAY_S, 3) is None


def test_relative_profile_starts_with_the_transaction() -> None:
    ps = with_tx(at=T0 + 1000)
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 6.0), (600, 16.0)], kind=Kind.RELATIVE, start=None))
    limit = ps.limit_at(T0 + 1300, 1)
    assert limit is not None and (limit.amps, limit.next_change) == (6.0, T0 + 1600)


def test_watts_are_converted_with_the_phases_in_use() -> None:
    ps = ProfileSet()
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 6900.0)], unit=RateUnit.W))
    three, one = ps.limit_at(T0, 1, phases=3), ps.limit_at(T0, 1, phases=1)
    assert three is not None and three.amps == pytest.approx(10.0)
    assert one is not None and one.amps == pytest.approx(30.0)


def test_next_change_skips_boundaries_that_change_nothing() -> None:
    ps = ProfileSet()
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 16.0), (100, 20.0)], level=0))
    ps.install(prof(2, Purpose.TX_DEFAULT, [(0, 8.0)], level=1, duration=300))
    limit = ps.limit_at(T0, 1)
    assert limit is not None and (limit.amps, limit.next_change) == (8.0, T0 + 300)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"stack_level": -1}, "stackLevel"),
        ({"periods": ()}, "chargingSchedulePeriod"),
        ({"periods": (Period(10, 6.0),)}, "chargingSchedulePeriod"),
        ({"periods": (Period(0, 6.0), Period(0, 8.0))}, "chargingSchedulePeriod"),
        ({"periods": (Period(0, math.nan),)}, "limit"),
        ({"periods": (Period(0, 6.0, 4),)}, "numberPhases"),
        ({"kind": Kind.RECURRING}, "recurrencyKind"),
        ({"kind": Kind.RELATIVE}, "startSchedule"),
        ({"valid_from": T0 + 10, "valid_to": T0}, "validTo"),
        ({"duration_s": 0.0}, "duration"),
        ({"transaction_id": 3}, "transactionId"),
    ],
)
def test_malformed_profiles_are_refused(change: dict[str, object], field: str) -> None:
    from dataclasses import replace

    base = prof(1, Purpose.TX_DEFAULT, [(0, 6.0)])
    with pytest.raises(ProfileError) as err:
        ProfileSet().install(replace(base, **change))  # type: ignore[arg-type]
    assert err.value.field == field


def test_round_trip_through_the_store_format() -> None:
    ps = with_tx()
    ps.install(prof(1, Purpose.TX_DEFAULT, [(0, 6.0), (60, 8.0)], valid_to=T0 + 999))
    ps.install(prof(2, Purpose.TX, [(0, 12.0)]))
    back = ProfileSet.from_doc(ps.to_doc())
    assert back.profiles == ps.profiles and back.transactions == ps.transactions
    broken = ps.to_doc()
    broken["profiles"].append({"id": "x"})
    assert ProfileSet.from_doc(broken).profiles == ps.profiles


def test_profile_cap_binds_in_the_chargers_own_limit() -> None:
    ch = Charger.create(ChargerConfig(id="c1", max_current=32.0))
    ps = with_tx()
    ch.profile_cap = ConnectorCap(ps, 1)
    assert ch.own_limit(T0) == (32.0, sources.MAX)
    ps.install(prof(1, Purpose.TX, [(0, 10.0), (60, 0.0)]))
    assert ch.own_limit(T0) == (10.0, sources.ocpp("TxProfile"))
    assert str(ch.own_limit(T0 + 61)[1]) == "ocpp:TxProfile"
    assert ch.own_limit(T0 + 61) == (0.0, sources.ocpp("TxProfile"))
    ch.set_user_limit(8.0)
    assert ch.own_limit(T0) == (8.0, sources.USER)


def test_a_charger_with_a_profile_cap_is_never_quiet() -> None:
    ch = Charger.create(ChargerConfig(id="c1"))
    assert ch.quiet_key() is not None
    ch.profile_cap = ConnectorCap(ProfileSet(), 1)
    assert ch.quiet_key() is None
