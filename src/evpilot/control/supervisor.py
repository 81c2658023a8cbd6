"""Supervision of long-running tasks: a crash is logged once, counted, and the task restarts with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger("evpilot.supervisor")

# Restart backoff (seconds of real time): doubles per crash up to the cap, and starts again from the
# minimum once a run has stayed up for HEALTHY_S.
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_S = 60.0


class TaskState(StrEnum):
    """Where a supervised task is in its life."""

    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"


class OverallHealth(StrEnum):
    """The summary of every supervised task."""

    OK = "ok"
    DEGRADED = "degraded"


@dataclass(frozen=True, slots=True)
class TaskError:
    """The last unexpected exception of a task; `at` in clock seconds."""

    type: str
    message: str
    at: float


@dataclass(slots=True)
class Supervised:
    """One supervised task and its record."""

    name: str
    factory: Callable[[], Awaitable[None]]
    restart: bool
    on_crash: Callable[[BaseException], Awaitable[None]] | None
    state: TaskState = TaskState.RUNNING
    restarts: int = 0
    crashes: int = 0
    last_error: TaskError | None = None
    task: asyncio.Task[None] | None = None

    def doc(self) -> dict[str, Any]:
        """The task's health document."""
        err = self.last_error
        return {
            "name": self.name,
            "state": self.state.value,
            "restarts": self.restarts,
            "crashes": self.crashes,
            "last_error": None if err is None else {"type": err.type, "message": err.message, "at": err.at},
        }


class Supervisor:
    """Runs named coroutines; restarts the ones that crash, with capped exponential backoff."""

    def __init__(
        self,
        now: Callable[[], float],
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        healthy_s: float = HEALTHY_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.now = now
        self.sleep = sleep
        self.monotonic = monotonic
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.healthy_s = healthy_s
        self.tasks: dict[str, Supervised] = {}

    def spawn(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        restart: bool = True,
        on_crash: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> Supervised:
        """Run `factory()` as task `name`, cancelling one running under that name; `on_crash` runs after
        each crash."""
        old = self.tasks.get(name)
        if old is not None and old.task is not None and not old.task.done():
            old.task.cancel()
        entry = Supervised(name, factory, restart, on_crash)
        if old is not None:
            # A respawn (new settings) keeps the history: restarts and the last error stay visible.
            entry.restarts, entry.crashes, entry.last_error = old.restarts, old.crashes, old.last_error
        self.tasks[name] = entry
        entry.task = asyncio.create_task(self._keep(entry), name=name)
        return entry

    async def stop(self, name: str) -> None:
        """Cancel task `name` and wait for it; it then reads `stopped`."""
        entry = self.tasks.get(name)
        if entry is None or entry.task is None:
            return
        entry.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await entry.task
        entry.state = TaskState.STOPPED

    async def stop_all(self) -> None:
        """Stop every task."""
        for name in list(self.tasks):
            await self.stop(name)

    def forget(self, name: str) -> None:
        """Drop a stopped task from the report."""
        entry = self.tasks.get(name)
        if entry is not None and (entry.task is None or entry.task.done()):
            del self.tasks[name]

    async def _keep(self, entry: Supervised) -> None:
        delay = self.backoff_min_s
        while True:
            entry.state = TaskState.RUNNING
            began = self.monotonic()
            try:
                await entry.factory()
            except asyncio.CancelledError:
                entry.state = TaskState.STOPPED
                raise
            except Exception as exc:
                self._crashed(entry, exc)
                if entry.on_crash is not None:
                    try:
                        await entry.on_crash(exc)
                    except asyncio.CancelledError:
                        entry.state = TaskState.STOPPED
                        raise
                    except Exception:
                        log.exception("%s: crash handler failed", entry.name)
                if not entry.restart:
                    entry.state = TaskState.FAILED
                    return
            else:
                entry.state = TaskState.STOPPED
                return
            if self.monotonic() - began >= self.healthy_s:
                delay = self.backoff_min_s
            entry.state = TaskState.RESTARTING
            log.warning("%s: restarting in %.1f s", entry.name, delay)
            try:
                await self.sleep(delay)
            except asyncio.CancelledError:
                entry.state = TaskState.STOPPED
                raise
            delay = min(delay * 2, self.backoff_max_s)
            entry.restarts += 1

    def _crashed(self, entry: Supervised, exc: BaseException) -> None:
        entry.crashes += 1
        error = TaskError(type(exc).__name__, str(exc)[:500], self.now())
        previous, entry.last_error = entry.last_error, error
        if previous is not None and (previous.type, previous.message) == (error.type, error.message):
            # The same failure again: its traceback is in the log already.
            log.error(
                "%s crashed again (crash %d): %s: %s", entry.name, entry.crashes, error.type, error.message
            )
        else:
            log.error("%s crashed (crash %d)", entry.name, entry.crashes, exc_info=exc)

    def record(self, name: str, exc: BaseException) -> None:
        """Count a crash of an unsupervised, per-connection task under `name` (logged with traceback)."""
        entry = self.tasks.get(name)
        if entry is None:
            entry = self.tasks[name] = Supervised(name, _nothing, False, None, state=TaskState.RUNNING)
        self._crashed(entry, exc)

    def overall(self) -> OverallHealth:
        """`ok` while every restartable task runs, `degraded` otherwise."""
        down = (TaskState.RESTARTING, TaskState.FAILED)
        bad = any(e.state in down for e in self.tasks.values() if e.task is not None)
        return OverallHealth.DEGRADED if bad else OverallHealth.OK

    def health(self) -> list[dict[str, Any]]:
        """Every task's health document, by name."""
        return [self.tasks[name].doc() for name in sorted(self.tasks)]


async def _nothing() -> None:
    return None
