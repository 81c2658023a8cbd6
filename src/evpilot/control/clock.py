"""Injected clocks: real time, or scaled by a speed factor for the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import time


class ScaledClock:
    """Wall-clock time that runs `speed` times faster than real time (1.0 = real time)."""

    def __init__(self, speed: float = 1.0, epoch: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._t0 = time.time() if epoch is None else epoch
        self._m0 = time.monotonic()

    def now(self) -> float:
        """Seconds since the epoch in (possibly accelerated) clock time."""
        return self._t0 + (time.monotonic() - self._m0) * self.speed

    def not_before(self, t: float) -> None:
        """Move the clock forward to `t` if it is earlier (a sped-up run may have stored later times)."""
        behind = t - self.now()
        if behind > 0:
            self._t0 += behind

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of clock time."""
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait for `event` at most `seconds` of clock time; True if it was set."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that lands
        # just as the event is set.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds) / self.speed):
                await event.wait()
            return True
        return False


class ManualClock:
    """A clock that only moves when told to: for tests and as-fast-as-possible runs."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start
        self.speed = float("inf")

    def now(self) -> float:
        """The current clock time."""
        return self.t

    def not_before(self, t: float) -> None:
        """Move the clock forward to `t` if it is earlier."""
        self.t = max(self.t, t)

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        """Advance the clock instead of sleeping."""
        self.t += max(0.0, seconds)
        await asyncio.sleep(0)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Return at once, advancing the clock unless the event is set."""
        if event.is_set():
            return True
        self.t += max(0.0, seconds)
        await asyncio.sleep(0)
        return False
