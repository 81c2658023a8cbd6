"""Shelly Top AC auto_balance as a metered dynamic circuit node of the site tree.

A charger whose auto_balance is enabled sits under its own circuit node `auto_balance:<charger>`,
between it and its configured circuit (or the mains). The node's limit is `max_current`; its meter is
the Shelly EM, read by its driver in the driver's own task. The one balancer (`core.balancer.compute`)
keeps the node under its limit like any metered circuit, and falls back when its reading is stale.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from evpilot.core.charger import Charger, Phases
from evpilot.core.site import CircuitConfig, Reading
from evpilot.devices.shelly_em import ShellyEmDriver

if TYPE_CHECKING:
    from evpilot.control.runtime import Runtime

log = logging.getLogger("evpilot.autobalance")
NODE_PREFIX = "auto_balance:"


@dataclass(frozen=True, slots=True)
class AutoBalanceSettings:
    """The `auto_balance` object of a Top AC's service config."""

    enable: bool = False
    em_ip: str | None = None
    max_current: float = 24.0
    exclude_self_current: bool = True


def _sound(s: AutoBalanceSettings) -> bool:
    """Whether stored settings are ones `Service.SetConfig` could have accepted."""
    amps = s.max_current
    number = isinstance(amps, int | float) and not isinstance(amps, bool) and 6 <= amps <= 200
    return (
        isinstance(s.enable, bool)
        and isinstance(s.exclude_self_current, bool)
        and (s.em_ip is None or isinstance(s.em_ip, str))
        and (s.em_ip is not None or not s.enable)
        and number
    )


def node_name(cid: str) -> str:
    """The circuit node of charger `cid`'s auto_balance."""
    return NODE_PREFIX + cid


def node_reading(
    em: tuple[float, ...],
    taken_at: float,
    ev: Phases,
    used: tuple[int, ...],
    exclude_self_current: bool,
) -> Reading:
    """The node's reading from the EM's channels (`em`, A) and the charger's current on the mains phases.

    A one-channel meter (EM1) is taken as each mains phase the charger draws on (`used`). Without
    `exclude_self_current` the meter sees only the other loads, so the charger's own current is added.
    """
    currents = [em[0] if p in used else 0.0 for p in range(3)] if len(em) == 1 else list(em[:3])
    if not exclude_self_current:
        currents = [c + e for c, e in zip(currents, ev, strict=True)]
    return Reading((currents[0], currents[1], currents[2]), taken_at)


class NodeMeter:
    """The node's meter as the balancer reads it (`node_reading`): everything below the node included."""

    def __init__(
        self,
        driver: ShellyEmDriver,
        charger: Charger,
        settings: AutoBalanceSettings,
    ) -> None:
        self.driver = driver
        self.charger = charger
        self.settings = settings

    def latest(self) -> Reading | None:
        """The node's reading, or None before the meter first answered."""
        full = self.driver.full()
        if full is None:
            return None
        ch = self.charger
        pm = ch.config.phase_map
        return node_reading(
            full.currents[: self.driver.channels],
            full.taken_at,
            pm.to_mains(ch.currents),
            pm.used(ch.active_phases),
            self.settings.exclude_self_current,
        )


