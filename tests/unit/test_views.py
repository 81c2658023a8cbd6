"""The read model: views are rebuilt only on a change the faces would show, and every change is published."""

from __future__ import annotations

import dataclasses

import pytest

from evpilot.config import parse_config
from evpilot.control.clock import ManualClock
from evpilot.control.runtime import Runtime, ViewChanges
from evpilot.control.views import ChargerView, charger_doc, charger_raw
from evpilot.core import commands as cmd
from evpilot.core.charger import Charger, ChargerConfig


def runtime() -> tuple[Runtime, ManualClock, list[ViewChanges]]:
    """Two chargers, no car plugged in (nothing moves by itself), a view listener recording ticks."""
    config = parse_config({"chargers": [{"id": "cp1"}, {"id": "cp2"}], "sim": {"cars": [], "pv_kwp": 0}})
    clock = ManualClock()
    rt = Runtime(config, clock)
    seen: list[ViewChanges] = []
    rt.view_listeners.append(lambda topic, message: seen.append(message["changes"]))
    for _ in range(10):  # the first ticks settle the allocation
        clock.advance(1.0)
        rt.tick()
    return rt, clock, seen


def changed_ids(changes: ViewChanges) -> list[str]:
    return [v.id for v in changes.chargers]


def test_views_are_frozen_and_slotted() -> None:
    rt, _clock, _seen = runtime()
    view = rt.charger_view("cp1")
    assert not hasattr(view, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.enabled = False  # type: ignore[misc]


def test_time_passing_alone_changes_no_charger_view() -> None:
    rt, clock, seen = runtime()
    before = rt.charger_view("cp1")
    for _ in range(5):
        clock.advance(1.0)
        rt.tick()
    assert [changed_ids(c) for c in seen[-5:]] == [[]] * 5
    assert rt.charger_view("cp1") is before


def test_a_command_is_in_the_next_read_and_published_at_the_next_tick() -> None:
    rt, clock, seen = runtime()
    rt.apply(cmd.SetUserLimit("cp2", 10.0), "test")
    view = rt.charger_view("cp2")
    assert view.user_limit == 10.0
    assert charger_doc(view, clock.now())["limits"]["user"] == 10.0
    clock.advance(1.0)
    rt.tick()
    assert changed_ids(seen[-1]) == ["cp2"]
    assert seen[-1].chargers[0].user_limit == 10.0


def test_noise_below_what_a_face_shows_is_no_change() -> None:
    rt, _clock, _seen = runtime()
    ch = rt.charger("cp1")
    ch.temperature, ch.voltages = 25.0, (230.0, 230.0, 230.0)
    before = rt.charger_view("cp1")
    ch.temperature, ch.voltages = 25.01, (230.02, 229.98, 230.0)  # shown to 0.1 °C and 0.1 V
    assert rt.charger_view("cp1") is before
    ch.temperature = 25.2
    after = rt.charger_view("cp1")
    assert after is not before and isinstance(after, ChargerView)
    assert after.temperature == 25.2 and after.voltages == (230.02, 229.98, 230.0)


def test_only_the_changed_charger_is_published() -> None:
    rt, clock, seen = runtime()
    frames: list[dict[str, object]] = []
    queue = rt.subscribe()
    while not queue.empty():
        queue.get_nowait()
    rt.apply(cmd.SetEnabled("cp1", False), "test")
    clock.advance(1.0)
    rt.tick()
    while not queue.empty():
        frames.append(queue.get_nowait())
    charger_frames = [f["message"]["id"] for f in frames if f["topic"] == "charger"]
    assert charger_frames == ["cp1"]
    assert changed_ids(seen[-1]) == ["cp1"]
    rt.unsubscribe(queue)


def test_raw_with_shared_rounding_is_the_raw_without() -> None:
    """`charger_raw` with the per-tick `shown` cache gives each charger its own rounded values."""
    chargers = [Charger.create(ChargerConfig(f"cp{i}")) for i in range(4)]
    shared = (230.04, 229.96, 231.25)
    chargers[0].voltages = chargers[1].voltages = shared
    chargers[2].voltages = (231.0, 0.0, 0.0)
    chargers[3].voltages = (230.04, 229.96, 231.35)
    temperatures = (25.04, 25.04, -0.0, 64.96)
    for ch, t in zip(chargers, temperatures, strict=True):
        ch.temperature = t
    shown: dict[object, object] = {}
    for _ in range(2):  # the second pass reads everything from the cache
        for ch in chargers:
            args = (ch, "smart", None, ch.reported_pilot, ch.reported_work)
            with_cache, without = charger_raw(*args, shown), charger_raw(*args)
            assert with_cache == without
            assert with_cache[1] == tuple(round(v, 1) for v in ch.voltages)
            assert with_cache[2] == round(ch.temperature, 1)
