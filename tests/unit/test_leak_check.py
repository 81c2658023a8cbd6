"""The autouse leak check of tests/conftest.py fails a test that leaves tasks or threads running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBES = """
import asyncio, threading, time
import pytest

async def test_leaves_a_task():
    asyncio.create_task(asyncio.sleep(100), name="forgotten-sleeper")

def test_leaves_a_thread():
    threading.Thread(target=time.sleep, args=(30,), name="forgotten-napper", daemon=True).start()

async def test_stops_what_it_starts():
    task = asyncio.create_task(asyncio.sleep(100))
    await asyncio.to_thread(time.sleep, 0.01)
    task.cancel()

def test_joins_its_thread_soon_enough():
    threading.Thread(target=time.sleep, args=(0.2,), name="short").start()

@pytest.fixture
async def background():
    task = asyncio.create_task(asyncio.sleep(100), name="fixture-task")
    yield
    task.cancel()

async def test_a_fixture_that_stops_its_task(background):
    pass
"""


def test_leaked_tasks_and_threads_fail_the_test_by_name(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBES, encoding="utf-8")
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-rE"]
    command += ["-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"]
    command += ["--rootdir", str(tmp_path), "-c", os.devnull, str(probe)]
    r = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    # Each test's own call passes; the two that leak fail at teardown, naming what they left behind.
    assert "5 passed, 2 errors" in out, out
    # The summary line may carry " - <message>" after the test id, depending on the terminal width.
    errors = sorted(
        line.split("::")[1].split(" ")[0] for line in out.splitlines() if line.startswith("ERROR ")
    )
    assert errors == ["test_leaves_a_task", "test_leaves_a_thread"], out
    assert "left running after the test: task forgotten-sleeper (sleep)" in out
    assert "left running after the test: thread forgotten-napper (sleep, daemon)" in out