class AutoBalance:
    """Each charger's auto_balance settings, node and EM driver (owned by the runtime)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cfg = rt.config.shelly
        self.em_port = cfg.em_port
        self.poll_s = cfg.em_poll_s
        self.settings: dict[str, AutoBalanceSettings] = {cid: self._load(cid) for cid in rt.engine.chargers}
        self.drivers: dict[str, ShellyEmDriver] = {}
        self.running = False

    def _load(self, cid: str) -> AutoBalanceSettings:
        store = self.rt.store
        saved = store.get_setting(f"shelly:{cid}:auto_balance") if store is not None else None
        if isinstance(saved, dict):
            try:
                settings = AutoBalanceSettings(**saved)
            except TypeError:
                settings = None
            if settings is not None and _sound(settings):
                return settings
            log.warning("%s: ignoring unreadable stored auto_balance settings %r", cid, saved)
        return AutoBalanceSettings()

    def start(self) -> None:
        """Put every enabled charger under its node and start its meter's driver."""
        self.running = True
        for cid in self.settings:
            self._apply(cid)

    def configure(self, cid: str, settings: AutoBalanceSettings) -> None:
        """New settings for a charger (validated by the caller): stored, and applied at once when running."""
        self.settings[cid] = settings
        if self.rt.store is not None:
            self.rt.store.set_setting(f"shelly:{cid}:auto_balance", asdict(settings))
        if self.running:
            self._apply(cid)

    def home(self, cid: str) -> str | None:
        """The circuit charger `cid` is configured on (its node's parent)."""
        return next((c.circuit for c in self.rt.config.chargers if c.id == cid), None)

    def _apply(self, cid: str) -> None:
        rt = self.rt
        engine = rt.engine
        settings = self.settings[cid]
        name = node_name(cid)
        ch = rt.charger(cid)
        others = tuple(c for c in engine.site.circuits if c.name != name)
        task = f"autobalance:{cid}"
        old = self.drivers.get(cid)
        if not settings.enable or settings.em_ip is None:
            self.drivers.pop(cid, None)
            entry = rt.supervisor.tasks.get(task)
            if entry is not None and entry.task is not None:
                entry.task.cancel()
            engine.circuit_meters.pop(name, None)
            engine.site = replace(engine.site, circuits=others)
            ch.config = replace(ch.config, circuit=self.home(cid))
            rt.recompute()
            return
        home = self.home(cid)
        # max_current is a setting: the EM's readings are judged against the fuse above the node.
        fuse = engine.site.mains_limit if home is None else rt.circuit_limit(home)
        node = CircuitConfig(name, settings.max_current, parent=home, metered=True, fuse=fuse)
        engine.site = replace(engine.site, circuits=(*others, node))
        ch.config = replace(ch.config, circuit=name)
        if old is None or old.host != settings.em_ip:
            # A new meter address starts afresh; other changes keep the last reading, which then ages.
            driver = ShellyEmDriver(name, settings.em_ip, rt.clock.now, self.em_port, self.poll_s)
            self.drivers[cid] = driver
            rt.supervisor.spawn(task, driver.run)
        else:
            driver = old
        engine.circuit_meters[name] = NodeMeter(driver, ch, settings)
        rt.recompute()

    def status(self, cid: str) -> dict[str, Any]:
        """`Service.GetStatus`'s auto_balance: the meter's currents, its error, the node's room and why."""
        settings = self.settings.get(cid, AutoBalanceSettings())
        driver = self.drivers.get(cid)
        if not settings.enable or driver is None:
            return {"active": False}
        entry = self.rt.supervisor.tasks.get(f"autobalance:{cid}")
        full = driver.full()
        health = driver.health()
        reading = self.rt.engine.circuit_meters[node_name(cid)].latest()
        now = self.rt.clock.now()
        cap: float | None = None
        if reading is None:
            reason = "no_reading"
        elif now - reading.taken_at > self.rt.engine.site.meter_timeout_s:
            reason = "stale"
        else:
            reason = "ok"
            ch = self.rt.charger(cid)
            pm = ch.config.phase_map
            ev = pm.to_mains(ch.currents)
            # What the node leaves this charger (the balancer's reading of a metered circuit).
            other = max(reading.currents[p] - ev[p] for p in pm.used(ch.active_phases))
            cap = round(max(0.0, settings.max_current - max(0.0, other)), 1)
        channels = full.currents[: driver.channels] if full is not None else None
        return {
            "active": entry is not None and entry.task is not None and not entry.task.done(),
            "em_currents": None if channels is None else [round(a, 3) for a in channels],
            "error": None if health.online else health.last_error,
            "cap": cap,
            "reason": reason,
        }
