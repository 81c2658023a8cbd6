"""Pytest configuration shared by all tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "evpilot", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("evpilot")

# How long a thread or task a test stopped may take to actually end.
LEAK_GRACE_S = 2.0


def _pending_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks(loop) if not t.done()]


def _describe_task(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", None) or repr(coro)
    return f"{task.get_name()} ({where})"


def _describe_thread(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)
    where = getattr(target, "__qualname__", None) or type(thread).__qualname__
    return f"{thread.name} ({where}, {'daemon' if thread.daemon else 'non-daemon'})"


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves asyncio tasks or threads running after its own fixtures are torn down."""
    runner: asyncio.Runner | None = None
    marker = request.node.get_closest_marker("asyncio")
    if marker is not None and marker.kwargs.get("loop_scope", "function") == "function":
        # pytest-asyncio's runner for the test's own loop, requested here so that loop outlives this
        # fixture: its tasks are checked before the runner cancels them. A loop shared by several
        # tests (a wider loop_scope) may keep tasks between them and is not checked.
        runner = request.getfixturevalue("_function_scoped_runner")
    before = set(threading.enumerate())
    yield
    problems: list[str] = []
    if runner is not None:
        loop = runner.get_loop()
        deadline = time.monotonic() + LEAK_GRACE_S
        while _pending_tasks(loop) and time.monotonic() < deadline:
            runner.run(asyncio.sleep(0.02))
        leaked_tasks = _pending_tasks(loop)
        problems += [f"task {_describe_task(t)}" for t in leaked_tasks]
        # The loop's default executor is shut down when the loop closes; its threads are not leaks.
        runner.run(loop.shutdown_default_executor())
    deadline = time.monotonic() + LEAK_GRACE_S
    extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    while extra and time.monotonic() < deadline:
        extra[0].join(timeout=max(0.0, deadline - time.monotonic()))
        extra = [t for t in extra if t.is_alive()]
    problems += [f"thread {_describe_thread(t)}" for t in extra]
    if problems:
        pytest.fail("left running after the test: " + "; ".join(problems), pytrace=False)
