"""Hypothesis properties of the Charger under random command and reading sequences."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from evpilot.core.charger import CABLE_LIMITS, Charger, ChargerConfig, PilotReading
from evpilot.core.errors import CommandError
from evpilot.core.iec61851 import STOP_DEADLINE_S, current_for_duty

T0 = 1_700_000_000.0
amps_st = st.floats(min_value=-5, max_value=100, allow_nan=False)
tenths_st = st.integers(min_value=60, max_value=800).map(lambda t: t / 10)


@dataclass(frozen=True)
class Tick:
    """Time passes and the hardware reports a reading."""

    dt: float
    letter: str
    draw: float
    meter_step: float
    meter_reset: bool
    temperature: float
    cable: float | None
    allocated: float


ticks = st.builds(
    Tick,
    dt=st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0, 30.0]),
    letter=st.sampled_from("AABCCCCDEF"),
    draw=st.floats(min_value=0, max_value=90, allow_nan=False),
    meter_step=st.floats(min_value=0, max_value=1, allow_nan=False),
    meter_reset=st.booleans(),
    temperature=st.floats(min_value=20, max_value=80, allow_nan=False),
    cable=st.sampled_from([None, *CABLE_LIMITS]),
    allocated=amps_st,
)
commands = st.one_of(
    st.tuples(st.just("user"), st.one_of(st.none(), amps_st, tenths_st)),
    st.tuples(st.just("override"), st.one_of(st.none(), amps_st)),
    st.tuples(st.just("lease"), st.one_of(st.none(), amps_st), st.sampled_from([None, 1.0, 10.0, 100.0])),
    st.tuples(st.just("energy_cap"), st.one_of(st.none(), st.floats(0, 2, allow_nan=False))),
    st.tuples(st.just("time_cap"), st.one_of(st.none(), st.floats(0, 3, allow_nan=False))),
    st.tuples(st.sampled_from(["enabled", "available", "authorized", "auto_charge"]), st.booleans()),
    st.tuples(st.sampled_from(["start", "stop", "reset", "lapse"])),
)
steps = st.lists(st.one_of(ticks, commands), min_size=1, max_size=60)
configs = st.builds(
    ChargerConfig,
    id=st.just("cp"),
    max_current=st.sampled_from([10.0, 16.0, 32.0, 63.0, 80.0]),
    safe_current=st.sampled_from([0.0, 6.0, 10.0]),
    fixed_cable=st.booleans(),
    auto_charge=st.booleans(),
)


def _command(ch: Charger, now: float, cmd: tuple[object, ...]) -> None:
    name = cmd[0]
    try:
        if name == "user":
            ch.set_user_limit(cmd[1])  # type: ignore[arg-type]
        elif name == "override":
            ch.set_override(cmd[1])  # type: ignore[arg-type]
        elif name == "lease":
            ttl = cmd[2]
            ch.set_lease("ems", cmd[1], None if ttl is None else now + ttl)  # type: ignore[arg-type,operator]
        elif name == "energy_cap":
            ch.set_energy_cap(cmd[1])  # type: ignore[arg-type]
        elif name == "time_cap":
            ch.set_time_cap(cmd[1])  # type: ignore[arg-type]
        elif name in ("enabled", "available", "authorized", "auto_charge"):
            getattr(ch, f"set_{name}")(cmd[1])
        elif name == "start":
            ch.request_start(now)
        elif name == "stop":
            ch.request_stop(now)
        else:
            ch.reset_faults()
    except CommandError:
        pass


def _limits(ch: Charger, now: float, allocated: float) -> float:
    """The lowest of every limit that applies now, computed independently of the charger."""
    caps = [allocated, ch.config.max_current]
    if ch.user_limit is not None:
        caps.append(ch.user_limit)
    if ch.override is not None:
        caps.append(ch.override)
    if not ch.config.fixed_cable and ch.cable_limit is not None:
        caps.append(ch.cable_limit)
    caps += [v.value for v in ch.leases.values() if v.expires_at is None or now < v.expires_at]
    return max(0.0, min(caps))


def _check(ch: Charger, now: float, allocated: float, signaled: float, duty: float, contactor: bool) -> None:
    assert signaled <= _limits(ch, now, allocated) + 1e-9
    assert signaled == 0.0 or 6.0 <= signaled <= 80.0
    assert abs(signaled * 10 - round(signaled * 10)) < 1e-9
    assert current_for_duty(duty) == signaled
    if not ch.permitted():
        assert signaled == 0.0
    if contactor:
        assert ch.letter in "CD"
        if signaled == 0:
            # PWM is off: the contactor may stay closed only while the EV gets its 6 s to stop.
            assert ch.stop_requested_at is not None and now - ch.stop_requested_at < STOP_DEADLINE_S


@given(configs, steps)
def test_signaled_never_exceeds_a_limit_and_lifetime_never_decreases(
    config: ChargerConfig, program: list[object]
) -> None:
    ch = Charger.create(config, lifetime_kwh=5.0)
    now, meter, allocated = T0, 0.0, 0.0
    lifetime = ch.lifetime_kwh
    for step in program:
        if isinstance(step, tuple) and step[0] == "lapse":
            # No new allocation for a while: the lease lapses and the charger falls back.
            now += 6.0
            out = ch.advance(now)
            allocated = min(allocated, config.safe_current)
            _check(ch, now, allocated, out.signaled, out.duty, out.contactor)
            continue
        if not isinstance(step, Tick):
            assert isinstance(step, tuple)
            _command(ch, now, step)
            continue
        now += step.dt
        meter = 0.0 if step.meter_reset else meter + step.meter_step
        ch.observe(
            PilotReading(
                taken_at=now,
                letter=step.letter,
                currents=(step.draw, step.draw, 0.0),
                energy_kwh=meter,
                temperature=step.temperature,
                cable_limit=step.cable,
            )
        )
        allocated = step.allocated
        out = ch.apply(now, allocated, "test", 3, 5.0)
        _check(ch, now, allocated, out.signaled, out.duty, out.contactor)
        assert ch.lifetime_kwh >= lifetime
        lifetime = ch.lifetime_kwh


@given(st.lists(st.tuples(st.floats(0, 1e4, allow_nan=False), st.booleans()), max_size=80))
def test_lifetime_never_decreases_whatever_the_meter_reports(values: list[tuple[float, bool]]) -> None:
    ch = Charger.create(ChargerConfig(id="cp"), lifetime_kwh=1.0)
    prev, now = ch.lifetime_kwh, T0
    for kwh, plugged in values:
        now += 1
        ch.observe(PilotReading(taken_at=now, letter="C" if plugged else "A", energy_kwh=kwh))
        assert ch.lifetime_kwh >= prev
        prev = ch.lifetime_kwh
