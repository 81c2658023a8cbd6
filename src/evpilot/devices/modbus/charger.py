"""A charger driven over Modbus as a secondary (Teltonika external control or ESP32-EVSE registers).

evpilot is the primary here: the link polls the charger's registers faster than its communication
watchdog, turns them into a `LinkReading`, and writes the engine's setpoint: Teltonika amps to use
(15), phase to use (14) and start (16), with the watchdog timeout (19) and failsafe current (20)
set at start-up and again whenever the charger reads back something else (a reboot, an app);
ESP32-EVSE enabled (103) and charging current (106, ×10). A new setpoint wakes the link at once, so
a decrease goes out without waiting for the next poll. A Teltonika's socket lock is a `LockActuator`
(`lock_actuator()`): locking writes "always lock" (18 = 1), unlocking "force unlock" (18 = 2), and
the lock status (30) is the feedback. The register vocabularies are the facades'
(`api/teltonika/vocab.py`, `api/esp32evse/modbus.py`), read the other way round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

from evpilot.api.esp32evse import modbus as esp
from evpilot.api.teltonika import vocab as tc
from evpilot.core.charger import ChargerConfig
from evpilot.devices.base import LinkReading, LockActuator, Setpoint
from evpilot.devices.meter import Clock
from evpilot.devices.modbus.bus import BusError, Endpoint, ModbusBus, acquire, release

log = logging.getLogger("evpilot.modbus.charger")

# Amps to use and the failsafe current go 0 or 6-32 A in whole amperes.
MIN_A, MAX_A = 6, 32
START_SESSION = 2
STOPPED = 1
# Lock/unlock socket (18): what evpilot's lock state machine asks for.
LOCK_ALWAYS, LOCK_FORCE_UNLOCK = 1, 2


def whole_amps(current: float, top: float = MAX_A) -> int:
    """A current as the registers take it: 0 below 6 A, else whole amperes rounded down, at most `top`."""
    if not math.isfinite(current) or current < MIN_A:
        return 0
    return max(MIN_A, min(int(top), math.floor(current + 1e-9)))


class ModbusChargerLink:
    """A Modbus secondary charger seen as a `ChargerLink` (`driver: {type: modbus, map: ...}`)."""

    def __init__(self, config: ChargerConfig, spec: Any, clock: Clock) -> None:
        self.name = config.id
        self.config = config
        self.spec = spec
        self.clock = clock
        self.map: str = spec.map
        self.unit: int = spec.unit
        self.endpoint = Endpoint(
            host=spec.host,
            port=spec.port,
            serial=spec.serial,
            baudrate=spec.baudrate,
            parity=spec.parity,
            stopbits=spec.stopbits,
        )
        self.poll_s: float = spec.poll_s
        self.timeout_s: float = spec.timeout_s
        self.watchdog_s: int = spec.watchdog_s
        self.failsafe_a: int = whole_amps(config.safe_current)
        self.setpoint: Setpoint | None = None
        self.reads = 0
        self.writes = 0
        self.failures = 0
        self.last_error: str | None = None
        self._reading: LinkReading | None = None
        self._wake = asyncio.Event()
        self._bus: ModbusBus | None = None
        # What the charger last read back, by register (Teltonika 14-20, ESP32-EVSE 103/106).
        self._seen: dict[int, int] = {}
        self._failing = False
        # The lock: a write of register 18 still to go out, and lock status (30) as last read.
        self._lock_request: int | None = None
        self.lock_sensed: bool | None = None

    @property
    def driver(self) -> str:
        """The config `type`."""
        return "modbus"

    @property
    def address(self) -> str:
        """Endpoint, unit and map, for humans."""
        return f"{self.endpoint} unit {self.unit} ({self.map})"

    def send(self, setpoint: Setpoint) -> None:
        """Keep the newest setpoint; a changed one is written at once."""
        old = self.setpoint
        self.setpoint = setpoint
        if old is None or old.current != setpoint.current or old.phases != setpoint.phases:
            self._wake.set()

    def lock_actuator(self) -> LockActuator | None:
        """The socket lock of a Teltonika secondary (registers 18 and 30); an ESP32-EVSE offers none."""
        return TeltonikaLock(self) if self.map == "teltonika" else None

    def drive_lock(self, lock: bool) -> None:
        """Ask the charger to lock (always lock) or unlock (force unlock) its socket, at once."""
        self._lock_request = LOCK_ALWAYS if lock else LOCK_FORCE_UNLOCK
        self._wake.set()

    def latest(self) -> LinkReading | None:
        """The last reading (its time is when it was read)."""
        return self._reading

    def status(self, now: float) -> dict[str, Any]:
        """`link` of the charger's API document; offline it is assumed at its failsafe current."""
        r = self._reading
        online = r is not None and not self._failing
        raw = self._seen.get(15 if self.map == "teltonika" else esp.CHARGING_CURRENT)
        amps: float | None = None if raw is None else float(raw)
        if amps is not None and self.map != "teltonika":
            amps = amps / 10.0 if self._seen.get(esp.ENABLED) else 0.0
        if online and r is not None:
            assumed: float = max(r.currents)
        elif self.map == "teltonika":
            assumed = float(self.failsafe_a)
        else:
            assumed = float(amps or 0.0)
        return {
            "driver": self.driver,
            "address": self.address,
            "online": online,
            "last_seen_s": None if r is None else round(max(0.0, now - r.taken_at), 1),
            "errors": self.failures,
            "error_counts": {},
            "last_error": self.last_error,
            "commanded_a": amps,
            "assumed_a": round(assumed, 1),
        }

    async def run(self) -> None:
        """Poll and write until cancelled; a failed exchange is retried at the next poll."""
        self._bus = bus = acquire(self.endpoint)
        try:
            while True:
                try:
                    await self.exchange(bus)
                except BusError as exc:
                    self._failed(str(exc))
                else:
                    if self._failing:
                        log.info("%s: %s answers again", self.name, self.address)
                    self._failing = False
                    self.last_error = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                self._wake.clear()
        finally:
            self._bus = None
            release(bus)

    def _failed(self, message: str) -> None:
        self.lock_sensed = None  # not known while the charger does not answer
        self.failures += 1
        self.last_error = message
        if not self._failing:
            log.warning("%s: %s", self.name, message)
        self._failing = True

    async def exchange(self, bus: ModbusBus) -> None:
        """One poll: write what differs from the setpoint, then read the charger back."""
        if self.map == "teltonika":
            await self._teltonika(bus)
        else:
            await self._esp32evse(bus)

    def wanted(self) -> tuple[float, int]:
        """The current and phase count to command now: the setpoint, at most the failsafe once expired."""
        sp = self.setpoint
        if sp is None:
            return 0.0, self.config.phases
        current = sp.current
        if self.clock() >= sp.expires_at:
            current = min(current, sp.safe_current)
        return current, sp.phases

    async def _write(self, bus: ModbusBus, address: int, values: list[int]) -> None:
        await bus.write(self.unit, address, values, self.timeout_s)
        self.writes += 1
        for i, v in enumerate(values):
            self._seen[address + i] = v

    # ---- Teltonika ----------------------------------------------------------------------------

    async def _teltonika(self, bus: ModbusBus) -> None:
        seen = self._seen
        if seen.get(19) != self.watchdog_s or seen.get(20) != self.failsafe_a:
            # At start, or the charger lost them (a reboot, the app): amps and phases go out again too,
            # as a charger without a lease reads back its own limit, which may equal the setpoint.
            await self._write(bus, 19, [self.watchdog_s, self.failsafe_a])
            seen.pop(14, None)
            seen.pop(15, None)
        current, phases = self.wanted()
        amps = whole_amps(current, min(MAX_A, self.config.max_current))
        if seen.get(15) != amps:
            await self._write(bus, 15, [amps])
        cfg = self.config
        if cfg.phases == 3 and cfg.contactor2 != "not_present":
            use = tc.PHASE_3 if phases == 3 else cfg.phase_map.single[0]
            if seen.get(14) != use:
                await self._write(bus, 14, [use])
        if amps > 0 and seen.get(16) == STOPPED:
            await self._write(bus, 16, [START_SESSION])
        request = self._lock_request
        if request is not None:
            await self._write(bus, 18, [request])
            if self._lock_request == request:
                self._lock_request = None
        regs = await bus.read(self.unit, 3, 0, tc.COUNT, self.timeout_s)
        self.reads += 1
        now = self.clock()
        pm = cfg.phase_map
        volts = pm.from_mains(
            (float(tc.signed(regs[0])), float(tc.signed(regs[1])), float(tc.signed(regs[2])))
        )
        amps_in = pm.from_mains(
            (tc.signed(regs[3]) / 10.0, tc.signed(regs[4]) / 10.0, tc.signed(regs[5]) / 10.0)
        )
        self._reading = LinkReading(
            now,
            tc.IEC_LETTER.get(regs[33], "E"),
            amps_in,
            tc.from_words(regs[41:45]) / 100.0,
            volts,
            tc.signed(regs[31]) / 10.0,
        )
        # Phase to use as read back is the phases in use, not the request: compare 14 with what was
        # written, and let the rest follow the charger (a reboot resets 15, 19, 20).
        self.lock_sensed = regs[30] == 1
        for address in (15, 16, 19, 20):
            seen[address] = regs[address]
        if regs[27] == tc.ChargePointState.STOPPED_BY_USER:
            seen[16] = STOPPED

    # ---- ESP32-EVSE ---------------------------------------------------------------------------

    async def _esp32evse(self, bus: ModbusBus) -> None:
        seen = self._seen
        current, _ = self.wanted()
        top_a = self.config.max_current
        tenths = math.floor(min(current, top_a) * 10 + 1e-6) if current >= MIN_A else 0
        if tenths:
            if seen.get(esp.CHARGING_CURRENT) != tenths:
                await self._write(bus, esp.CHARGING_CURRENT, [tenths])
            if seen.get(esp.ENABLED) != 1:
                await self._write(bus, esp.ENABLED, [1])
        elif seen.get(esp.ENABLED) != 0:
            await self._write(bus, esp.ENABLED, [0])
        top = await bus.read(self.unit, 3, esp.STATE, 7, self.timeout_s)
        vals = await bus.read(self.unit, 3, esp.CONSUMPTION_WH, 14, self.timeout_s)
        self.reads += 1
        now = self.clock()
        state = esp.state_text(top[0]) or "E"

        def pair(offset: int) -> int:
            return esp.from_hi_lo(vals[offset], vals[offset + 1])

        volts = (pair(2) / 1000.0, pair(4) / 1000.0, pair(6) / 1000.0)
        amps = (pair(8) / 1000.0, pair(10) / 1000.0, pair(12) / 1000.0)
        self._reading = LinkReading(now, state[0], amps, pair(0) / 1000.0, volts)
        seen[esp.ENABLED] = top[esp.ENABLED - esp.STATE]
        seen[esp.CHARGING_CURRENT] = top[esp.CHARGING_CURRENT - esp.STATE]


class TeltonikaLock:
    """A Teltonika secondary's socket lock as a `LockActuator`: driven through 18, sensed through 30."""

    def __init__(self, link: ModbusChargerLink) -> None:
        self._link = link

    def drive(self, lock: bool) -> None:
        """Start locking (True) or unlocking (False): the link writes it at once."""
        self._link.drive_lock(lock)

    def sensed(self) -> bool | None:
        """Lock status (30) as last read; None before the first read and while the charger is silent."""
        return self._link.lock_sensed


def build(config: ChargerConfig, spec: Any, clock: Clock) -> ModbusChargerLink:
    """The link for a `type: modbus` charger driver mapping."""
    return ModbusChargerLink(config, spec, clock)
