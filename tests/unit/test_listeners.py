"""Listeners are isolated: one that raises or is slow skips no other and never delays the tick."""

from __future__ import annotations

import asyncio
from typing import Any

from evpilot.control.clock import ScaledClock
from evpilot.control.listeners import ListenerBus
from evpilot.control.runtime import Runtime
from tests.helpers import make_config

Frames = list[tuple[str, dict[str, Any]]]


def recorder(into: Frames) -> Any:
    def listen(topic: str, message: dict[str, Any]) -> None:
        into.append((topic, message))

    return listen


async def test_a_raising_listener_skips_no_other_listener_and_no_frame() -> None:
    rt = Runtime(make_config(), ScaledClock(1.0))
    first: Frames = []
    last: Frames = []

    def broken(topic: str, message: dict[str, Any]) -> None:
        raise RuntimeError("injected listener failure")

    rt.listeners.append(recorder(first))
    rt.listeners.append(broken)
    rt.listeners.append(recorder(last))
    for _ in range(3):
        rt.tick()
        rt.clock.not_before(rt.clock.now() + 1.0)
    assert await rt.listeners.drain()
    assert first and first == last
    boxes = {box.listener: box for box in rt.listeners.mailboxes()}
    assert boxes[broken].failed == len(first) and boxes[broken].delivered == 0
    assert rt.supervisor.tasks["listeners"].crashes == len(first)
    await rt.listeners.stop()


async def test_the_tick_only_hands_frames_over_and_a_stuck_listener_holds_up_nobody() -> None:
    rt = Runtime(make_config(), ScaledClock(1.0))
    seen: Frames = []
    stuck_on = asyncio.Event()
    never = asyncio.Event()
    stuck_calls = 0

    async def stuck(topic: str, message: dict[str, Any]) -> None:
        nonlocal stuck_calls
        stuck_calls += 1
        stuck_on.set()
        await never.wait()

    rt.listeners.append(stuck)
    rt.listeners.append(recorder(seen))
    rt.tick()
    # The tick returned without calling any listener: they run after it, in their own tasks.
    assert seen == [] and stuck_calls == 0
    await stuck_on.wait()
    assert await rt.listeners.drain(0.5) is False  # the stuck one is still on its first frame
    taken = len(seen)
    assert taken > 0
    rt.clock.not_before(rt.clock.now() + 1.0)
    rt.engine.chargers["cp1"].set_user_limit(7.0)
    rt.tick()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # The fast listener got the new frames while the stuck one is still held on its first.
    assert len(seen) > taken and stuck_calls == 1
    assert rt.tick_count == 2
    await rt.listeners.stop(timeout_s=0.1)
    assert all(box.task is None for box in rt.listeners.mailboxes())


async def test_a_listener_that_falls_behind_keeps_the_newest_frames_in_a_bounded_mailbox() -> None:
    errors: list[BaseException] = []
    bus = ListenerBus(lambda name, exc: errors.append(exc), lambda: 3)
    release = asyncio.Event()
    got: list[int] = []

    async def slow(topic: str, message: dict[str, Any]) -> None:
        await release.wait()
        got.append(message["n"])

    bus.append(slow)
    for n in range(10):
        bus.publish("t", {"n": n})
    await asyncio.sleep(0)  # the listener takes the oldest frame it still has (7) and waits
    for n in range(10, 20):
        bus.publish("t", {"n": n})
    box = bus.mailboxes()[0]
    assert len(box.frames) == 3 and box.dropped == 16
    release.set()
    assert await bus.drain()
    assert got == [7, 17, 18, 19] and errors == []
    await bus.stop()


def test_without_a_loop_the_listeners_are_called_in_place_each_on_its_own() -> None:
    errors: list[BaseException] = []
    bus = ListenerBus(lambda name, exc: errors.append(exc), lambda: 10)
    seen: Frames = []

    def broken(topic: str, message: dict[str, Any]) -> None:
        raise ValueError("injected")

    bus.append(broken)
    bus.append(recorder(seen))
    bus.publish("site", {"x": 1})
    assert seen == [("site", {"x": 1})] and len(errors) == 1
    bus.remove(broken)
    assert broken not in bus and len(bus) == 1
