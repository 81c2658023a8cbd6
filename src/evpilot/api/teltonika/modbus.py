"""Teltonika's holding registers 0-44 served from the runtime, with the communication watchdog.

Writes go to the core as commands: amps to use (15) is the lease `modbus`, which the watchdog ends;
while the watchdog has tripped the lease `modbus_failsafe` holds the charger at the failsafe
current (20; 0 stops it) until a valid request arrives. Timeouts count in the runtime's clock.
Phases are mains phases: register 14's value is mapped through the charger's phase rotation.
Lock/unlock socket (18) drives the charger's cable lock (`set_cable_lock`); lock status (30) is the
lock actuator's feedback.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from pymodbus.constants import ExcCodes

from evpilot import __version__
from evpilot.api.modbus import Refused
from evpilot.api.teltonika import vocab
from evpilot.api.teltonika.vocab import ChargePointState as Cp
from evpilot.api.teltonika.vocab import EvseStatus as St
from evpilot.control.runtime import Runtime
from evpilot.core import commands as cmd
from evpilot.core.access import LockSetting
from evpilot.core.charger import Charger, WorkState
from evpilot.core.iec61851 import PilotState

log = logging.getLogger("evpilot.modbus")

LEASE = "modbus"
FAILSAFE_LEASE = "modbus_failsafe"
_CENTI_KWH = 100.0
# Settings a primary writes that are kept over a restart (register -> field), under `modbus:<charger>`;
# the lock setting (18) is kept with the charger's other access settings.
KEPT = {19: "timeout_s", 20: "failsafe_a"}
_KEY = "modbus:"
# Register 18's values: 0 auto lock, 1 always lock, 2 force unlock (until the socket is free).
LOCK_SETTINGS = (LockSetting.AUTO, LockSetting.ALWAYS, LockSetting.FORCE_UNLOCK)

ORIGIN = "modbus:teltonika"


@dataclass(slots=True)
class UnitState:
    """The registers a primary sets that the core does not keep, and the watchdog's state."""

    timeout_s: int = vocab.DEFAULT_TIMEOUT_S
    failsafe_a: int = vocab.DEFAULT_FAILSAFE_A
    stop_request: int = 0
    last_valid: float = 0.0
    tripped: bool = False
    status: int = -1
    status_since: float = 0.0


