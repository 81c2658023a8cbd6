"""`compute(snapshot, now)`: the one place that decides every charger's current."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from evpilot.core.charger import Phases, mains_draw
from evpilot.core.fill import Problem, fill
from evpilot.core.site import (
    GRID_RELAY_W,
    NOMINAL_VOLTAGE,
    Allocation,
    BalancerState,
    ChargerAllocation,
    ChargerInput,
    ChargerMemo,
    CircuitConfig,
    SiteConfig,
    Snapshot,
)

GRID_MODES = ("smart", "solar", "min+solar")
SOLAR_MODES = ("solar", "min+solar")
_EPS = 1e-6
# A mains reading above this multiple of the fuse means something is badly wrong: stop all.
TRIP_FACTOR = 2.0


@lru_cache(maxsize=64)
def circuit_paths(circuits: tuple[CircuitConfig, ...]) -> dict[str, tuple[str, ...]]:
    """For each circuit, the chain of circuit names from it up to the mains (excluded)."""
    parent = {c.name: c.parent for c in circuits}
    out: dict[str, tuple[str, ...]] = {}
    for name in parent:
        chain: list[str] = []
        node: str | None = name
        while node is not None and node not in chain:
            chain.append(node)
            node = parent.get(node)
        out[name] = tuple(chain)
    return out


def phases_of(ci: ChargerInput, phases: int) -> tuple[int, ...]:
    """Mains phase indices a charger draws on at `phases` phases."""
    return ci.config.phase_map.used(phases)


def _initial_phases(ci: ChargerInput, memo: ChargerMemo | None) -> int:
    if ci.config.phases == 1:
        return 1
    mode = ci.phase_mode
    if mode == "always_1p":
        return 1
    if mode == "always_3p" or mode == "not_present":
        return 3
    if mode == "solar_1p":
        return 1 if ci.mode == "solar" else 3
    return memo.phases if memo is not None else 3


@dataclass(frozen=True, slots=True)
class _Shape:
    """The constraint structure of a site for one set of charging chargers (cached)."""

    keys: tuple[tuple[str, int], ...]
    sources: tuple[str, ...]
    members: list[list[tuple[int, float]]]
    uses: list[list[tuple[int, float]]]
    weights: tuple[float, ...]


@lru_cache(maxsize=32)
def _structure(
    circuits: tuple[CircuitConfig, ...],
    linked: tuple[tuple[int, str | None, tuple[int, ...]], ...],
    n: int,
    capacity: bool,
    relay: bool,
    site_limits: int,
) -> _Shape:
    """Which constraint each charger loads, and by how much; rebuilt only when that changes."""
    paths = circuit_paths(circuits)
    names = {c.name for c in circuits}
    keys: list[tuple[str, int]] = []
    sources: list[str] = []
    index: dict[tuple[str, int], int] = {}
    uses: list[list[tuple[int, float]]] = [[] for _ in range(n)]

    def con(key: tuple[str, int], source: str) -> int:
        c = index.get(key)
        if c is None:
            c = len(keys)
            index[key] = c
            keys.append(key)
            sources.append(source)
        return c

    for idx, circuit, used in linked:
        chain = ("", *(paths.get(circuit, ()) if circuit else ()))
        for node in chain:
            if node and node not in names:
                continue
            for p in used:
                uses[idx].append((con((node, p), f"circuit:{node}" if node else "mains"), 1.0))
        if capacity:
            uses[idx].append((con(("#capacity", 0), "capacity"), float(len(used))))
        if relay:
            uses[idx].append((con(("#relay", 0), "grid_relay"), float(len(used))))
        for k in range(site_limits):
            for p in used:
                uses[idx].append((con((f"#site{k}", p), "site"), 1.0))
    members: list[list[tuple[int, float]]] = [[] for _ in keys]
    for idx, lst in enumerate(uses):
        for c, coef in lst:
            members[c].append((idx, coef))
    weights = tuple(sum(coef for _, coef in lst) for lst in members)
    return _Shape(tuple(keys), tuple(sources), members, uses, weights)


def compute(snapshot: Snapshot, now: float) -> Allocation:
    """Decide every charger's current, phase count and binding source for this tick."""
    site = snapshot.site
    memos = snapshot.state.chargers
    chargers = snapshot.chargers
    n = len(chargers)
    mains = snapshot.mains
    fresh = mains is not None and now - mains.taken_at <= site.meter_timeout_s
    paths = circuit_paths(site.circuits)
    limits = {c.name: c.limit for c in site.circuits}

    memo_in: list[ChargerMemo] = [memos.get(ci.config.id) or ChargerMemo() for ci in chargers]
    phases = [_initial_phases(ci, memos.get(ci.config.id)) for ci in chargers]
    single = [m.single_phase_car for m in memo_in]

    ev_total = [0.0, 0.0, 0.0]
    circuit_ev: dict[str, list[float]] = {}
    draws: list[Phases] = []
    for ci in chargers:
        d = mains_draw(ci.config, ci.measured)
        draws.append(d)
        ev_total[0] += d[0]
        ev_total[1] += d[1]
        ev_total[2] += d[2]
        if ci.config.circuit is not None:
            for name in paths.get(ci.config.circuit, ()):
                acc = circuit_ev.setdefault(name, [0.0, 0.0, 0.0])
                acc[0] += d[0]
                acc[1] += d[1]
                acc[2] += d[2]

    if fresh and mains is not None:
        sub = ev_total if site.exclude_self_current else [0.0, 0.0, 0.0]
        base = (
            mains.currents[0] - sub[0],
            mains.currents[1] - sub[1],
            mains.currents[2] - sub[2],
        )
    else:
        base = (0.0, 0.0, 0.0)
    battery = 0.0
    if (
        snapshot.battery_current is not None
        and snapshot.battery_at is not None
        and now - snapshot.battery_at <= site.battery_timeout_s
    ):
        battery = snapshot.battery_current

    out: dict[str, ChargerAllocation] = {}
    new_memos: dict[str, ChargerMemo] = {}
    available = (
        site.mains_limit - base[0],
        site.mains_limit - base[1],
        site.mains_limit - base[2],
    )

    tripped = fresh and mains is not None and max(mains.currents) > TRIP_FACTOR * site.mains_limit
    if tripped:
        for idx, ci in enumerate(chargers):
            m = memo_in[idx]
            out[ci.config.id] = ChargerAllocation(0.0, phases[idx], "mains")
            new_memos[ci.config.id] = replace(m, current=0.0, phases=phases[idx])
        return Allocation(out, BalancerState(new_memos, None), fresh, False, base, available)

    # ---- per-charger caps ---------------------------------------------------------------
    caps = [0.0] * n
    ev_limited = [False] * n
    cap_src = ["idle"] * n
    eff_phases = [1] * n
    candidates: list[int] = []
    fallback_ids: list[int] = []
    for idx, ci in enumerate(chargers):
        m = memo_in[idx]
        eff = 1 if single[idx] else phases[idx]
        if ci.config.phases == 1:
            eff = 1
        eff_phases[idx] = eff
        if ci.mode == "off":
            cap_src[idx] = "off"
            continue
        if ci.limit < ci.config.min_current - _EPS:
            cap_src[idx] = ci.limit_source
            continue
        if ci.demand == 0:
            cap_src[idx] = "idle"
            continue
        if m.paused_until > now:
            cap_src[idx] = "shortage"
            continue
        cap, src = ci.limit, ci.limit_source
        if ci.demand == 1 and ci.config.min_current < cap:
            cap, src = ci.config.min_current, "ev"
        elif ci.charging and m.current > 0:
            # A car drawing clearly less than offered (after it had time to follow the last
            # raise) is capped near its draw; the cap lifts once it uses what it has.
            drawn = max(ci.measured)
            gap = m.current - drawn
            if m.ev_limited:
                limited = gap > 1.0
            else:
                limited = now - m.last_raise >= 3 * site.increase_interval_s and gap > site.ev_headroom + 1.0
            need = max(ci.config.min_current, drawn + site.ev_headroom)
            if limited and need < cap:
                cap, src = need, "ev"
                ev_limited[idx] = True
        caps[idx] = cap
        cap_src[idx] = src
        if not fresh and ci.mode in GRID_MODES:
            fallback_ids.append(idx)
        else:
            candidates.append(idx)

    # ---- solar budget (sum of phases) -------------------------------------------------------
    solar_ids = [i for i in candidates if chargers[i].mode in SOLAR_MODES]
    surplus: float | None = None
    solar_left = 0.0
    solar_share: dict[int, float] = {}
    if fresh:
        surplus = -(base[0] + base[1] + base[2]) + battery
    if solar_ids and surplus is not None:
        budget = surplus + site.solar.max_import
        sp = Problem()
        con = sp.add_constraint(budget, "solar")
        for _ in solar_ids:
            sp.add_charger()
        index = {i: j for j, i in enumerate(solar_ids)}
        for i in solar_ids:
            sp.link(index[i], con, float(eff_phases[i]))
        s_alloc = [0.0] * len(solar_ids)
        s_bound = [""] * len(solar_ids)
        s_caps = [caps[i] for i in solar_ids]
        s_src = [cap_src[i] for i in solar_ids]
        # Admission: a charger waiting to start joins only when the budget still covers MIN for
        # every charger already on surplus plus its own, and the export left reaches START;
        # then all admitted chargers share the budget equally. A start never pushes a running
        # session below MIN, and a running one never keeps the surplus from a newcomer for good.
        running = [
            j
            for j, i in enumerate(solar_ids)
            if chargers[i].mode == "min+solar" or memo_in[i].solar_started is not None
        ]
        taken = sum(
            chargers[solar_ids[j]].config.min_current * eff_phases[solar_ids[j]] for j in running
        )
        running_set = set(running)
        waiting = sorted(
            (j for j in range(len(solar_ids)) if j not in running_set),
            key=lambda j: (-chargers[solar_ids[j]].config.priority, chargers[solar_ids[j]].config.id),
        )
        admitted: set[int] = set()
        for j in waiting:
            i = solar_ids[j]
            need = chargers[i].config.min_current * eff_phases[i]
            if need > s_caps[j] * eff_phases[i] + _EPS:
                continue
            if budget - taken >= need - _EPS and surplus - taken >= site.solar.start_current - _EPS:
                admitted.add(j)
                taken += need
        fill(sp, running + sorted(admitted), s_caps, s_src, s_alloc, s_bound)
        solar_left = sp.residual(con)
        solar_src = "import" if site.solar.max_import > 0 and surplus < budget - solar_left else "solar"
        if battery < 0 and solar_src == "solar":
            solar_src = "battery"
        for pos, i in enumerate(solar_ids):
            ci = chargers[i]
            m = memo_in[i]
            share = s_alloc[pos]
            solar_share[i] = share
            mn = ci.config.min_current
            if ci.mode == "min+solar":
                if share < caps[i] - _EPS:
                    caps[i] = max(mn, share)
                    cap_src[i] = solar_src if share >= mn else "min"
                continue
            started = m.solar_started
            if started is None and pos in admitted:
                started = now
            if started is None:
                caps[i] = 0.0
                cap_src[i] = solar_src
                continue
            in_grace = now - started < site.solar.start_grace_s
            short = share < mn - _EPS
            short_since = m.solar_short_since
            if in_grace:
                caps[i] = min(caps[i], max(mn, share))
                if share < caps[i] - _EPS:
                    cap_src[i] = solar_src
                short_since = None
            elif short:
                if short_since is None:
                    short_since = now
                if site.solar.stop_min == 0 or now - short_since < site.solar.stop_min * 60.0:
                    caps[i] = mn
                    cap_src[i] = solar_src
                else:
                    caps[i] = 0.0
                    cap_src[i] = solar_src
                    started = None
                    short_since = None
            else:
                short_since = None
                if share < caps[i] - _EPS:
                    caps[i] = share
                    cap_src[i] = solar_src
            memo_in[i] = replace(m, solar_started=started, solar_short_since=short_since)
    for idx, ci in enumerate(chargers):
        if ci.mode == "solar" and idx not in solar_share:
            memo_in[idx] = replace(memo_in[idx], solar_started=None, solar_short_since=None)

    # Chargers that solar (or a low own cap) leaves below MIN get nothing, without a shortage pause.
    candidates = [i for i in candidates if caps[i] >= chargers[i].config.min_current - _EPS]

    # ---- grid constraints -----------------------------------------------------------------
    linked = tuple(
        (idx, chargers[idx].config.circuit, phases_of(chargers[idx], eff_phases[idx]))
        for idx in candidates + fallback_ids
    )
    cap_on = site.capacity_limit is not None and fresh
    shape = _structure(site.circuits, linked, n, cap_on, snapshot.grid_relay_open, len(snapshot.site_limits))
    capacity: list[float] = []
    for key in shape.keys:
        node, p = key
        if node == "":
            capacity.append(site.mains_limit - base[p])
        elif node == "#capacity":
            assert site.capacity_limit is not None
            capacity.append(site.capacity_limit - (base[0] + base[1] + base[2]))
        elif node == "#relay":
            capacity.append(GRID_RELAY_W / NOMINAL_VOLTAGE)
        elif node.startswith("#site"):
            capacity.append(snapshot.site_limits[int(node[5:])].amps)
        else:
            cap = limits[node]
            reading = snapshot.circuit_meters.get(node)
            if reading is not None and now - reading.taken_at <= site.meter_timeout_s:
                ev = circuit_ev.get(node, [0.0, 0.0, 0.0])
                cap -= reading.currents[p] - ev[p]
            capacity.append(cap)
    sources = list(shape.sources)
    for pos2, key in enumerate(shape.keys):
        if key[0].startswith("#site"):
            sources[pos2] = snapshot.site_limits[int(key[0][5:])].source
    prob = Problem(
        capacity=capacity,
        used=[0.0] * len(capacity),
        source=sources,
        members=shape.members,
        uses=shape.uses,
    )

    alloc = [0.0] * n
    bound = list(cap_src)
    fallback = bool(fallback_ids)
    if fallback_ids:
        # Stale meter: every grid-mode charger at its fallback at once, capped so that the
        # fallbacks together stay within each phase's fuse.
        per_phase = [0, 0, 0]
        for idx in fallback_ids:
            for p in phases_of(chargers[idx], eff_phases[idx]):
                per_phase[p] += 1
        for idx in fallback_ids:
            ci = chargers[idx]
            share = min(site.mains_limit / per_phase[p] for p in phases_of(ci, eff_phases[idx]))
            # A stale reading never raises a setpoint: at most what the charger had before.
            value = min(site.fallback_current, caps[idx], share, memo_in[idx].current)
            if value < ci.config.min_current:
                value = 0.0
            alloc[idx] = value
            bound[idx] = "fallback"
            for con_idx, coef in prob.uses[idx]:
                prob.used[con_idx] += coef * value
    active = list(candidates)
    over_since = snapshot.state.capacity_over_since
    capacity_short = False
    paused_now: set[int] = set()
    # Every active charger first gets its MIN; while that does not fit, pause one at a time.
    mins = {chargers[i].config.min_current for i in active}
    uniform = not fallback_ids and len(mins) == 1
    if uniform:
        # Everyone linked is active with the same MIN: the load is MIN times the weights.
        common = next(iter(mins))
        load = [u + common * w for u, w in zip(prob.used, shape.weights, strict=True)]
    else:
        load = list(prob.used)
        for idx in active:
            mn = chargers[idx].config.min_current
            for c, k in prob.uses[idx]:
                load[c] += k * mn
    alive = set(active)
    while alive:
        violated = [
            c
            for c in range(len(load))
            if load[c] > prob.capacity[c] + _EPS and any(i in alive for i, _ in prob.members[c])
        ]
        if not violated:
            break
        if site.cap_stop_s > 0 and all(prob.source[c] == "capacity" for c in violated):
            capacity_short = True
            if over_since is None:
                over_since = now
            if now - over_since < site.cap_stop_s:
                break
        pool = {i for c in violated for i, _ in prob.members[c] if i in alive}
        # Equal priority: a charger that started within the last `min_run_s` is paused last, so
        # a returning charger never just swaps places with a running one every minute.
        victim = min(
            pool,
            key=lambda i: (
                chargers[i].config.priority,
                memo_in[i].current > 0 and now - memo_in[i].running_since < site.min_run_s,
                -chargers[i].session_kwh,
                chargers[i].config.id,
            ),
        )
        alive.discard(victim)
        paused_now.add(victim)
        bound[victim] = "shortage"
        mn = chargers[victim].config.min_current
        for c, k in prob.uses[victim]:
            load[c] -= k * mn
    active = [i for i in active if i in alive]
    extra_caps = list(caps)
    for idx in active:
        extra_caps[idx] = caps[idx] - chargers[idx].config.min_current
    if uniform and not paused_now:
        prob.used = load
    else:
        for idx in active:
            mn = chargers[idx].config.min_current
            for c, k in prob.uses[idx]:
                prob.used[c] += k * mn
    extra = [0.0] * n
    by_prio: dict[int, list[int]] = {}
    for idx in active:
        by_prio.setdefault(chargers[idx].config.priority, []).append(idx)
    for prio in sorted(by_prio, reverse=True):
        fill(prob, by_prio[prio], extra_caps, cap_src, extra, bound)
    for idx in active:
        alloc[idx] = chargers[idx].config.min_current + extra[idx]
    if not capacity_short:
        over_since = None

    # ---- pacing, phase switching, memo --------------------------------------------------
    ps = site.phase_switch
    for idx, ci in enumerate(chargers):
        m = memo_in[idx]
        target = alloc[idx]
        src = bound[idx]
        value = target
        last_raise = m.last_raise
        if target > m.current + _EPS:
            if m.current > 0 and target - m.current < site.increase_deadband:
                # Too small a rise to be worth a PWM change: avoids 0.1 A dithering.
                value = m.current
            elif now - m.last_raise >= site.increase_interval_s:
                step = m.current + site.ramp_step
                value = min(target, max(step, ci.config.min_current))
                last_raise = now
            else:
                value = m.current
                src = "ramp"
        paused_until = m.paused_until
        if idx in paused_now:
            paused_until = now + site.shortage_pause_s
        # single-phase car detection on a 3-phase charger
        one_since = m.one_phase_since
        single_car = m.single_phase_car
        meas = ci.measured
        if ci.config.phases == 3 and phases[idx] == 3 and ci.charging:
            if meas[0] > 2.0 and meas[1] < 0.5 and meas[2] < 0.5:
                one_since = one_since if one_since is not None else now
                if now - one_since >= ps.detect_single_phase_s:
                    single_car = True
            else:
                one_since = None
                single_car = False
        elif ci.demand == 0 and not ci.charging:
            one_since = None
            single_car = False
        # automatic 1/3-phase switching
        ph = phases[idx]
        down_since, up_since, last_switch = m.phase_down_since, m.phase_up_since, m.last_switch
        if ci.phase_mode == "auto" and ci.config.phases == 3 and ci.demand == 2 and not single_car:
            mn = ci.config.min_current
            if ph == 3:
                up_since = None
                potential = target if idx not in solar_share else min(target, solar_share[idx])
                if potential < mn - _EPS:
                    down_since = down_since if down_since is not None else now
                    if now - down_since >= ps.down_hold_s and now - last_switch >= ps.min_interval_s:
                        ph, last_switch, down_since = 1, now, None
                else:
                    down_since = None
            else:
                down_since = None
                pot = _potential_3p(prob, idx, alloc[idx])
                if idx in solar_share or ci.mode in SOLAR_MODES:
                    pot = min(pot, (alloc[idx] + solar_left) / 3.0)
                if pot >= mn + ps.margin:
                    up_since = up_since if up_since is not None else now
                    if now - up_since >= ps.up_hold_s and now - last_switch >= ps.min_interval_s:
                        ph, last_switch, up_since = 3, now, None
                else:
                    up_since = None
            if ph != phases[idx]:
                value, src = 0.0, "phase_switch"
        else:
            down_since = up_since = None
        # Rounded down so a reported allocation never exceeds what the limits allow.
        shown = math.floor(value * 100.0 + 1e-6) / 100.0
        out[ci.config.id] = ChargerAllocation(shown, ph if not single_car else 1, src)
        running_since = m.running_since if m.current > 0 or value <= 0 else now
        if (
            value == m.current
            and last_raise == m.last_raise
            and paused_until == m.paused_until
            and ph == m.phases
            and ev_limited[idx] == m.ev_limited
            and single_car == m.single_phase_car
            and one_since == m.one_phase_since
            and down_since == m.phase_down_since
            and up_since == m.phase_up_since
            and last_switch == m.last_switch
            and running_since == m.running_since
        ):
            # Unchanged: keep the old (immutable) memo instead of building an equal one.
            new_memos[ci.config.id] = m
            continue
        new_memos[ci.config.id] = ChargerMemo(
            current=value,
            phases=ph,
            last_raise=last_raise,
            paused_until=paused_until,
            solar_started=m.solar_started,
            solar_short_since=m.solar_short_since,
            phase_down_since=down_since,
            phase_up_since=up_since,
            last_switch=last_switch,
            one_phase_since=one_since,
            single_phase_car=single_car,
            ev_limited=ev_limited[idx],
            running_since=running_since,
        )
    return Allocation(
        chargers=out,
        state=BalancerState(new_memos, over_since),
        mains_fresh=fresh,
        fallback=fallback,
        base_load=base,
        available=available,
        solar_surplus=surplus,
    )


def _potential_3p(prob: Problem, idx: int, current: float) -> float:
    """Per-phase current a 1-phase charger could get on the phases it does not use yet."""
    best = float("inf")
    mine = {c for c, _ in prob.uses[idx]}
    for c, _ in prob.uses[idx]:
        best = min(best, prob.residual(c) + current)
    # Phases the charger does not draw on: the tightest constraint of the same kind.
    for c in range(len(prob.capacity)):
        if c in mine or not prob.source[c].startswith(("mains",)):
            continue
        best = min(best, prob.residual(c))
    return best


def default_state() -> BalancerState:
    """The state before the first tick."""
    return BalancerState()


def site_config_with(site: SiteConfig, **changes: object) -> SiteConfig:
    """A copy of `site` with some fields changed."""
    return replace(site, **changes)  # type: ignore[arg-type]
