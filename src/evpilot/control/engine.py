"""One synchronous control step: read devices, build the snapshot, compute, apply."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from evpilot.core.balancer import ABSURD_A, ABSURD_FACTOR, TRIP_FACTOR, compute
from evpilot.core.charger import Charger, PilotOutput
from evpilot.core.errors import check_range
from evpilot.core.iec61851 import DRAW_THRESHOLD_A
from evpilot.core.site import (
    Allocation,
    BalancerState,
    ChargerAllocation,
    ChargerInput,
    ChargerMemo,
    Reading,
    SiteConfig,
    SiteLimit,
    Snapshot,
)
from evpilot.core.validity import Decider, idle_allocation, may_leave_out, merge, settled
from evpilot.core.values import positional
from evpilot.devices.apifed import ApiFedBattery
from evpilot.devices.base import MeterSource, PilotHardware, PilotSleep

# Exactly equivalent shortcuts (steady idle site); tests switch them off to compare.
FAST_PATHS = True
# Built for every charger on every tick: filled slot by slot (`core.values.positional`).
_charger_input = positional(ChargerInput)


@dataclass(slots=True)
class SiteCap:
    """An external site-wide cap (A per phase on all chargers together), maybe leased."""

    amps: float
    expires_at: float | None


@dataclass(slots=True)
class Quiet:
    """A quiet charger's last full tick: its key, input, decision and output shape; its memo once settled."""

    key: tuple[object, ...]
    input: ChargerInput
    decision: ChargerAllocation
    # The memo `compute` keeps as it is while the input stays the same (`core.validity.settled`).
    memo: ChargerMemo | None
    # The output's fields but for its expiry (duty, signaled, contactor, phases, safe current).
    shape: tuple[float, float, bool, int, float]