class TeltonikaMap:
    """Seed 003's register map for each served charger."""

    def __init__(self, rt: Runtime, chargers: Sequence[str]) -> None:
        self.rt = rt
        now = rt.clock.now()
        # The watchdog runs from the start: a primary that never shows up is a lost link too.
        self.units = {cid: UnitState(last_valid=now, status_since=now) for cid in chargers}
        self.serials = {cid: zlib.crc32(cid.encode()) % 1_000_000_000 for cid in chargers}
        for cid, unit in self.units.items():
            self._restore(cid, unit)

    def _restore(self, cid: str, unit: UnitState) -> None:
        """The kept settings (19, 20) as stored, each dropped alone if no longer valid; a failsafe
        lease kept over a restart stays until valid communication returns."""
        unit.tripped = FAILSAFE_LEASE in self.rt.charger(cid).leases
        saved = self.rt.store.get_setting(_KEY + cid) if self.rt.store is not None else None
        if not isinstance(saved, dict):
            return
        for address, name in KEPT.items():
            value = saved.get(name)
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and vocab.BY_ADDRESS[address].allows(value)
            ):
                setattr(unit, name, value)

    def _save(self, cid: str) -> None:
        if self.rt.store is not None:
            unit = self.units[cid]
            self.rt.store.set_setting(_KEY + cid, {name: getattr(unit, name) for name in KEPT.values()})

    # ---- reads ------------------------------------------------------------------------------

    def read(self, cid: str, address: int, count: int) -> list[int]:
        """`count` registers from `address` (02 outside 0-44)."""
        if address < 0 or count < 1 or address + count > vocab.COUNT:
            raise Refused(ExcCodes.ILLEGAL_ADDRESS, f"registers {address}-{address + count - 1} are not 0-44")
        return self.registers(cid)[address : address + count]

    def registers(self, cid: str) -> list[int]:
        """All 45 registers of charger `cid` now."""
        rt = self.rt
        ch = rt.charger(cid)
        unit = self.units[cid]
        now = rt.clock.now()
        status = self._status(cid, ch, now)
        cfg = ch.config
        pm = cfg.phase_map
        volts = pm.to_mains(ch.voltages)
        amps = pm.to_mains(ch.currents)
        session = ch.session
        lease = ch.leases.get(LEASE)
        amp_limit = min(cfg.max_current, ch.cable_limit or cfg.max_current)
        phases_now = 1 if cfg.phases == 1 or ch.active_phases == 1 else 3
        binding = ch.available_source if ch.available_current < ch.allocated else ch.allocation_source
        warnings = sum(1 << bit for flag, bit in vocab.WARNING_BITS.items() if flag in ch.errors)
        errors = 0
        for flag, bit in vocab.ERROR_BITS.items():
            if flag in ch.errors:
                errors |= 1 << bit
        plugged = ch.plugged
        access = rt.access
        regs = [
            *(vocab.int16(v) for v in volts),
            *(vocab.int16(a * 10) for a in amps),
            int(status),
            *vocab.words(round(now - unit.status_since), 2),
            vocab.EVSE_ID,
            1 if cfg.phases == 3 else 0,
            1 if cfg.phases == 3 and ch.phase_mode != "not_present" else 0,
            vocab.uint16(amp_limit),
            pm.single[0] if cfg.phases == 1 else vocab.PHASE_3,
            pm.single[0] if phases_now == 1 else vocab.PHASE_3,
            vocab.uint16(lease.value if lease is not None else amp_limit),
            unit.stop_request,
            1 if ch.authorized and plugged else 0,
            LOCK_SETTINGS.index(access.of(cid).lock_setting),
            unit.timeout_s,
            unit.failsafe_a,
            0,
            1 if cfg.require_auth else 0,
            vocab.PRODUCT_CODE,
            *vocab.words(self.serials[cid], 2),
            vocab.version_number(__version__),
            int(charge_point_state(ch)),
            vocab.uint16(rt.engine.site.mains_limit),
            vocab.uint16(ch.user_limit if ch.user_limit is not None else cfg.max_current),
            1 if access.locked(cid) else 0,
            vocab.int16(ch.temperature * 10),
            0,
            vocab.IEC_STATE[ch.pilot],
            warnings,
            errors,
            int(vocab.limit_cause(binding)),
            0 if cfg.phases == 1 else (1 if cfg.max_current <= 16 else 2),
            vocab.uint16(ch.power_w),
            vocab.uint16(session.energy_kwh * _CENTI_KWH) if session is not None else 0,
            vocab.uint16(session.duration_s(now)) if session is not None else 0,
            *vocab.words(round(ch.lifetime_kwh * _CENTI_KWH), 4),
        ]
        return regs

    def _status(self, cid: str, ch: Charger, now: float) -> St:
        status = evse_status(ch)
        unit = self.units[cid]
        if status != unit.status:
            unit.status, unit.status_since = status, now
        return status

    # ---- writes -----------------------------------------------------------------------------

    def write(self, cid: str, address: int, values: Sequence[int]) -> None:
        """Check every register first (02 not writable, 03 out of range or impossible), then apply all."""
        ch = self.rt.charger(cid)
        unit = self.units[cid]
        actions: list[cmd.Command] = []
        settings: dict[int, int] = {}
        for i, value in enumerate(values):
            addr = address + i
            reg = vocab.BY_ADDRESS.get(addr)
            if reg is None:
                raise Refused(ExcCodes.ILLEGAL_ADDRESS, f"no register {addr}")
            if reg.access is not vocab.Access.RW:
                raise Refused(ExcCodes.ILLEGAL_ADDRESS, f"register {addr} ({reg.name}) is read-only")
            if not reg.allows(value):
                spans = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in reg.spans)
                raise Refused(ExcCodes.ILLEGAL_VALUE, f"{reg.name}: {value} is not in {spans}")
            actions += self._commands(ch, addr, value)
            settings[addr] = value
        if actions:
            # Checked as a batch before any change (a refusal raises CommandError: exception 03).
            self.rt.apply(actions, ORIGIN)
        if 16 in settings:
            unit.stop_request = settings[16]
        if 19 in settings:
            unit.timeout_s = settings[19]
        if 20 in settings:
            unit.failsafe_a = settings[20]
        if settings.get(21) == 1:
            self._reboot(cid, unit)
        if settings.keys() & {19, 20, 21}:
            self._save(cid)

    def _commands(self, ch: Charger, addr: int, value: int) -> list[cmd.Command]:
        """The core commands a valid value asks for (03 when the charger cannot do it)."""
        cid = ch.config.id
        if addr == 14:
            mode = self._phases(ch, value)
            return [] if mode is None else [cmd.SetPhaseMode(cid, mode)]
        if addr == 15:
            return [cmd.SetLease(cid, LEASE, float(value))]
        if addr == 16 and value:
            return [cmd.Stop(cid) if value == 1 else cmd.Start(cid)]
        if addr == 17 and value == 1:
            return [cmd.Authorize(cid)]
        if addr == 18:
            return [cmd.SetCableLock(cid, LOCK_SETTINGS[value].value)]
        if addr == 21 and value == 1:
            return restart(cid)
        return []

    def _phases(self, ch: Charger, value: int) -> str | None:
        cfg = ch.config
        switchable = cfg.phases == 3 and ch.phase_mode != "not_present"
        if value == vocab.PHASE_3:
            if cfg.phases != 3:
                raise Refused(ExcCodes.ILLEGAL_VALUE, f"{cfg.id} is a 1-phase charger")
            return "always_3p" if switchable else None
        if value == cfg.phase_map.single[0]:
            if cfg.phases == 1:
                return None
            if not switchable:
                raise Refused(
                    ExcCodes.ILLEGAL_VALUE, f"{cfg.id} has no second contactor to switch to 1 phase"
                )
            return "always_1p"
        raise Refused(
            ExcCodes.ILLEGAL_VALUE,
            f"phase to use {value}: {cfg.id} runs on mains phase L{cfg.phase_map.single[0] + 1}"
            + (" or on 3 phases (6)" if cfg.phases == 3 else ""),
        )

    def _reboot(self, cid: str, unit: UnitState) -> None:
        """The charger's state machine restarts: the primary's settings are back at their defaults."""
        fresh = UnitState(last_valid=unit.last_valid, status_since=self.rt.clock.now())
        self.units[cid] = fresh
        self.rt.apply(
            [
                cmd.SetLease(cid, LEASE, None),
                cmd.SetLease(cid, FAILSAFE_LEASE, None),
                cmd.SetCableLock(cid, LockSetting.AUTO.value),
            ],
            ORIGIN,
        )
        log.info("%s: restarted by a Modbus request", cid)

    # ---- the watchdog ---------------------------------------------------------------------

    def heard(self, cid: str) -> None:
        """A valid request: feed the watchdog, and end a failsafe."""
        unit = self.units[cid]
        unit.last_valid = self.rt.clock.now()
        if unit.tripped:
            unit.tripped = False
            self.rt.apply(cmd.SetLease(cid, FAILSAFE_LEASE, None), ORIGIN)
            log.info("%s: Modbus communication is back: failsafe ended", cid)

    def watch(self) -> None:
        """Trip the watchdog of every charger without a valid request for its timeout."""
        now = self.rt.clock.now()
        for cid, unit in self.units.items():
            ch = self.rt.charger(cid)
            self._status(cid, ch, now)
            if unit.tripped or unit.timeout_s == 0 or now - unit.last_valid < unit.timeout_s:
                continue
            unit.tripped = True
            log.warning(
                "%s: no valid Modbus request for %d s: failsafe current %d A",
                cid,
                unit.timeout_s,
                unit.failsafe_a,
            )
            # Amps to use was the primary's lease: the lost link ends it.
            amps = float(unit.failsafe_a)
            self.rt.apply([cmd.SetLease(cid, LEASE, None), cmd.SetLease(cid, FAILSAFE_LEASE, amps)], ORIGIN)


