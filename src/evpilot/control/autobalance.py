"""Shelly auto_balance: poll each charger's Shelly EM and lease the charger a cap that keeps the site under
`max_current`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

from evpilot.control.runtime import Runtime
from evpilot.control.supervisor import Supervised, TaskState
from evpilot.core.autobalance import BalanceInput, BalanceResult, auto_balance_cap
from evpilot.core.charger import Charger, Phases
from evpilot.devices.shelly_em import EmReading, ShellyEmError, ShellyEmMeter

log = logging.getLogger("evpilot.autobalance")
LEASE = "auto_balance"
# A cap outlives this many missed polls before it lapses (the poller refreshes it every poll).
LEASE_POLLS = 5


@dataclass(frozen=True, slots=True)
class AutoBalanceSettings:
    """The `auto_balance` object of a Top AC's service config."""

    enable: bool = False
    em_ip: str | None = None
    max_current: float = 24.0
    exclude_self_current: bool = True


@dataclass(slots=True)
class BalanceState:
    """What the poller last saw and decided, for status documents."""

    reading: EmReading | None = None
    read_at: float | None = None
    error: str | None = None
    result: BalanceResult | None = None
    em_ip: str | None = None


def ev_on_mains(ch: Charger) -> tuple[Phases, tuple[int, ...]]:
    """The charger's measured currents per mains phase and the mains phases it can draw on."""
    pm = ch.config.phase_map
    return pm.to_mains(ch.currents), pm.used(ch.active_phases)


class AutoBalancer:
    """One polling task per charger whose auto_balance is enabled."""

    def __init__(self, rt: Runtime, em_port: int = 80, poll_s: float = 2.0, timeout_s: float = 2.0) -> None:
        self.rt = rt
        self.em_port = em_port
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.settings: dict[str, AutoBalanceSettings] = {}
        self.state: dict[str, BalanceState] = {}
        self._tasks: dict[str, Supervised] = {}
        self.running = False

    async def start(self) -> None:
        """Start polling for every enabled charger."""
        self.running = True
        for cid in list(self.settings):
            self._restart(cid)

    async def stop(self) -> None:
        """Stop every poller and hand the chargers' caps back."""
        self.running = False
        for cid in list(self._tasks):
            try:
                await self._cancel(cid)
            except Exception:  # the other pollers still stop, and the app's shutdown goes on
                log.exception("%s: stopping auto_balance failed", cid)

    def configure(self, cid: str, settings: AutoBalanceSettings) -> None:
        """New settings for a charger; restarts its poller (call from the event loop)."""
        self.settings[cid] = settings
        if self.running:
            self._restart(cid)

    def _restart(self, cid: str) -> None:
        old = self._tasks.pop(cid, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        settings = self.settings[cid]
        previous = self.state.get(cid)
        # A new meter address starts afresh; other changes (max_current, …) keep the last reading,
        # which then ages normally (and goes stale) if the meter stops answering.
        if previous is None or previous.em_ip != settings.em_ip:
            self.state[cid] = BalanceState(em_ip=settings.em_ip)
        if settings.enable and settings.em_ip is not None:
            self._tasks[cid] = self.rt.supervisor.spawn(
                f"autobalance:{cid}", lambda: self._poll(cid, settings)
            )
        else:
            self.rt.command(cid, lambda ch: ch.set_lease(LEASE, None, None), persist=False)

    async def _cancel(self, cid: str) -> None:
        entry = self._tasks.pop(cid, None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.task
            entry.state = TaskState.STOPPED
        self.rt.command(cid, lambda ch: ch.set_lease(LEASE, None, None), persist=False)

    def _lease_s(self) -> float | None:
        speed = self.rt.clock.speed
        if not math.isfinite(speed):
            return None
        return LEASE_POLLS * self.poll_s * speed

    async def _poll(self, cid: str, settings: AutoBalanceSettings) -> None:
        assert settings.em_ip is not None
        meter = ShellyEmMeter(settings.em_ip, self.em_port, self.timeout_s)
        clock = self.rt.clock
        state = self.state[cid]
        try:
            while True:
                try:
                    state.reading = await meter.read()
                    state.read_at = clock.now()
                    state.error = None
                except ShellyEmError as exc:
                    if state.error != str(exc):
                        log.warning("%s: auto_balance meter: %s", cid, exc)
                    state.error = str(exc)
                self._apply(cid, settings, state, clock.now())
                await asyncio.sleep(self.poll_s)
        finally:
            await meter.close()

    def _apply(self, cid: str, settings: AutoBalanceSettings, state: BalanceState, now: float) -> None:
        ch = self.rt.charger(cid)
        ev, phases = ev_on_mains(ch)
        reading = state.reading
        result = auto_balance_cap(
            BalanceInput(
                meter=None if reading is None else reading.currents,
                meter_age_s=0.0 if state.read_at is None else now - state.read_at,
                ev=ev,
                max_current=settings.max_current,
                exclude_self_current=settings.exclude_self_current,
                ev_phases=phases,
                timeout_s=self.rt.engine.site.meter_timeout_s,
                fallback=self.rt.engine.site.fallback_current,
            )
        )
        state.result = result
        lease_s = self._lease_s()
        expires = None if lease_s is None else self.rt.clock.now() + lease_s
        amps = min(result.amps, 80.0)
        self.rt.command(cid, lambda c: c.set_lease(LEASE, amps, expires), persist=False)

    def status(self, cid: str) -> dict[str, Any]:
        """The poller's last reading and decision for one charger."""
        s = self.state.get(cid)
        settings = self.settings.get(cid, AutoBalanceSettings())
        if s is None or not settings.enable:
            return {"active": False}
        return {
            "active": cid in self._tasks
            and self._tasks[cid].state in (TaskState.RUNNING, TaskState.RESTARTING),
            "em_currents": None if s.reading is None else [round(a, 3) for a in s.reading.currents],
            "error": s.error,
            "cap": None if s.result is None else round(s.result.amps, 1),
            "reason": None if s.result is None else s.result.reason,
        }