class Engine:
    """Owns the chargers' domain objects and runs `compute` once per step."""

    def __init__(
        self,
        site: SiteConfig,
        chargers: Mapping[str, Charger],
        pilots: Mapping[str, PilotHardware],
        mains: MeterSource | None,
        lease_s: float = 5.0,
    ) -> None:
        self.site = site
        self.chargers = dict(chargers)
        self.pilots = dict(pilots)
        self.mains = mains
        self.circuit_meters: dict[str, MeterSource] = {}
        self.battery = ApiFedBattery()
        self.grid_relay_open = False
        self.site_caps: dict[str, SiteCap] = {}
        self.lease_s = lease_s
        self.state = BalancerState()
        # Readings the core refused as implausible, by source (`mains`, `charger:<id>`, ...).
        self.rejected: Counter[str] = Counter()
        self.last: Allocation | None = None
        self.last_mains: Reading | None = None
        self.last_tick: float | None = None
        self.before_step: Callable[[float], None] | None = None
        # The allocator; benchmarks swap in baselines here, everything else uses the real one.
        self.compute: Callable[[Snapshot, float], Allocation] = compute
        # Per quiet charger (`Charger.quiet_key`): what its last full tick saw, decided and wrote.
        self._quiet: dict[str, Quiet] = {}
        # The chargers left out and the allocation of the last tick that left every charger out.
        self._all_out: tuple[dict[str, Quiet], Allocation] | None = None
        # Set by `assemble` when the simulator is all the engine reads (its pilots, its or an
        # API-fed mains meter): when the simulator plans its next change by itself (`leap`).
        self.sim_events: Callable[[], float] | None = None
        # With `sim_events`: whether the mains reading now is within the bounds given on every phase.
        self.mains_within: Callable[[float, float], bool] | None = None
        # The time of the last step that left every charger out and refused no reading.
        self._steady_at: float | None = None
        # Set by `assemble` to the simulator: `run` puts the pilots of settled chargers to sleep.
        self.pilot_sleep: PilotSleep | None = None
        # During `run`: whether settled chargers may be put to sleep.
        self._may_sleep = False
        # The settled chargers whose pilot sleeps: left out of every tick without being read,
        # written or stepped. Replaced, never changed in place (the last all-out tick compares it).
        self._asleep: dict[str, Quiet] = {}
        # During `run`: quiet chargers that `compute` still sees (waiting their turn) whose pilot
        # sleeps: not read or written while their decision stays the same.
        self._dozing: dict[str, Quiet] = {}
        # The other chargers, in order (None: to be listed again).
        self._awake: list[tuple[str, Charger]] | None = None
        # `_asleep` and their decisions and memos for `merge`.
        self._kept: tuple[dict[str, Quiet], dict[str, tuple[ChargerAllocation, ChargerMemo]]] | None = None
        # `compute`, or its last decisions again while the new readings cannot change them.
        self._decide = Decider()

    def mode_of(self, charger: Charger) -> str:
        """The charger's effective mode (its own, or the site's)."""
        return charger.mode or self.site.mode

    def set_site_cap(self, source: str, amps: float | None, expires_at: float | None = None) -> None:
        """Set or clear an external cap on the chargers' total current per phase."""
        if amps is None:
            self.site_caps.pop(source, None)
            return
        self.site_caps[source] = SiteCap(check_range(source, amps, 0.0, 600.0, " A"), expires_at)

    def snapshot(self, now: float) -> Snapshot:
        """Freeze everything `compute` needs."""
        return self._snapshot(now, {}, {}, self.chargers.items())

    def _snapshot(
        self,
        now: float,
        calm: dict[str, Quiet],
        left_out: dict[str, Quiet],
        items: Iterable[tuple[str, Charger]],
    ) -> Snapshot:
        """The snapshot of the chargers in `items`, without the settled chargers among the `calm` ones
        (those go to `left_out`).

        A calm charger's input is its last one but for the reading's time (`Charger.quiet_key`); a
        settled one (`core.validity.settled`) with the same input is left out of `compute` while
        `core.validity.may_leave_out` holds.
        """
        mains = self.mains.latest() if self.mains is not None else None
        self.last_mains = mains
        circuits = {}
        for name, meter in self.circuit_meters.items():
            reading = meter.latest()
            if reading is not None:
                circuits[name] = reading
        site = self.site
        state = self.state
        leave = bool(calm) and may_leave_out(site, mains, circuits, state)
        memos = state.chargers
        inputs: list[ChargerInput] = []
        append = inputs.append
        site_mode = site.mode
        for cid, ch in items:
            if calm:
                q = calm.get(cid)
                if q is not None:
                    p = q.input
                    session = ch.session
                    mode = ch.mode or site_mode
                    kwh = session.energy_kwh if session is not None else 0.0
                    if mode == p.mode and kwh == p.session_kwh:
                        if leave and q.memo is not None and memos.get(cid) is q.memo:
                            left_out[cid] = q
                            continue
                        ci = p
                    else:
                        q.memo = None
                        ci = None
                    # Positional, in field order (see below); only the time of the reading is new.
                    append(
                        _charger_input(
                            p.config,
                            mode,
                            p.demand,
                            p.limit,
                            p.limit_source,
                            ch.currents,
                            kwh,
                            p.phase_mode,
                            p.active_phases,
                            False,
                            ch.reading_at,
                            p.plugged,
                            p.limit_low,
                            p.held,
                            p.limit_high,
                        )
                        if ci is None or ci.measured_at != ch.reading_at
                        else ci
                    )
                    continue
            limit, source = ch.own_limit(now)
            currents = ch.currents
            session = ch.session
            # Positional, in field order (config, mode, demand, limit, limit_source, measured,
            # session_kwh, phase_mode, active_phases, charging, measured_at, plugged, limit_low, held,
            # limit_high).
            append(
                _charger_input(
                    ch.config,
                    ch.mode or site_mode,
                    ch.demand(),
                    limit,
                    source,
                    currents,
                    session.energy_kwh if session is not None else 0.0,
                    ch.phase_mode,
                    ch.active_phases,
                    ch.contactor and max(currents) > DRAW_THRESHOLD_A,
                    ch.reading_at,
                    ch.plugged,
                    ch.lowest_signaled(ch.reading_at),
                    ch.held,
                    ch.highest_signaled(ch.reading_at),
                )
            )
        limits: tuple[SiteLimit, ...] = ()
        if self.site_caps:
            caps = self.site_caps
            lapsed = [k for k, v in caps.items() if v.expires_at is not None and now >= v.expires_at]
            for name in lapsed:
                del self.site_caps[name]
            limits = tuple(SiteLimit(c.amps, name) for name, c in self.site_caps.items())
        return Snapshot(
            site=site,
            chargers=tuple(inputs),
            mains=mains,
            circuit_meters=circuits,
            battery_current=self.battery.current,
            battery_at=self.battery.at,
            grid_relay_open=self.grid_relay_open,
            site_limits=limits,
            state=state,
        )

    def _all_left_out(self, snap: Snapshot, now: float, left_out: dict[str, Quiet]) -> Allocation:
        """The allocation when every charger is left out: their decisions and memos, the readings' figures.

        While the same chargers stay left out tick after tick, the mappings of the last such tick
        are taken over as they are (their memos are the state's, their decisions never change).
        """
        last = self._all_out
        if (
            last is not None
            and snap.state is last[1].state
            and len(last[0]) == len(left_out)
            and all(last[0].get(cid) is q for cid, q in left_out.items())
        ):
            decisions, state = last[1].chargers, last[1].state
        else:
            decisions = {}
            memos: dict[str, ChargerMemo] = {}
            for cid in self.chargers:
                q = left_out[cid]
                assert q.memo is not None
                decisions[cid] = q.decision
                memos[cid] = q.memo
            state = BalancerState(memos)
        alloc = idle_allocation(
            snap.site, snap.mains, snap.battery_current, snap.battery_at, now, decisions, state
        )
        self._all_out = (left_out, alloc)
        return alloc

    def step(self, now: float) -> Allocation:
        """Read every pilot, decide, and write every pilot."""
        dt = 0.0 if self.last_tick is None else max(0.0, now - self.last_tick)
        self.last_tick = now
        if self.before_step is not None:
            self.before_step(now)
        pilots = self.pilots
        chargers = self.chargers
        # The shortcuts (quiet chargers, settled ones left out of `compute`) need the real allocator:
        # a baseline swapped in for a benchmark sees every charger on every tick.
        fast = FAST_PATHS and self.compute is compute
        quiet = self._quiet
        items: Iterable[tuple[str, Charger]] = chargers.items()
        if self._asleep or self._dozing:
            self._check_sleepers()
            if self._asleep:
                items = self._awake_items()
        asleep = self._asleep
        dozing = self._dozing
        calm: dict[str, Quiet] = {}
        read_at = 0.0
        if dozing:
            assert self.pilot_sleep is not None
            read_at = self.pilot_sleep.reading_time()
        for cid, ch in items:
            if dozing:
                q = dozing.get(cid)
                if q is not None:
                    # What `observe_quiet` would take in but for voltages and temperature, which
                    # nothing reads before the charger wakes (and catches up).
                    ch.reading_at = read_at
                    calm[cid] = q
                    continue
            reading = pilots[cid].read()
            if fast and quiet:
                q = quiet.get(cid)
                if q is not None and ch.quiet_key() == q.key and ch.observe_quiet(reading):
                    calm[cid] = q
                    continue
            ch.observe(reading)
            if ch.session is not None:
                ch.add_charging_time(dt)
            if ch.leases:
                ch.drop_expired_leases(now)
        # Settled chargers left out of this tick (the sleeping ones are left out of every tick).
        fresh_out: dict[str, Quiet] = {}
        snap = self._snapshot(now, calm, fresh_out, items)
        left_out = {**asleep, **fresh_out} if asleep else fresh_out
        if not fast:
            alloc = self.compute(snap, now)
        elif not left_out:
            alloc = self._decide(snap, now)
        elif snap.chargers:
            kept = {cid: (q.decision, q.memo) for cid, q in fresh_out.items() if q.memo is not None}
            if asleep:
                kept.update(self._asleep_kept())
            alloc = merge(self._decide(snap, now), chargers, kept)
        else:
            alloc = self._all_left_out(snap, now, left_out)
        self._steady_at = now if left_out and not snap.chargers and not alloc.rejected else None
        memos_before = snap.state.chargers
        self.state = alloc.state
        self.last = alloc
        if alloc.rejected:
            self.rejected.update(alloc.rejected)
        decisions = alloc.chargers
        memos_after = alloc.state.chargers
        lease_s = self.lease_s
        expires = now + lease_s
        # The renewed outputs of quiet chargers, one per distinct output: they are values.
        outputs: dict[tuple[float, float, bool, int, float], PilotOutput] = {}

        def renewed(q: Quiet) -> PilotOutput:
            o = outputs.get(q.shape)
            if o is None:
                d, s, c, p, safe = q.shape
                o = outputs[q.shape] = PilotOutput(d, s, c, p, expires, safe)
            return o

        inputs = iter(snap.chargers)
        sleepers: list[str] = []
        may_sleep = self._may_sleep
        sleep = self.pilot_sleep
        for cid, ch in items:
            a = decisions[cid]
            q = fresh_out.get(cid)
            if q is not None:
                pilot = pilots[cid]
                if dozing and cid in dozing:
                    # Its pilot sleeps already: it is left out from now on.
                    ch.apply_quiet(expires, renewed(q))
                    del dozing[cid]
                    sleepers.append(cid)
                    continue
                pilot.write(ch.apply_quiet(expires, renewed(q)))
                if may_sleep and sleep is not None and sleep.sleep(pilot):
                    sleepers.append(cid)
                continue
            ci = next(inputs)
            q = calm.get(cid)
            if q is not None and (a is q.decision or a == q.decision):
                if dozing and cid in dozing:
                    ch.apply_quiet(expires, renewed(q))
                else:
                    pilot = pilots[cid]
                    pilot.write(ch.apply_quiet(expires, renewed(q)))
                    if may_sleep and sleep is not None and sleep.sleep(pilot):
                        dozing[cid] = q
                before = memos_before.get(cid)
                p = q.input
                q.memo = (
                    before
                    if ci.mode == p.mode
                    and ci.session_kwh == p.session_kwh
                    and settled(ci, before, memos_after.get(cid), a)
                    else None
                )
                continue
            if dozing and dozing.pop(cid, None) is not None:
                # A new decision: the pilot wakes and the charger takes in this tick's reading first.
                assert sleep is not None
                sleep.wake(pilots[cid])
                seen = ch.observe_quiet(pilots[cid].read())
                assert seen, cid
            out = ch.apply(now, a.current, a.source, a.phases, lease_s)
            pilots[cid].write(out)
            if fast:
                key = ch.quiet_key()
                if key is not None and ci.active_phases == ch.active_phases and ci.config is ch.config:
                    before = memos_before.get(cid)
                    memo = before if settled(ci, before, memos_after.get(cid), a) else None
                    shape = (out.duty, out.signaled, out.contactor, out.phases, out.safe_current)
                    quiet[cid] = Quiet(key, ci, a, memo, shape)
                elif quiet:
                    quiet.pop(cid, None)
        if sleepers:
            self._asleep = {**asleep, **{cid: fresh_out[cid] for cid in sleepers}}
            self._awake = None
        return alloc

    def _asleep_kept(self) -> dict[str, tuple[ChargerAllocation, ChargerMemo]]:
        """The sleeping chargers' decisions and memos, as `merge` puts them back (kept per `_asleep`)."""
        asleep = self._asleep
        kept = self._kept
        if kept is None or kept[0] is not asleep:
            memos = {cid: (q.decision, q.memo) for cid, q in asleep.items() if q.memo is not None}
            kept = self._kept = (asleep, memos)
        return kept[1]

    def _awake_items(self) -> list[tuple[str, Charger]]:
        """The chargers not asleep, in order."""
        items = self._awake
        if items is None:
            asleep = self._asleep
            items = self._awake = [(cid, ch) for cid, ch in self.chargers.items() if cid not in asleep]
        return items

    def _check_sleepers(self) -> None:
        """Wake the chargers whose pilot woke by itself (a car came or left), or all of them when this
        tick's `compute` must see every charger (`core.validity.may_leave_out`)."""
        assert self.pilot_sleep is not None
        woken = self.pilot_sleep.woken()
        if woken:
            self._wake(woken)
        if self._asleep or self._dozing:
            mains = self.mains.latest() if self.mains is not None else None
            if not may_leave_out(self.site, mains, {}, self.state):
                self._wake([*self._asleep, *self._dozing])

    def _wake(self, cids: list[str]) -> None:
        """Read, write and step these sleeping chargers again from this tick on (their pilots catch up)."""
        asleep = dict(self._asleep)
        dozing = self._dozing
        sleep = self.pilot_sleep
        assert sleep is not None
        for cid in cids:
            if asleep.pop(cid, None) is not None or dozing.pop(cid, None) is not None:
                sleep.wake(self.pilots[cid])
        self._asleep = asleep
        self._awake = None

    def _wake_all(self) -> None:
        """Wake every sleeping charger after the last tick, in the state that tick would have left it:
        the reading `observe_quiet` takes in, the output renewed to its lease."""
        asleep = {**self._asleep, **self._dozing}
        if not asleep:
            return
        self._wake(list(asleep))
        assert self.last_tick is not None
        expires = self.last_tick + self.lease_s
        for cid, q in asleep.items():
            ch = self.chargers[cid]
            pilot = self.pilots[cid]
            seen = ch.observe_quiet(pilot.read())
            assert seen, cid
            d, s, c, p, safe = q.shape
            pilot.write(ch.apply_quiet(expires, PilotOutput(d, s, c, p, expires, safe)))

    def run(
        self, now: float, end: float, tick_s: float = 1.0, each: Callable[[float], None] | None = None
    ) -> float:
        """The ticks `now + tick_s`, `now + 2 tick_s`, ... up to `end`, each made as `step` makes it, for
        a caller that changes nothing while they run but the simulator's physics (house, PV, meter
        switched off: what `before_step` may do); `each(t)` after every tick may read the chargers'
        signaled currents. Returns the time of the last tick.

        Steady stretches are leapt over (`leap`), and a charger that `step` leaves out of `compute`
        (settled) is put to sleep while its pilot is the simulator's: until its pilot wakes (a car
        comes or leaves) or a tick needs every charger in `compute` (a trip), it is neither read
        nor written, nor are its pilot's physics stepped; after the last tick every charger and
        pilot is in the state the ticks one by one would have left it in.
        """
        self._may_sleep = FAST_PATHS and self.pilot_sleep is not None and self.compute is compute
        if self.circuit_meters:
            # Their readings put every charger into `compute` (`core.validity.may_leave_out`).
            self._may_sleep = False
        t = now
        try:
            while True:
                nt = t + tick_s
                if nt > end:
                    return t
                self.step(nt)
                if each is not None:
                    each(nt)
                t = self.leap(nt, end, tick_s, each)
                if t > nt and each is not None:
                    each(t)
        finally:
            self._may_sleep = False
            self._wake_all()

    def leap(
        self, now: float, end: float, tick_s: float = 1.0, each: Callable[[float], None] | None = None
    ) -> float:
        """After `step(now)`: the ticks `now + tick_s`, `now + 2 tick_s`, ... up to `end` while the site
        stays steady; returns the time of the last tick run (`now` if none).

        Steady: the last step left every charger out of `compute` (all settled, no trip, no circuit
        meter, no reading refused) and the simulator is all the engine reads. Each of those ticks
        would read the same letters, decide the same and write the same outputs but for their
        lease, which a pilot at 0 A never acts on; what moves is physics (house, PV, voltages,
        temperatures) and the mains reading. So only the simulator runs for them, second by
        second, and the mains reading is checked at each; the tick at which the simulator plans a
        change (a car plugs in or leaves), whose reading could bring a charger back or be refused,
        or at `end`, is a full `step`. `each(t)` is called after each tick leapt over (not the last).
        """
        events = self.sim_events
        advance = self.before_step
        if self._steady_at != now or events is None or advance is None or not FAST_PATHS:
            return now
        if self.circuit_meters or self.compute is not compute:
            return now
        event = events()
        limit = self.site.mains_limit
        # A reading the last step took is within these; one the simulator's meter gives at a later
        # tick must be too: beyond them it would be refused or stop everyone (a full step).
        top = min(ABSURD_A, ABSURD_FACTOR * limit, TRIP_FACTOR * limit)
        within = self.mains_within
        t = now
        while True:
            nt = t + tick_s
            if nt > end:
                return t
            if nt >= end or nt >= event:
                self.step(nt)
                return nt
            advance(nt)
            if within is None or not within(-ABSURD_A, top):
                self.step(nt)
                return nt
            if each is not None:
                each(nt)
            t = nt
