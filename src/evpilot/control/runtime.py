"""The asyncio runtime: ticks the engine on an injected clock and publishes changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, cast

from evpilot.config import (
    AppConfig,
    ChargerModel,
    CircuitModel,
    ConfigError,
    MeterSpec,
    SiteModel,
    SolarModel,
    field_bounds,
    with_fuses,
)
from evpilot.control import views as vw
from evpilot.control.access import AccessControl
from evpilot.control.autobalance import AutoBalance
from evpilot.control.build import assemble
from evpilot.control.history import HistoryRecorder
from evpilot.control.history import sample as history_sample
from evpilot.control.listeners import ListenerBus
from evpilot.control.overload import OverloadMonitor
from evpilot.control.supervisor import Supervisor
from evpilot.control.views import (
    AllocationView,
    ChargerView,
    MainsMeterView,
    MainsView,
    OverloadView,
    SimView,
    SiteCapView,
    SiteView,
    charger_key,
    charger_raw,
    charger_view,
)
from evpilot.core import commands as cmd
from evpilot.core import events as ev
from evpilot.core.charger import Charger, ChargerConfig
from evpilot.core.errors import CommandError, check_range
from evpilot.core.schedule import DAY_S, Schedule, ScheduleAction, due
from evpilot.core.session import SessionCheckpoint, SessionRecord, StopReason
from evpilot.core.site import SiteConfig
from evpilot.devices.apifed import ApiFedMeter
from evpilot.devices.evmeter import ApiFedEvMeter, MeteredPilot
from evpilot.devices.meter import MeterDriver, MeterFault, MeterHealth, MeterReading
from evpilot.store.base import SessionStore

if TYPE_CHECKING:
    from evpilot.devices.modbus.simtwins import SimTwins
    from evpilot.sim.ev import CarSpec
    from evpilot.sim.shelly_em import SimShellyEm

log = logging.getLogger("evpilot")
# Open sessions and lifetime counters are checkpointed this often (clock seconds) ...
CHECKPOINT_S = 10.0
# ... or before the energy not yet checkpointed could pass this (kWh): the most a crash loses.
CHECKPOINT_KWH = 0.010
# A session left open by a crash, on a charger whose link has not reported since the start, is kept
# this long (clock seconds) for it to come back before it is closed as interrupted.
RESUME_WAIT_S = 300.0
# An API-fed mains or circuit reading beyond this many times the node's limit is refused.
READING_BOUND = 3.0
# An EV meter may count at most this much more than its charger's MAX at 230 V on all its phases.
EV_POWER_MARGIN = 1.25
NOMINAL_VOLTAGE = 230.0
_LIMITS_KEY = "limits"
_SETTING_KEYS = (
    "enabled",
    "auto_charge",
    "user_limit",
    "energy_cap_kwh",
    "time_cap_min",
    "mode",
    "phase_mode",
)
# Applied commands kept for `recent_commands` (the native API's `GET /api/commands`).
RECENT_COMMANDS = 200
# Site settings that hold fuses changed at run time: restored through their validating setters.
_FUSE_KEYS = ("mains_limit", "max_current", "circuit_limits", "charger_min_current", "priority")
_RESTORE_ORDER = {"min_current": 0, "charger_min_current": 2}


class Clock(Protocol):
    """The time source the runtime follows."""

    speed: float

    def now(self) -> float:
        """Current clock time (epoch seconds)."""

    def not_before(self, t: float) -> None:
        """Move the clock forward to `t` if it is earlier."""

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of clock time."""

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait for `event` at most `seconds` of clock time."""


class UnknownCharger(KeyError):
    """No charger with this id."""


# Frames a WebSocket client may have waiting, besides one full state (a client that falls this far
# behind is closed; see FrameQueue).
QUEUE_FRAMES = 1000
# A listener's mailbox holds this many times a subscriber's frames before it drops the oldest.
LISTENER_FRAMES = 4


class FrameQueue(asyncio.Queue[dict[str, Any]]):
    """A subscriber's bounded frame queue; `overflowed` is set once a frame did not fit."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.overflowed = asyncio.Event()

    def offer(self, frame: dict[str, Any]) -> bool:
        """Queue `frame`; False (and `overflowed` set) when the queue is full."""
        try:
            self.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflowed.set()
            return False
        return True


@dataclass(frozen=True, slots=True)
class ViewChanges:
    """What one tick changed: the site's view (None: unchanged) and the chargers' changed views."""

    at: float
    site: SiteView | None
    chargers: tuple[ChargerView, ...]


