"""Shelly Top AC auto_balance: cap one charger so an external meter's phases stay under a limit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evpilot.core.charger import Phases


@dataclass(frozen=True, slots=True)
class BalanceInput:
    """One auto-balance decision's inputs (currents in A per phase, ages in s)."""

    meter: Sequence[float] | None
    meter_age_s: float
    ev: Phases
    max_current: float
    exclude_self_current: bool
    ev_phases: Sequence[int]
    timeout_s: float
    fallback: float


@dataclass(frozen=True, slots=True)
class BalanceResult:
    """The cap for the charger and why (`ok`, `stale`, `no_reading`)."""

    amps: float
    reason: str
    headroom: float | None


def auto_balance_cap(inp: BalanceInput) -> BalanceResult:
    """The charger cap that keeps every metered phase the EV uses at or under `max_current`.

    A one-channel meter (Shelly EM1) is taken as the phase of every EV phase. With
    `exclude_self_current` the meter is upstream of the EV, so the EV's own measured current is
    removed before the headroom is computed; otherwise the meter sees only the other loads.
    Without a fresh reading the cap is `fallback`.
    """
    if inp.meter is None or len(inp.meter) == 0:
        return BalanceResult(max(0.0, inp.fallback), "no_reading", None)
    if inp.meter_age_s > inp.timeout_s:
        return BalanceResult(max(0.0, inp.fallback), "stale", None)
    headroom: float | None = None
    for p in inp.ev_phases:
        metered = inp.meter[p] if len(inp.meter) == 3 else inp.meter[0]
        ev = inp.ev[p] if len(inp.meter) == 3 else max(inp.ev)
        others = metered - ev if inp.exclude_self_current else metered
        room = inp.max_current - max(0.0, others)
        headroom = room if headroom is None else min(headroom, room)
    if headroom is None:
        return BalanceResult(max(0.0, inp.fallback), "no_reading", None)
    return BalanceResult(max(0.0, headroom), "ok", headroom)
