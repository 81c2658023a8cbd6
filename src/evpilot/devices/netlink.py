"""Charger links over a network API: the shared task (poll, deliver setpoints, back off, log once)."""

from __future__ import annotations

import asyncio
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from evpilot.core.iec61851 import MIN_CURRENT
from evpilot.devices.base import LinkReading, Setpoint
from evpilot.devices.meter import Clock

log = logging.getLogger("evpilot.links")
# After a failed exchange the next one waits poll_s, then twice that, ... up to this (seconds).
BACKOFF_CAP_S = 10.0
# A device's own current setting counts as delivered within this (A): the devices round to 0.1 A.
SETTING_SLACK_A = 0.05


class LinkFault(StrEnum):
    """Why an exchange with a charger failed."""

    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    AUTH = "auth"
    PROTOCOL = "protocol"
    REFUSED = "refused"


class LinkError(Exception):
    """One failed exchange, with the fault it counts as."""

    def __init__(self, fault: LinkFault, message: str) -> None:
        super().__init__(message)
        self.fault = fault
        self.message = message


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One read of a charger: its reading, and the current it is set to offer (0: stopped / disabled)."""

    reading: LinkReading
    offered: float | None


def target_of(setpoint: Setpoint) -> float:
    """The current a setpoint asks the device to offer: 0 below the IEC 61851 minimum, else to 0.1 A."""
    if not math.isfinite(setpoint.current) or setpoint.current < MIN_CURRENT:
        return 0.0
    return round(setpoint.current, 1)


def number(doc: Any, key: str, where: str) -> float:
    """A numeric field of a device document; a protocol fault otherwise."""
    if not isinstance(doc, dict):
        raise LinkError(LinkFault.PROTOCOL, f"{where} is not an object")
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LinkError(LinkFault.PROTOCOL, f"{where}: field {key!r} is not a number: {value!r}")
    return float(value)


class NetLink(ABC):
    """Base of the networked charger links: `fetch` reads the device, `deliver` writes a target current.

    The task reads the device every `poll_s`; a new target (or a device whose setting drifted from
    the last one delivered, say after a reboot) is written at once. A failed exchange backs off up to
    BACKOFF_CAP_S, is counted, and is logged once per episode. While the device does not answer its
    last reading keeps its old time, so the engine sees the charger go stale; the link then assumes
    the device still draws what it was last told (none of these devices has a lease of its own).
    """

    driver_type = ""

    def __init__(self, name: str, clock: Clock, poll_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.name = name
        self.clock = clock
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.backoff_cap_s = max(BACKOFF_CAP_S, poll_s)
        self.setpoint: Setpoint | None = None
        self.delivered: float | None = None
        # A target the device refused: not written again until the engine asks for another one.
        self.refused: float | None = None
        self.phases = 3
        self.failures = 0
        self.errors: dict[LinkFault, int] = {}
        self.last_error: str | None = None
        self.last_seen: float | None = None
        self._state: DeviceState | None = None
        self._wake = asyncio.Event()
        self._episode = False

    @property
    def driver(self) -> str:
        """The driver's config `type`."""
        return self.driver_type

    @property
    @abstractmethod
    def address(self) -> str:
        """Where the charger is reached."""

    @property
    def online(self) -> bool:
        """The last exchange succeeded."""
        return self.last_seen is not None and self.failures == 0

    @abstractmethod
    async def fetch(self) -> DeviceState:
        """Read the device once (subclasses; raise LinkError on a fault)."""

    @abstractmethod
    async def deliver(self, amps: float) -> None:
        """Make the device offer `amps` (0: stop); subclasses, raising LinkError on a fault."""

    async def close(self) -> None:
        """Release connections (subclasses that hold some)."""
        return None

    def send(self, setpoint: Setpoint) -> None:
        """Keep the newest setpoint; the task delivers it when its current differs from the last one."""
        self.setpoint = setpoint
        self.phases = setpoint.phases
        if target_of(setpoint) != self.delivered:
            self._wake.set()

    def latest(self) -> LinkReading | None:
        """The last reading the device gave (its time tells how old it is)."""
        return None if self._state is None else self._state.reading

    def assumed(self) -> float:
        """The current (A per phase) it is assumed to draw: measured while online, else what it was told."""
        if self.online and self._state is not None:
            return max(self._state.reading.currents)
        return self.delivered or 0.0

    def status(self, now: float) -> dict[str, Any]:
        """`link` of the charger's API document."""
        return {
            "driver": self.driver_type,
            "address": self.address,
            "online": self.online,
            "last_seen_s": None if self.last_seen is None else round(max(0.0, now - self.last_seen), 1),
            "errors": sum(self.errors.values()),
            "error_counts": {k.value: v for k, v in sorted(self.errors.items())},
            "last_error": self.last_error,
            "commanded_a": self.delivered,
            "assumed_a": round(self.assumed(), 1),
        }

    def _failed(self, exc: LinkError) -> None:
        self.failures += 1
        self.errors[exc.fault] = self.errors.get(exc.fault, 0) + 1
        self.last_error = exc.message
        if not self._episode:
            self._episode = True
            log.warning(
                "charger %s (%s %s): %s; assuming it draws %.1f A until it answers",
                self.name,
                self.driver_type,
                self.address,
                exc.message,
                self.delivered or 0.0,
            )

    def _answered(self) -> None:
        self.failures = 0
        self.last_seen = self.clock()
        if self._episode:
            self._episode = False
            log.info("charger %s (%s %s): answering again", self.name, self.driver_type, self.address)

    async def _timed(self, coro: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await coro
        except TimeoutError:
            raise LinkError(LinkFault.TIMEOUT, f"no answer within {self.timeout_s:g} s") from None

    async def exchange(self) -> bool:
        """Read the device, then deliver the target current if the device does not offer it yet."""
        try:
            state = await self._timed(self.fetch())
            self._state = state
            self.last_seen = self.clock()
            if self.setpoint is not None:
                target = target_of(self.setpoint)
                drifted = state.offered is not None and abs(state.offered - target) > SETTING_SLACK_A
                if (target != self.delivered or drifted) and target != self.refused:
                    await self._deliver(target)
        except LinkError as exc:
            self._failed(exc)
            return False
        self._answered()
        return True

    async def _deliver(self, target: float) -> None:
        """Write a target; a value the device refuses is counted and logged once, not retried, and
        does not make the device count as silent (it answered)."""
        try:
            await self._timed(self.deliver(target))
        except LinkError as exc:
            if exc.fault is not LinkFault.REFUSED:
                raise
            self.refused = target
            self.errors[exc.fault] = self.errors.get(exc.fault, 0) + 1
            self.last_error = exc.message
            log.warning("charger %s (%s %s): %s", self.name, self.driver_type, self.address, exc.message)
            return
        self.delivered = target
        self.refused = None

    def next_delay(self) -> float:
        """Seconds to the next exchange: poll_s, doubled per failure in a row up to the cap."""
        if self.failures == 0:
            return self.poll_s
        return min(self.backoff_cap_s, self.poll_s * 2.0 ** (self.failures - 1))

    async def wait(self, delay: float) -> None:
        """Sleep until the next exchange is due or a new target arrives (subclasses may listen too)."""
        self._wake.clear()
        if self.failures:
            # Backing off: a new target waits too, or a dead device would be asked every tick.
            await asyncio.sleep(delay)
            return
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def run(self) -> None:
        """Talk to the device until cancelled; device faults are counted, never raised."""
        try:
            while True:
                await self.exchange()
                await self.wait(self.next_delay())
        finally:
            await self.close()
