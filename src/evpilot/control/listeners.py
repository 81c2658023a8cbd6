"""The runtime's listeners, isolated: each has its own bounded mailbox and its own task.

The tick only drops a frame into each listener's mailbox. A listener runs in its own task, so one that
raises is counted (under `listeners` in the supervisor) and misses that frame alone, and one that is
slow or awaits something only falls behind: its mailbox keeps the newest frames (the oldest are dropped
and counted), and neither the tick nor the other listeners wait for it. A listener may be a plain
function or return an awaitable. Without a running event loop (a tick driven by hand) the listeners are
called in place, each on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("evpilot.listeners")

Listener = Callable[[str, dict[str, Any]], object]
Frame = tuple[str, dict[str, Any]]
# A listener working through a backlog lets the loop run after this many frames.
BATCH = 64
# How long stopping waits for the listeners to take the frames already published (s).
DRAIN_S = 2.0


@dataclass(eq=False, slots=True)
class Mailbox:
    """One listener, its pending frames and its counters."""

    listener: Listener
    frames: deque[Frame]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    delivered: int = 0
    failed: int = 0
    dropped: int = 0


class ListenerBus:
    """The runtime's listeners (`append`, `insert`, `remove` as on a list), each fed by its own mailbox."""

    def __init__(self, record: Callable[[str, BaseException], None], capacity: Callable[[], int]) -> None:
        self.record = record
        self.capacity = capacity
        self._boxes: list[Mailbox] = []

    # ---- the list-like registry ----------------------------------------------------------------

    def append(self, listener: Listener) -> None:
        """Add a listener after the others."""
        self.insert(len(self._boxes), listener)

    def insert(self, index: int, listener: Listener) -> None:
        """Add a listener at `index` (its place in the order frames are handed out)."""
        box = Mailbox(listener, deque(maxlen=max(1, self.capacity())))
        box.idle.set()
        self._boxes.insert(index, box)

    def remove(self, listener: Listener) -> None:
        """Remove a listener (ValueError if it is not registered); frames still waiting for it are dropped."""
        for box in self._boxes:
            if box.listener == listener:
                self._boxes.remove(box)
                if box.task is not None:
                    box.task.cancel()
                return
        raise ValueError("not a registered listener")

    def __iter__(self) -> Iterator[Listener]:
        return iter([box.listener for box in self._boxes])

    def __len__(self) -> int:
        return len(self._boxes)

    def __contains__(self, listener: object) -> bool:
        return any(box.listener == listener for box in self._boxes)

    def mailboxes(self) -> list[Mailbox]:
        """The mailboxes, in order (for health and tests)."""
        return list(self._boxes)

    # ---- delivery --------------------------------------------------------------------------------

    def publish(self, topic: str, message: dict[str, Any]) -> None:
        """Hand a frame to every listener; never waits for one and never raises."""
        if not self._boxes:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            for box in list(self._boxes):
                self._call_now(box, topic, message)
            return
        frame = (topic, message)
        for box in self._boxes:
            frames = box.frames
            if len(frames) == frames.maxlen:
                box.dropped += 1
                if box.dropped == 1 or box.dropped % 1000 == 0:
                    log.warning("listener %s falls behind: %d frame(s) dropped", _name(box), box.dropped)
            frames.append(frame)
            box.idle.clear()
            box.wake.set()
            if box.task is None or box.task.done():
                box.task = asyncio.create_task(self._run(box), name=f"evpilot-listener-{_name(box)}")

    def _call_now(self, box: Mailbox, topic: str, message: dict[str, Any]) -> None:
        try:
            result = box.listener(topic, message)
            if inspect.isawaitable(result):
                # Nothing can run it without a loop: close it so it is not left pending.
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception as exc:
            box.failed += 1
            self.record("listeners", exc)
        else:
            box.delivered += 1

    async def _run(self, box: Mailbox) -> None:
        taken = 0
        while True:
            if not box.frames:
                box.idle.set()
                box.wake.clear()
                await box.wake.wait()
                continue
            topic, message = box.frames.popleft()
            try:
                result = box.listener(topic, message)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # this listener misses this frame; the others are not affected
                box.failed += 1
                self.record("listeners", exc)
            else:
                box.delivered += 1
            taken += 1
            if taken % BATCH == 0:
                await asyncio.sleep(0)

    async def drain(self, timeout_s: float = DRAIN_S) -> bool:
        """Wait until every listener took its frames (at most `timeout_s`); False if one is still behind."""
        waiting = [box.idle.wait() for box in self._boxes if box.task is not None and not box.idle.is_set()]
        if not waiting:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*waiting)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout_s: float = DRAIN_S) -> None:
        """Let the listeners take what is published (at most `timeout_s`), then end their tasks."""
        if not await self.drain(timeout_s):
            behind = [_name(b) for b in self._boxes if not b.idle.is_set()]
            log.warning("listener(s) %s did not take their last frames in %g s", ", ".join(behind), timeout_s)
        for box in self._boxes:
            task, box.task = box.task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _name(box: Mailbox) -> str:
    fn = box.listener
    return getattr(fn, "__qualname__", None) or type(fn).__name__