class Runtime:
    """Runs the control loop, owns the site, applies commands and broadcasts state."""

    def __init__(self, config: AppConfig, clock: Clock, store: SessionStore | None = None) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        if store is not None:
            # A sped-up run may have stored times ahead of the wall clock: never run backwards.
            clock.not_before(store.high_water())
        self.started_at = clock.now()
        parts = assemble(
            config,
            self.started_at,
            lifetime=store.lifetime if store is not None else None,
            clock=clock.now,
        )
        self.engine = parts.engine
        self.sim = parts.sim
        self.sim_meter = parts.sim_meter
        self.api_meter = parts.api_meter
        self.api_meter.listeners.append(self.recompute)
        # Meter drivers (mains, circuits, EV meters) and setpoint-level charger links, each run by
        # its own supervised task; the tick only reads what they cached.
        self.meters = parts.meters
        self.links = parts.links
        # The simulated mains meter served over Modbus (`sim.modbus_twins`), from start() to stop().
        self.twins: SimTwins | None = None
        self.ocpp = parts.ocpp
        if self.ocpp is not None:
            self.ocpp.listeners.append(self.recompute)
        # Every charger can take an EV meter fed through an API (SmartEVSE REST and MQTT); while
        # that feed is fresh its currents and energy replace the pilot's own meter.
        self.ev_meters: dict[str, ApiFedEvMeter] = {}
        run_tag = "-" + secrets.token_hex(3)
        for cid in self.engine.chargers:
            self.engine.chargers[cid].run_tag = run_tag
            cfg = self.engine.chargers[cid].config
            meter = ApiFedEvMeter(cfg.max_current * NOMINAL_VOLTAGE * cfg.phases * EV_POWER_MARGIN)
            meter.listeners.append(self.recompute)
            self.ev_meters[cid] = meter
            self.engine.pilots[cid] = MeteredPilot(
                self.engine.pilots[cid], meter, config.site.meter_timeout_s
            )
        self.api_meter.bound = lambda: READING_BOUND * self.engine.site.mains_limit
        for circuit in self.engine.site.circuits:
            circuit_meter = self.engine.circuit_meters.get(circuit.name)
            if isinstance(circuit_meter, ApiFedMeter):
                # The live limit: CIRCUIT may change at run time.
                circuit_meter.bound = lambda name=circuit.name: READING_BOUND * self.circuit_limit(name)
        self.default_id = config.chargers[0].id if config.chargers else ""
        self.subscribers: set[FrameQueue] = set()
        # Facades and the MQTT bridge: each listener in its own task, fed a bounded mailbox by the tick.
        self.listeners = ListenerBus(
            lambda name, exc: self.supervisor.record(name, exc),
            lambda: LISTENER_FRAMES * (QUEUE_FRAMES + len(self.engine.chargers) + 2),
        )
        # Facades that render from views: told what each tick changed (topic `views`, message
        # `{"changes": ViewChanges}`), isolated the same way.
        self.view_listeners = ListenerBus(
            lambda name, exc: self.supervisor.record(name, exc),
            lambda: LISTENER_FRAMES * (QUEUE_FRAMES + len(self.engine.chargers) + 2),
        )
        # The read model: the latest views and their change keys.
        self.views: dict[str, ChargerView] = {}
        self.history = HistoryRecorder(store) if store is not None else None
        self._keys: dict[str, tuple[Any, ...]] = {}
        # The exact values each view was last checked against (equal: its key cannot have moved).
        self._raws: dict[str, tuple[Any, ...]] = {}
        # Views rebuilt by a read between ticks: the next tick publishes them.
        self._unpublished: set[str] = set()
        self._site_view: SiteView | None = None
        self._published_site: SiteView | None = None
        self._published_default: tuple[ChargerView, float] | None = None
        self._wake = asyncio.Event()
        self.supervisor = Supervisor(clock.now)
        self._stopping = False
        self._cp_at = self.started_at
        self._cp_total = self._last_total = sum(c.lifetime_kwh for c in self.engine.chargers.values())
        self._cp_ids: frozenset[str] = frozenset()
        # Sessions checkpointed by a run that crashed: settled at the first tick.
        self._resumed: dict[str, SessionCheckpoint] = {}
        self._limits_saved: dict[str, Any] | None = None
        self.tick_count = 0
        self.tick_times: list[float] = []
        self.overloads = OverloadMonitor()
        self.schedules: dict[str, Schedule] = {}
        self.recent_commands: deque[dict[str, Any]] = deque(maxlen=RECENT_COMMANDS)
        if store is not None:
            self._restore(store)
            if self.ocpp is not None:
                self.ocpp.attach_store(store)
        # Shelly auto_balance: metered circuit nodes with their EM drivers (started with the runtime).
        self.auto_balance = AutoBalance(self)
        self.sim_em: SimShellyEm | None = None
        # Cards, swipes, the switch input, the cable lock and weekly windows (docs/access.md).
        self.access = AccessControl(self)
        if self.ocpp is not None:
            # The wallboxes' id tags are checked against the cards.
            self.ocpp.tags = self.access

    # ---- lifecycle --------------------------------------------------------------------------

    def _restore(self, store: SessionStore) -> None:
        site = store.get_setting("site")
        if isinstance(site, dict):
            # One setting at a time, as for chargers: a stale one is dropped alone.
            # The site-wide MIN before the chargers' own; MAX before MIN (as they were set).
            for key, value in sorted(site.items(), key=lambda kv: _RESTORE_ORDER.get(kv[0], 1)):
                with contextlib.suppress(CommandError, TypeError, ValueError):
                    if key == "mode":
                        self.set_site_mode(value)
                    elif key == "min_current":
                        self.set_min_current(value)
                    elif key in _FUSE_KEYS:
                        self._restore_fuses(key, value)
                    else:
                        self.update_site(**{key: value})
        for cid, ch in self.engine.chargers.items():
            saved = store.get_setting(f"charger:{cid}")
            if isinstance(saved, dict):
                self._restore_charger(ch, saved)
            with contextlib.suppress(CommandError, TypeError, ValueError, KeyError):
                self._restore_schedule(cid, store.get_setting(f"schedule:{cid}"))
        self._restore_limits(store.get_setting(_LIMITS_KEY))
        self._limits_saved = self._limits_state()
        for cp in store.open_sessions():
            found = self.engine.chargers.get(cp.charger_id)
            if found is None:
                store.add_session(_interrupted(cp))
                log.warning("session %s of a charger no longer configured: closed as interrupted", cp.id)
                continue
            found.session = cp.session()
            self._resumed[cp.charger_id] = cp

    def _restore_limits(self, saved: Any) -> None:
        """External limits as stored, those whose lease has not lapsed in clock time."""
        if not isinstance(saved, dict):
            return
        now = self.started_at
        bad = (CommandError, TypeError, ValueError, KeyError, AttributeError)
        with contextlib.suppress(*bad):
            self.engine.grid_relay_open = saved.get("grid_relay_open") is True
        for name, (amps, expires) in dict(saved.get("site_caps") or {}).items():
            with contextlib.suppress(*bad):
                if expires is None or expires > now:
                    self.engine.set_site_cap(name, amps, expires)
        for cid, limits in dict(saved.get("chargers") or {}).items():
            ch = self.engine.chargers.get(cid)
            if ch is None or not isinstance(limits, dict):
                continue
            with contextlib.suppress(*bad):
                ch.set_override(limits.get("override"))
            for name, (amps, expires) in dict(limits.get("leases") or {}).items():
                with contextlib.suppress(*bad):
                    if expires is None or expires > now:
                        ch.set_lease(name, amps, expires)

    def _limits_state(self) -> dict[str, Any]:
        e = self.engine
        return {
            "grid_relay_open": e.grid_relay_open,
            "site_caps": {k: [c.amps, c.expires_at] for k, c in e.site_caps.items()},
            "chargers": {
                cid: {
                    "override": ch.override,
                    "leases": {k: [v.value, v.expires_at] for k, v in ch.leases.items()},
                }
                for cid, ch in e.chargers.items()
                if ch.override is not None or ch.leases
            },
        }

    def _save_limits(self) -> None:
        """Store the external limits when they changed (set, cleared, re-armed or lapsed)."""
        if self.store is None or self._limits_saved is None:  # None: not restored yet
            return
        state = self._limits_state()
        if state != self._limits_saved:
            self._limits_saved = state
            self.store.set_setting(_LIMITS_KEY, state, self.clock.now())

    @staticmethod
    def _restore_charger(ch: Charger, saved: dict[str, Any]) -> None:
        setters: dict[str, Callable[[Any], None]] = {
            "enabled": lambda v: ch.set_enabled(bool(v)),
            "auto_charge": lambda v: ch.set_auto_charge(bool(v)),
            "user_limit": ch.set_user_limit,
            "energy_cap_kwh": ch.set_energy_cap,
            "time_cap_min": ch.set_time_cap,
            "mode": ch.set_mode,
            "phase_mode": ch.set_phase_mode,
        }
        # One setting at a time: one that no longer validates (say MAX was lowered) is dropped alone.
        for key, setter in setters.items():
            if key in saved:
                with contextlib.suppress(CommandError, TypeError, ValueError):
                    setter(saved[key])

    def _persist(self, ch: Charger) -> None:
        if self.store is None:
            return
        self.store.set_setting(f"charger:{ch.config.id}", {k: getattr(ch, k) for k in _SETTING_KEYS})

    async def start(self) -> None:
        """Run the first tick and start the control loop (and the auto_balance meters' drivers)."""
        port = self.config.shelly.sim_em_port
        if port is not None and self.sim is not None:
            from evpilot.sim.shelly_em import SimShellyEm

            self.sim_em = SimShellyEm(self.sim.mains_meter)
            await self.sim_em.start("127.0.0.1", port)
            log.info("simulated Shelly Pro 3EM on http://127.0.0.1:%d", self.sim_em.port)
        self.auto_balance.start()
        self.tick()
        await self._start_twins()
        for name, meter in self.meters.items():
            self.supervisor.spawn(f"meter:{name}", meter.run)
        for cid, link in self.links.items():
            self.supervisor.spawn(f"link:{cid}", link.run)
        if self.ocpp is not None:
            self.supervisor.spawn("ocpp-server", self.ocpp.run)
        self.supervisor.spawn("control", self._loop)

    async def stop(self) -> None:
        """Stop the loop, close open sessions and save counters."""
        self._stopping = True
        self._wake.set()
        # Whatever fails on the way, the sessions and counters are still saved (each step alone).
        try:
            await self.supervisor.stop_all()
        except Exception:
            log.exception("stopping the runtime's tasks failed")
        if self.sim_em is not None:
            try:
                await self.sim_em.stop()
            except Exception:
                log.exception("stopping the simulated Shelly EM failed")
        if self.twins is not None:
            try:
                await self.twins.stop()
            except Exception:
                log.exception("stopping the Modbus twins failed")
            self.twins = None
        now = self.clock.now()
        for ch in self.engine.chargers.values():
            tx = ch.device_tx
            if ch.session is not None and tx is not None and tx.running:
                # The charger's own transaction goes on without evpilot (an OCPP wallbox): the
                # session stays open in the store, and the next run closes it with that transaction.
                log.info(
                    "%s: session %s left open with the charger's transaction", ch.config.id, ch.session.id
                )
                continue
            try:
                ch.close(now, StopReason.SHUTDOWN)
            except Exception:
                log.exception("%s: closing the session failed", ch.config.id)
        try:
            self._drain_events()
        finally:
            try:
                if self.store is not None:
                    try:
                        self._save_limits()
                    except Exception:
                        log.exception("saving the external limits failed")
                    self._checkpoint(now)
                    if self.history is not None:
                        self.history.finish()
                    await asyncio.to_thread(self.store.flush)
            finally:
                try:
                    await self.view_listeners.stop()
                finally:
                    await self.listeners.stop()

    async def _loop(self) -> None:
        tick_s = self.config.control.tick_s
        next_tick = self.clock.now() + tick_s
        while not self._stopping:
            woke = await self.clock.wait(self._wake, max(0.0, next_tick - self.clock.now()))
            self._wake.clear()
            try:
                self.tick()
            except Exception as exc:  # the loop must survive a bug in one tick
                self.supervisor.record("control", exc)
            if not woke:
                next_tick += tick_s
                if next_tick < self.clock.now():
                    next_tick = self.clock.now() + tick_s

    def recompute(self) -> None:
        """Ask for an immediate tick (new meter data or a command)."""
        self._wake.set()
        self._save_limits()

    # ---- one tick ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance the site to now, compute, apply, publish."""
        now = self.clock.now()
        if self.schedules:
            self._run_schedules(now)
        self.access.tick(now)
        self.engine.step(now)
        self._watch_overloads(now)
        if self._resumed and now > self.started_at:
            # Not at start itself: a simulated car present at start plugs in at the first step.
            self._settle_resumed(now)
        self.tick_count += 1
        self.tick_times.append(now)
        if len(self.tick_times) > 1000:
            del self.tick_times[:500]
        self._drain_events()
        self._publish_changes(now, self._build_views())
        if self.history is not None and self._published_site is not None:
            # The site view this tick published (not rebuilt): a few additions, the write is queued.
            self.history.observe(now, history_sample(self._published_site, self.views.values()))
        if self.store is not None:
            self._maybe_checkpoint(now)
            self._save_limits()

    def _watch_overloads(self, now: float) -> None:
        e = self.engine
        mains = None
        if self.sim is not None and e.mains is self.sim_meter:
            mains = self.sim.mains_currents  # the simulated truth, also while its meter is silent
        elif e.last is not None and e.last.mains_fresh and e.last_mains is not None:
            mains = e.last_mains.currents
        self.overloads.observe(now, self.config.control.tick_s, e, mains, e.site.meter_timeout_s)

    def _settle_resumed(self, now: float) -> None:
        """A session from before a crash continues if its car is still plugged in, else it ends.

        A charger behind a link that has not reported since the start (a wallbox reconnecting to the
        OCPP backend) is waited for up to `RESUME_WAIT_S`: it may still be charging, and its own
        StopTransaction may close the session.
        """
        resumed, self._resumed = self._resumed, {}
        for cid, cp in resumed.items():
            ch = self.engine.chargers[cid]
            if ch.session is None or ch.session.id != cp.id:
                continue
            link = self.links.get(cid)
            if ch.plugged:
                log.info("%s: session %s continues after a restart (%.3f kWh)", cid, cp.id, cp.energy_kwh)
            elif link is not None and link.latest() is None and now - self.started_at < RESUME_WAIT_S:
                self._resumed[cid] = cp
            else:
                ch.close(cp.at, StopReason.INTERRUPTED)

    def _maybe_checkpoint(self, now: float) -> None:
        chargers = self.engine.chargers.values()
        total = sum(c.lifetime_kwh for c in chargers)
        step = max(0.0, total - self._last_total)
        self._last_total = total
        ids = frozenset(c.session.id for c in chargers if c.session is not None)
        # Checkpoint before the next tick's energy (about this tick's) could pass the budget.
        if (
            ids != self._cp_ids
            or total - self._cp_total + step >= CHECKPOINT_KWH
            or total < self._cp_total
            or now - self._cp_at >= CHECKPOINT_S
        ):
            self._checkpoint(now)

    def _checkpoint(self, now: float) -> None:
        """Queue the open sessions and the lifetime counters as one transaction."""
        assert self.store is not None
        chargers = self.engine.chargers
        sessions = [SessionCheckpoint.of(c.session, now) for c in chargers.values() if c.session is not None]
        self.store.checkpoint(sessions, {cid: c.lifetime_kwh for cid, c in chargers.items()}, now)
        self._cp_at = now
        self._cp_total = self._last_total = sum(c.lifetime_kwh for c in chargers.values())
        self._cp_ids = frozenset(s.id for s in sessions)

    def _drain_events(self) -> None:
        """Log, store and broadcast every charger event (none is dropped), oldest first."""
        for ch in self.engine.chargers.values():
            if not ch.events:
                continue
            events, ch.events = ch.events, []
            for event in events:
                self._log_event(ch, event)
                if isinstance(event, ev.SessionEnded):
                    if self.store is not None:
                        self.store.add_session(event.record)
                    ended = {"charger": event.charger, "event": "ended", **_rec(event.record)}
                    self._broadcast("session", ended)
                elif isinstance(event, ev.SessionStarted):
                    started = {"charger": event.charger, "event": "started", "id": event.session_id}
                    self._broadcast("session", started)
                self._broadcast("event", ev.event_message(event))

    @staticmethod
    def _log_event(ch: Charger, event: ev.ChargerEvent) -> None:
        cid = event.charger
        match event:
            case ev.Plugged():
                log.info("%s: vehicle plugged in", cid)
            case ev.Unplugged():
                log.info("%s: vehicle unplugged", cid)
            case ev.ContactorChanged(closed=closed):
                log.debug("%s: contactor %s", cid, "closed" if closed else "open")
            case ev.StateChanged(pilot=pilot, work_state=work):
                log.info(
                    "%s: %s (%s), signaled %.1f A, allocated %.1f A by %s",
                    cid,
                    work.value,
                    pilot.value,
                    ch.signaled,
                    ch.allocated,
                    ch.allocation_source,
                )
            case ev.SessionStarted(session_id=sid):
                log.info("%s: session %s started", cid, sid)
            case ev.SessionEnded(record=r):
                log.info("%s: session %s ended (%s), %.3f kWh", cid, r.id, r.stop_reason, r.energy_kwh)
            case ev.LimitReached(limit=limit):
                log.info("%s: %s limit reached, charging stopped", cid, limit.value)
            case ev.FaultRaised(flag=flag):
                log.warning("%s: fault raised: %s", cid, flag.value)
            case ev.FaultCleared(flag=flag):
                log.info("%s: fault cleared: %s", cid, flag.value)

    # ---- the read model -----------------------------------------------------------------------

    def _build_views(self) -> list[ChargerView]:
        """Rebuild the views whose change key moved; returns the changed charger views."""
        changed: list[ChargerView] = []
        site_mode = self.engine.site.mode
        memos = self.engine.state.chargers
        keys, raws, views, unpublished = self._keys, self._raws, self.views, self._unpublished
        shown: dict[Any, Any] = {}
        for cid, ch in self.engine.chargers.items():
            memo = memos.get(cid)
            short = None if memo is None else memo.solar_short_since
            # Right after the step: the pilot and work state each charger has just reported.
            pilot, work = ch.reported_pilot, ch.reported_work
            raw = charger_raw(ch, site_mode, short, pilot, work, shown)
            if raws.get(cid) == raw:
                if cid in unpublished:
                    changed.append(views[cid])
                continue
            raws[cid] = raw
            key = charger_key(ch, site_mode, short, pilot, work)
            if keys.get(cid) != key:
                keys[cid] = key
                view = views[cid] = charger_view(ch, key)
                changed.append(view)
            elif cid in unpublished:
                changed.append(views[cid])
        unpublished.clear()
        return changed

    def charger_view(self, cid: str) -> ChargerView:
        """Charger `cid`'s view as of now (raises UnknownCharger): the tick's, unless it changed since."""
        ch = self.charger(cid)
        memo = self.engine.state.chargers.get(cid)
        short = None if memo is None else memo.solar_short_since
        pilot, work, mode = ch.pilot, ch.work_state(), self.engine.site.mode
        raw = charger_raw(ch, mode, short, pilot, work)
        if self._raws.get(cid) == raw:
            return self.views[cid]
        self._raws[cid] = raw
        key = charger_key(ch, mode, short, pilot, work)
        if self._keys.get(cid) != key:
            self._keys[cid] = key
            self.views[cid] = charger_view(ch, key)
            self._unpublished.add(cid)
        return self.views[cid]

    def site_view(self) -> SiteView:
        """The site's view as of now (the same object while nothing in it changed)."""
        built = self._make_site_view()
        if built != self._site_view:
            self._site_view = built
        assert self._site_view is not None
        return self._site_view

    def _make_site_view(self) -> SiteView:
        e = self.engine
        alloc = e.last
        mains = None
        reading = e.last_mains
        if reading is not None:
            meter = None
            if self.sim is not None and e.mains is self.sim_meter:
                m = self.sim.mains_meter()
                meter = MainsMeterView(m.voltages, m.powers, m.import_kwh, m.export_kwh, m.frequency)
            fresh = alloc.mains_fresh if alloc is not None else False
            mains = MainsView(reading.currents, reading.taken_at, fresh, meter)
        allocation = None
        if alloc is not None:
            allocation = AllocationView(
                alloc.base_load, alloc.available, alloc.solar_surplus, alloc.fallback, alloc.mains_fresh
            )
        sim = None
        if self.sim is not None:
            s = self.sim
            sim = SimView(
                s.now,
                s.tod(s.now) / 3600.0,
                s.pv_w,
                s.house_currents,
                s.battery_w,
                s.params.ambient_c,
                s.frequency,
            )
        nodes = self.overloads.nodes
        return SiteView(
            config=e.site,
            mains_meter=self.config.site.mains_meter,
            mains=mains,
            allocation=allocation,
            rejected=tuple(sorted(e.rejected.items())),
            grid_relay_open=e.grid_relay_open,
            caps=tuple(SiteCapView(name, cap.amps, cap.expires_at) for name, cap in e.site_caps.items()),
            battery_current=e.battery.current,
            battery_at=e.battery.at,
            overloads=tuple(
                OverloadView(name, n.events, n.longest_s, n.over_now, n.stalled)
                for name, n in sorted(nodes.items())
            ),
            chargers=tuple(e.chargers),
            sim=sim,
        )

    def _publish_changes(self, now: float, changed: list[ChargerView]) -> None:
        site = self.site_view()
        site_changed = site is not self._published_site
        self._published_site = site
        if self.view_listeners:
            changes = ViewChanges(now, site if site_changed else None, tuple(changed))
            self.view_listeners.publish("views", {"changes": changes})
        if not self.subscribers and not self.listeners:
            return
        if site_changed:
            self._broadcast("site", self.site_doc_of(site, now))
        if self.default_id:
            default = self.views[self.default_id]
            shown = (default, site.frequency)
            if shown != self._published_default:
                self._published_default = shown
                self._broadcast("charging", vw.charging_doc(default, site))
        for view in changed:
            self._broadcast("charger", vw.charger_doc(view, now))

    def _broadcast(self, topic: str, message: dict[str, Any]) -> None:
        frame = {"topic": topic, "message": message}
        for q in list(self.subscribers):
            q.offer(frame)
        self.listeners.publish(topic, message)

    def subscribe(self) -> FrameQueue:
        """A bounded queue that receives every published frame; the current state comes first."""
        q = FrameQueue(QUEUE_FRAMES + len(self.engine.chargers) + 2)
        q.put_nowait({"topic": "site", "message": self.site_doc()})
        now = self.clock.now()
        for cid in self.engine.chargers:
            q.put_nowait({"topic": "charger", "message": vw.charger_doc(self.charger_view(cid), now)})
        if self.default_id:
            q.put_nowait({"topic": "charging", "message": self.charging_doc(self.default_id)})
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: FrameQueue) -> None:
        """Stop sending frames to `q`."""
        self.subscribers.discard(q)

    # ---- lookups ------------------------------------------------------------------------------

    def charger(self, cid: str) -> Charger:
        """The charger with id `cid` (raises UnknownCharger)."""
        try:
            return self.engine.chargers[cid]
        except KeyError:
            raise UnknownCharger(cid) from None

    def apply(self, commands: cmd.Command | Sequence[cmd.Command], origin: str) -> None:
        """Check every command, then apply them all, log each with its origin and tick at once.

        A refusal (CommandError, UnknownCharger) comes before any change: a batch is all or nothing.
        `origin` names the face that sent it (`rest:native`, `ws`, `mqtt:smartevse`, ...).
        """
        batch: Sequence[cmd.Command] = commands if isinstance(commands, list | tuple) else (commands,)
        # Later commands are checked against the MIN and MAX the earlier ones set.
        pending: dict[str, ChargerConfig] = {}
        try:
            for command in batch:
                self.check(command, pending)
        except (CommandError, UnknownCharger) as exc:
            log.debug("command refused origin=%s: %s", origin, exc)
            raise
        now = self.clock.now()
        touched: dict[str, Charger] = {}
        for command in batch:
            doc = cmd.to_json(command)
            self._apply(command, now, touched, origin)
            log.info("command %s origin=%s", doc, origin)
            self.recent_commands.append(
                {
                    "at": round(now, 3),
                    "origin": origin,
                    "command": doc["command"],
                    "fields": {k: v for k, v in doc.items() if k != "command"},
                }
            )
        for ch in touched.values():
            self._persist(ch)
        self.recompute()

    def check(self, c: cmd.Command, pending: dict[str, ChargerConfig] | None = None) -> None:
        """Refuse a command the site or its charger cannot take now (CommandError, UnknownCharger).

        `pending` holds the charger configs as the batch's earlier commands leave them (MIN, MAX);
        a command that changes them updates it.
        """
        configs = {} if pending is None else pending

        def config(cid: str) -> ChargerConfig:
            return configs.get(cid) or self.charger(cid).config

        match c:
            case cmd.SetSiteMode(mode=mode):
                cmd.site_mode(mode)
            case cmd.SetCapacityLimit(amps=amps):
                cmd.capacity_limit(amps)
            case cmd.SetCapStop(seconds=seconds):
                low, high = field_bounds(SiteModel, "cap_stop_min")
                check_range("cap_stop_s", seconds, low * 60, high * 60, " s")
            case cmd.SetSolar():
                for name in ("start_current", "stop_min", "max_import"):
                    value = getattr(c, name)
                    if value is not None:
                        check_range(name, value, *field_bounds(SolarModel, name))
            case cmd.SetMinCurrent(amps=amps):
                value = self._check_min_current(amps)
                for cid in self.engine.chargers:
                    configs[cid] = replace(config(cid), min_current=value)
            case cmd.SetFuses(charger=cid, max_current=max_current, min_current=min_current):
                self.set_fuses(**self._fuses(c), dry_run=True)
                if cid is not None and max_current is not None:
                    configs[cid] = replace(config(cid), max_current=float(max_current))
                if cid is not None and min_current is not None:
                    configs[cid] = replace(config(cid), min_current=float(min_current))
            case cmd.SetSiteCap(source=source, amps=amps):
                if source not in cmd.SITE_CAP_SOURCES:
                    raise CommandError(
                        "source", f"{source!r} is not one of {', '.join(cmd.SITE_CAP_SOURCES)}"
                    )
                if amps is not None:
                    check_range("amps", amps, 0.0, cmd.MAX_SITE_CAP_A, " A")
            case cmd.SetGridRelay(open=is_open):
                if not isinstance(is_open, bool):
                    raise CommandError("open", "must be true or false")
            case cmd.SetSchedule(charger=cid, start_at=start, stop_at=stop, repeat=repeat):
                cmd.check(c, config(cid))
                self.check_schedule(start, stop, repeat)
            case (
                cmd.Swipe()
                | cmd.SetRfidMode()
                | cmd.SetSwitch()
                | cmd.SetCableLock()
                | cmd.LearnCard()
                | cmd.DeleteCards()
                | cmd.SetOcppTag()
            ):
                self.access.check(c)
            case _:
                target = cmd.charger_of(c)
                assert target is not None
                cmd.check(c, config(target))

    @staticmethod
    def _fuses(c: cmd.SetFuses) -> dict[str, Any]:
        fuses: dict[str, Any] = {}
        if c.mains is not None:
            fuses["mains"] = c.mains
        if c.circuit is not None and c.circuit_limit is not None:
            fuses["circuit"] = (c.circuit, c.circuit_limit)
        if c.charger is not None and c.max_current is not None:
            fuses["charger"] = (c.charger, c.max_current)
        if c.charger is not None and c.min_current is not None:
            fuses["charger_min"] = (c.charger, c.min_current)
        if c.charger is not None and c.priority is not None:
            fuses["priority"] = (c.charger, c.priority)
        return fuses

    def _apply(self, c: cmd.Command, now: float, touched: dict[str, Charger], origin: str) -> None:
        """Apply one checked command (site setters persist and recompute themselves)."""
        match c:
            case (
                cmd.Swipe()
                | cmd.SetRfidMode()
                | cmd.SetSwitch()
                | cmd.SetCableLock()
                | cmd.LearnCard()
                | cmd.DeleteCards()
                | cmd.SetOcppTag()
            ):
                self.access.apply(c, origin)
            case cmd.SetSiteMode(mode=mode):
                self.set_site_mode(mode)
            case cmd.SetCapacityLimit(amps=amps):
                self.set_capacity_limit(amps)
            case cmd.SetCapStop(seconds=seconds):
                self.update_site(cap_stop_s=float(seconds))
            case cmd.SetSolar():
                names = ("start_current", "stop_min", "max_import")
                self.update_site(solar={k: float(getattr(c, k)) for k in names if getattr(c, k) is not None})
            case cmd.SetMinCurrent(amps=amps):
                self.set_min_current(amps)
            case cmd.SetFuses():
                self.set_fuses(**self._fuses(c))
            case cmd.SetSiteCap(source=source, amps=amps, expires_at=expires):
                self.engine.set_site_cap(source, amps, expires)
            case cmd.SetGridRelay(open=is_open):
                self.engine.grid_relay_open = bool(is_open)
            case cmd.SetSchedule(charger=cid, start_at=start, stop_at=stop, repeat=repeat):
                self.set_schedule(cid, start, stop, repeat)
            case cmd.ClearStart(charger=cid):
                self.clear_start(cid)
            case _:
                target = cmd.charger_of(c)
                assert target is not None
                ch = self.charger(target)
                _apply_charger(ch, c, now)
                if getattr(c, "persist", False):
                    touched[target] = ch

    def update_site(self, **changes: Any) -> SiteConfig:
        """Replace site settings (already range-checked by the caller); a dict updates a nested group."""
        site = self.engine.site
        raw = dict(changes)
        for key, value in list(changes.items()):
            if not hasattr(site, key):
                raise CommandError(key, "is not a site setting")
            if isinstance(value, dict):
                changes[key] = replace(getattr(site, key), **value)
        self.engine.site = replace(site, **changes)
        self._save_site(**raw)
        self.recompute()
        return self.engine.site

    def _save_site(self, **changes: Any) -> None:
        """Merge changed site settings into the stored ones, so a restart keeps them."""
        if self.store is None:
            return
        saved = self.store.get_setting("site")
        merged: dict[str, Any] = dict(saved) if isinstance(saved, dict) else {}
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        self.store.set_setting("site", merged)

    def _check_min_current(self, amps: float) -> float:
        value = check_range("current_min", amps, *cmd.MIN_CURRENT_RANGE, " A")
        for ch in self.engine.chargers.values():
            if value > ch.config.max_current:
                raise CommandError("current_min", f"{value} A is above {ch.config.id}'s MAX")
        return value

    def set_min_current(self, amps: float) -> None:
        """Set MIN (A per phase, 6-16) of every charger; refused if above a charger's MAX."""
        value = self._check_min_current(amps)
        for ch in self.engine.chargers.values():
            ch.config = replace(ch.config, min_current=value)
        # The chargers' own MINs are replaced: a restart must not bring them back.
        self._save_site(min_current=value, charger_min_current=None)
        self.recompute()

    def set_site_mode(self, mode: str) -> None:
        """Set the site's default mode."""
        cmd.site_mode(mode)
        self.engine.site = replace(self.engine.site, mode=mode)
        self._save_site(mode=mode)
        self.recompute()

    def set_capacity_limit(self, amps: float | None) -> None:
        """Set the CAPACITY limit (A summed over the phases, 10-600); None or 0 removes it."""
        value = cmd.capacity_limit(amps)
        self.engine.site = replace(self.engine.site, capacity_limit=value)
        self._save_site(capacity_limit=value)
        self.recompute()

    # ---- fuses: MAINS, MAX and CIRCUIT at run time ----------------------------------------------

    def circuit_limit(self, name: str) -> float:
        """The live per-phase limit of circuit `name` (CommandError if there is no such circuit)."""
        for circuit in self.engine.site.circuits:
            if circuit.name == name:
                return circuit.limit
        raise CommandError("circuit", f"no circuit {name!r}")

    def set_fuses(
        self,
        mains: float | None = None,
        circuit: tuple[str, float] | None = None,
        charger: tuple[str, float] | None = None,
        dry_run: bool = False,
        charger_min: tuple[str, float] | None = None,
        priority: tuple[str, int] | None = None,
    ) -> None:
        """Set MAINS, a circuit's limit, a charger's MAX, MIN (A per phase) and priority together, or none.

        Each must be in the config file's range; MAX not below the charger's MIN, user limit or
        override (as MIN is refused above MAX); and the result must pass the config's own checks,
        the fallback rule included. A refusal names the setting(s) (`mains_limit`, `circuit_limit`,
        `max_current`, `min_current`, `priority`; comma-separated when only the combination fails)
        and changes nothing.
        """
        site = self.engine.site
        limits = {c.name: c.limit for c in site.circuits}
        chargers = self.engine.chargers
        currents = {cid: (c.config.min_current, c.config.max_current) for cid, c in chargers.items()}
        fields: list[str] = []
        if mains is not None:
            mains = check_range("mains_limit", mains, *field_bounds(SiteModel, "mains_limit"), " A")
            fields.append("mains_limit")
        if circuit is not None:
            name, amps = circuit
            self.circuit_limit(name)
            limits[name] = check_range("circuit_limit", amps, *field_bounds(CircuitModel, "limit"), " A")
            fields.append("circuit_limit")
        if charger_min is not None:
            cid, amps = charger_min
            self.charger(cid)
            low = check_range("min_current", amps, *field_bounds(ChargerModel, "min_current"), " A")
            currents[cid] = (low, currents[cid][1])
            fields.append("min_current")
        if priority is not None:
            cid, rank = priority
            self.charger(cid)
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise CommandError("priority", "must be a whole number")
            check_range("priority", rank, *field_bounds(ChargerModel, "priority"))
        if charger is not None:
            cid, amps = charger
            ch = self.charger(cid)
            value = check_range("max_current", amps, *field_bounds(ChargerModel, "max_current"), " A")
            new_min = currents[cid][0]
            below = (("MIN", new_min), ("user limit", ch.user_limit), ("override", ch.override))
            for what, limit in below:
                if limit is not None and value < limit:
                    raise CommandError("max_current", f"{value:g} A is below {cid}'s {what} ({limit:g} A)")
            currents[cid] = (new_min, value)
            fields.append("max_current")
        try:
            checked = with_fuses(self.config, site.mains_limit if mains is None else mains, limits, currents)
        except ConfigError as exc:
            raise CommandError(",".join(fields), "; ".join(m for _, m in exc.errors)) from None
        if dry_run:
            return
        self.config = checked
        if mains is not None:
            site = replace(site, mains_limit=mains)
            self._save_site(mains_limit=mains)
        if circuit is not None:
            name = circuit[0]
            circuits = tuple(replace(c, limit=limits[name]) if c.name == name else c for c in site.circuits)
            site = replace(site, circuits=circuits)
            self._save_site(circuit_limits={name: limits[name]})
        self.engine.site = site
        if charger is not None:
            cid = charger[0]
            ch = chargers[cid]
            max_current = currents[cid][1]
            ch.config = replace(ch.config, max_current=max_current)
            max_power = max_current * NOMINAL_VOLTAGE * ch.config.phases
            self.ev_meters[cid].max_power_w = max_power * EV_POWER_MARGIN
            self._save_site(max_current={cid: max_current})
        if charger_min is not None:
            cid = charger_min[0]
            low = currents[cid][0]
            chargers[cid].config = replace(chargers[cid].config, min_current=low)
            self._save_site(charger_min_current={cid: low})
        if priority is not None:
            cid, rank = priority
            chargers[cid].config = replace(chargers[cid].config, priority=rank)
            self._save_site(priority={cid: rank})
        self.recompute()

    def set_mains_limit(self, amps: float) -> None:
        """Set MAINS (A per phase); see set_fuses."""
        self.set_fuses(mains=amps)

    def set_max_current(self, cid: str, amps: float) -> None:
        """Set charger `cid`'s MAX (A per phase); see set_fuses."""
        self.set_fuses(charger=(cid, amps))

    def set_circuit_limit(self, name: str, amps: float) -> None:
        """Set circuit `name`'s limit (A per phase); see set_fuses."""
        self.set_fuses(circuit=(name, amps))

    def _restore_fuses(self, key: str, value: Any) -> None:
        if key == "mains_limit":
            self.set_mains_limit(value)
            return
        for name, amps in dict(value).items():
            # One at a time: a circuit or charger no longer configured, or a value the config now
            # refuses, is dropped alone.
            with contextlib.suppress(CommandError, TypeError, ValueError):
                if key == "max_current":
                    self.set_max_current(name, amps)
                elif key == "charger_min_current":
                    self.set_fuses(charger_min=(name, amps))
                elif key == "priority":
                    self.set_fuses(priority=(name, amps))
                else:
                    self.set_circuit_limit(name, amps)

    # ---- start/stop schedules (SmartEVSE delayed charging) ------------------------------------

    def utc_offset(self, now: float) -> float:
        """Seconds local time is ahead of UTC: the simulator's day while it runs, else the host's zone."""
        if self.sim is not None:
            shift = (self.sim.tod(now) - now) % DAY_S
            return shift - DAY_S if shift >= DAY_S / 2 else shift
        return float(time.localtime(now).tm_gmtoff)

    def set_schedule(self, cid: str, start_at: float, stop_at: float | None, repeat: bool) -> Schedule:
        """Start charging at `start_at`, stop at `stop_at` (clock epoch s), once or daily.

        Until the start the charger is disabled, as the firmware turns access off while it waits.
        """
        ch = self.charger(cid)
        schedule = self.check_schedule(start_at, stop_at, repeat)
        ch.set_enabled(False)
        self._persist(ch)
        self._store_schedule(cid, schedule)
        self.recompute()
        return schedule

    def check_schedule(self, start_at: float, stop_at: float | None, repeat: bool) -> Schedule:
        """The schedule, if it can be set now (CommandError naming `starttime`, `stoptime` or `repeat`)."""
        if start_at <= self.clock.now():
            raise CommandError("starttime", "is not in the future")
        if stop_at is not None and stop_at <= start_at:
            raise CommandError("stoptime", "is not after the start time")
        if repeat and stop_at is None:
            raise CommandError("repeat", "needs a stop time")
        return Schedule(start_at, stop_at, repeat)

    def clear_start(self, cid: str) -> None:
        """Drop a pending start (a mode change does, on the firmware); a stop time stays."""
        schedule = self.schedules.get(cid)
        if schedule is not None and schedule.start_at is not None:
            rest = replace(schedule, start_at=None)
            self._store_schedule(cid, Schedule() if rest.empty else rest)

    def _store_schedule(self, cid: str, schedule: Schedule) -> None:
        if schedule.empty:
            self.schedules.pop(cid, None)
        else:
            self.schedules[cid] = schedule
        if self.store is not None:
            saved = {"start_at": schedule.start_at, "stop_at": schedule.stop_at, "repeat": schedule.repeat}
            self.store.set_setting(f"schedule:{cid}", None if schedule.empty else saved)

    def _restore_schedule(self, cid: str, saved: Any) -> None:
        if not isinstance(saved, dict):
            return
        schedule = Schedule(_epoch(saved["start_at"]), _epoch(saved["stop_at"]), saved["repeat"] is True)
        if not schedule.empty:
            self.schedules[cid] = schedule

    def _run_schedules(self, now: float) -> None:
        for cid, schedule in list(self.schedules.items()):
            action, rest = due(schedule, now)
            if action is None:
                continue
            ch = self.engine.chargers[cid]
            ch.set_enabled(action is ScheduleAction.START)
            log.info("%s: schedule: charging %s", cid, "allowed" if ch.enabled else "stopped")
            self._persist(ch)
            self._store_schedule(cid, rest)

    # ---- documents ----------------------------------------------------------------------------

    def charging_doc(self, cid: str) -> dict[str, Any]:
        """Seed 002's `/api/v1/charging` fields for one charger."""
        return vw.charging_doc(self.charger_view(cid), self.site_view())

    def charger_doc(self, cid: str) -> dict[str, Any]:
        """The native API's full view of one charger."""
        now = self.clock.now()
        doc = vw.charger_doc(self.charger_view(cid), now)
        if cid in self.links:
            doc["link"] = self.link_doc(cid, now)
        return doc

    def link_doc(self, cid: str, now: float) -> dict[str, Any]:
        """`link` of a charger driven at setpoint level: driver, online, seconds since it answered, errors."""
        link = self.links[cid]
        status = getattr(link, "status", None)
        if callable(status):
            doc: dict[str, Any] = status(now)
            return doc
        r = link.latest()
        return {
            "driver": link.driver,
            "address": link.address,
            "online": bool(getattr(link, "online", True)),
            "last_seen_s": None if r is None else round(max(0.0, now - r.taken_at), 1),
            "errors": 0,
            "error_counts": {},
            "last_error": None,
            "commanded_a": None,
            "assumed_a": None,
        }

    def site_doc(self) -> dict[str, Any]:
        """The native API's view of the site."""
        return self.site_doc_of(self.site_view(), self.clock.now())

    def site_doc_of(self, view: SiteView, now: float) -> dict[str, Any]:
        """The site document from its view, with the meter drivers' full readings."""
        doc = vw.site_doc(view, now)
        mains = doc["mains"]
        if mains is not None and "voltages" not in mains and "mains" in self.meters:
            full = self.meters["mains"].full()
            if full is not None:
                values = _reading_doc(full, now)
                mains.update({k: values[k] for k in _FULL_KEYS})
        doc["meters"] = {m["name"]: m["reading"] for m in self.meters_doc()}
        if "sim" in doc:
            doc["sim"] = doc.pop("sim")  # after `meters`, where it was
        return doc

    def meters_doc(self) -> list[dict[str, Any]]:
        """Every site meter: driver, model, address, last reading and its age, errors by kind."""
        now = self.clock.now()
        out: list[dict[str, Any]] = []
        e = self.engine
        for name, source in [("mains", e.mains), *((f"circuit:{c}", m) for c, m in e.circuit_meters.items())]:
            if source is None:
                continue
            driver = self.meters.get(name)
            if driver is not None:
                out.append(
                    _meter_doc(
                        name, driver.driver, driver.model, driver.address, driver.full(), driver.health(), now
                    )
                )
            elif self.sim is not None and source is self.sim_meter:
                m = self.sim.mains_meter()
                reading = MeterReading(
                    m.taken_at,
                    m.currents,
                    m.voltages,
                    m.powers,
                    sum(m.powers),
                    m.import_kwh,
                    m.export_kwh,
                    m.frequency,
                )
                online = self.sim_meter is not None and self.sim_meter.enabled
                health = MeterHealth(online=online, reads=self.tick_count)
                out.append(
                    _meter_doc(name, "sim", None, "simulator", reading if online else None, health, now)
                )
            elif hasattr(getattr(source, "driver", None), "health"):
                # A node whose meter wraps a driver of its own (Shelly auto_balance).
                inner = cast(MeterDriver, getattr(source, "driver"))  # noqa: B009
                full = inner.full()
                out.append(
                    _meter_doc(name, inner.driver, inner.model, inner.address, full, inner.health(), now)
                )
            elif isinstance(source, ApiFedMeter):
                r = source.latest()
                fed = None if r is None else MeterReading(r.taken_at, r.currents)
                errors = {MeterFault.ABSURD: source.refused} if source.refused else {}
                health = MeterHealth(online=r is not None, errors=errors)
                out.append(_meter_doc(name, "api", None, "API feed", fed, health, now))
        for name, driver in self.meters.items():
            if name.startswith("ev:"):
                full = driver.full()
                out.append(
                    _meter_doc(name, driver.driver, driver.model, driver.address, full, driver.health(), now)
                )
        return out

    async def _start_twins(self) -> None:
        """With `sim.modbus_twins`, serve the simulated mains meter where its Modbus mapping reads it."""
        mains = self.config.site.mains_meter
        if not self.config.sim.modbus_twins or self.sim is None or not isinstance(mains, MeterSpec):
            return
        from evpilot.devices.modbus.driver import ModbusSpec
        from evpilot.devices.modbus.simtwins import SimTwins

        self.twins = SimTwins(self.sim.mains_meter, [ModbusSpec.of(mains)])
        await self.twins.start()
        log.info("simulated mains meter served as a Modbus twin at %s", ModbusSpec.of(mains).endpoint)

    # ---- simulator control --------------------------------------------------------------------

    def sim_plug(self, cid: str, spec: CarSpec) -> None:
        """Plug a simulated car into charger `cid`."""
        self.charger(cid)
        assert self.sim is not None
        pilot = self.sim.pilots[cid]
        if pilot.car is not None:
            raise CommandError("charger", f"a car is already plugged into {cid}")
        pilot.plug(spec)
        self.recompute()

    def sim_unplug(self, cid: str) -> None:
        """Unplug the simulated car from `cid`."""
        self.charger(cid)
        assert self.sim is not None
        self.sim.pilots[cid].unplug()
        self.recompute()