def restart(cid: str) -> list[cmd.Command]:
    """Restart the charger's state machine: latched faults cleared (the leases are the map's own)."""
    return [cmd.ResetFaults(cid)]


def evse_status(ch: Charger) -> St:
    """(a) The EVSE status of a charger."""
    pilot = ch.pilot
    if pilot is PilotState.E:
        return St.E
    if pilot is PilotState.F or ch.faulted:
        return St.F
    if not ch.plugged:
        return St.A
    if not ch.authorized:
        return St.D2
    work = ch.work_state()
    if work is WorkState.CHARGING:
        return St.C
    if ch.ev_done or ch.limit_reached is not None:
        return St.D1
    if ch.signaled > 0:
        return St.B1
    return St.B2 if ch.has_charged else St.B3


def charge_point_state(ch: Charger) -> Cp:
    """(b) The charge point state of a charger."""
    if ch.pilot in (PilotState.E, PilotState.F) or ch.faulted:
        return Cp.ERROR
    if not ch.available:
        return Cp.OTHER
    if not ch.plugged:
        return Cp.NO_EV
    work = ch.work_state()
    if work is WorkState.CHARGING:
        return Cp.CHARGING
    if ch.ev_done or ch.limit_reached is not None:
        return Cp.SUCCESSFUL
    if ch.paused or not ch.enabled:
        return Cp.STOPPED_BY_USER
    if not ch.authorized or not (ch.auto_charge or ch.start_requested):
        return Cp.AWAITING_PERMISSION
    if ch.has_charged:
        return Cp.PAUSED
    return Cp.AUTHORIZED