_FULL_KEYS = ("voltages", "powers", "power", "import_kwh", "export_kwh", "frequency")


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _reading_doc(r: MeterReading, now: float) -> dict[str, Any]:
    """A meter reading as JSON, with its age in clock seconds."""
    return {
        "taken_at": round(r.taken_at, 3),
        "age_s": round(max(0.0, now - r.taken_at), 1),
        "currents": [round(a, 3) for a in r.currents],
        "voltages": [_r(v, 1) for v in r.voltages],
        "powers": [_r(p, 1) for p in r.powers],
        "power": _r(r.power, 1),
        "import_kwh": _r(r.import_kwh, 3),
        "export_kwh": _r(r.export_kwh, 3),
        "frequency": _r(r.frequency, 3),
    }


def _meter_doc(
    name: str,
    driver: str,
    model: str | None,
    address: str,
    reading: MeterReading | None,
    health: MeterHealth,
    now: float,
) -> dict[str, Any]:
    return {
        "name": name,
        "driver": driver,
        "model": model,
        "address": address,
        "online": health.online,
        "reads": health.reads,
        "reading": None if reading is None else _reading_doc(reading, now),
        "errors": {k.value: v for k, v in sorted(health.errors.items())},
        "last_error": health.last_error,
    }


def _apply_charger(ch: Charger, c: cmd.ChargerCommand, now: float) -> None:
    """Apply one checked charger command."""
    match c:
        case cmd.SetEnabled(enabled=on):
            ch.set_enabled(on)
        case cmd.SetAvailable(available=on):
            ch.set_available(on)
        case cmd.Authorize(authorized=on, id_tag=tag):
            ch.set_authorized(on, tag)
        case cmd.Start(id_tag=tag):
            if tag is not None:
                ch.set_authorized(True, tag)
            ch.request_start(now)
        case cmd.Stop():
            ch.request_stop(now)
        case cmd.SetUserLimit(amps=amps):
            ch.set_user_limit(amps)
        case cmd.SetOverride(amps=amps):
            ch.set_override(amps)
        case cmd.SetLease(name=name, amps=amps, expires_at=expires):
            ch.set_lease(name, amps, expires)
        case cmd.SetPowerLease(name=name, watts=watts, expires_at=expires):
            ch.set_power_lease(name, watts, expires)
        case cmd.RenewLeases(names=names, expires_at=expires):
            for name in names:
                lease = ch.leases.get(name)
                if lease is not None:
                    lease.expires_at = expires
        case cmd.SetEnergyCap(kwh=kwh):
            ch.set_energy_cap(kwh)
        case cmd.SetTimeCap(minutes=minutes):
            ch.set_time_cap(minutes)
        case cmd.SetUnderPower(watts=watts):
            ch.set_under_power_limit(watts)
        case cmd.SetAutoCharge(auto_charge=on):
            ch.set_auto_charge(on)
        case cmd.SetMode(mode=mode):
            ch.set_mode(mode)
        case cmd.SetPhaseMode(phase_mode=mode):
            ch.set_phase_mode(mode)
        case cmd.ResetFaults():
            ch.reset_faults()
        case cmd.ResetLifetime():
            ch.reset_lifetime()
        case _:
            raise AssertionError(f"not a charger command: {c!r}")


def _rec(r: SessionRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "charger_id": r.charger_id,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "energy_kwh": r.energy_kwh,
        "peak_power_w": r.peak_power_w,
        "stop_reason": r.stop_reason,
        "id_tag": r.id_tag,
        "auth_method": r.auth_method,
    }


session_dict = _rec


def _epoch(value: Any) -> float | None:
    """A stored time: None or a number (anything else raises TypeError)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a time: {value!r}")
    return float(value)


def _interrupted(cp: SessionCheckpoint) -> SessionRecord:
    return SessionRecord(
        id=cp.id,
        charger_id=cp.charger_id,
        started_at=cp.started_at,
        ended_at=cp.at,
        energy_kwh=round(cp.energy_kwh, 6),
        peak_power_w=round(cp.peak_power_w, 1),
        stop_reason=StopReason.INTERRUPTED.value,
        id_tag=cp.id_tag,
        auth_method=cp.auth_method,
    )
