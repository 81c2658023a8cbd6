"""Counts overload events per node (mains and circuits) as the running site sees them, tick by tick."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evpilot.control.engine import Engine
from evpilot.core.balancer import circuit_paths
from evpilot.core.charger import Phases, mains_draw
from evpilot.core.iec61851 import DRAW_THRESHOLD_A
from evpilot.core.site import CircuitConfig

# An overload is an event once it lasts this long: one tick plus the EV's reaction time (the scenario
# runner and the day bench count from the same 6 s).
EVENT_S = 6.0
# Excess below this is measurement noise, not an overload.
TOLERANCE_A = 0.05
# A gap between ticks longer than this many tick lengths means the controller itself was not
# running (a starved process, or a sped-up clock outrunning it): a run over a limit across such a
# gap is counted apart, as `stalled`, since no control decision could have ended it.
STALL_TICKS = 3.0


@dataclass(slots=True)
class NodeOverloads:
    """Overload figures of one node (all its phases)."""

    events: int = 0
    longest_s: float = 0.0
    over_now: bool = False
    stalled: int = 0

    def doc(self) -> dict[str, Any]:
        """The node's entry in `GET /api/site` `overloads`."""
        return {
            "events": self.events,
            "longest_s": round(self.longest_s, 1),
            "over_now": self.over_now,
            "stalled": self.stalled,
        }


class OverloadMonitor:
    """Per node and phase: how long the load stays above the limit while a charger below draws there.

    A run of ticks over the limit on one phase of one node is one overload; it counts as an event
    once it lasts `event_s` (measured from the tick that first saw it, plus that tick's length).
    """

    def __init__(self, event_s: float = EVENT_S) -> None:
        self.event_s = event_s
        self.nodes: dict[str, NodeOverloads] = {}
        # (node, phase) -> (clock time of the first tick over the limit, already counted, stalled)
        self._open: dict[tuple[str, int], tuple[float, bool, bool]] = {}
        self._last_tick: float | None = None
        self._stall = False
        # Per circuit with a meter: `taken_at` of the reading in use and what its chargers drew when it came.
        self._seen: dict[str, tuple[float, Phases]] = {}
        self._circuits: tuple[CircuitConfig, ...] = ()
        self._paths: dict[str, tuple[str, ...]] = {}

    def begin(self, now: float, tick_s: float) -> None:
        """A new tick at `now`: notes whether the controller was stalled since the last one."""
        self._stall = self._last_tick is not None and now - self._last_tick > STALL_TICKS * tick_s
        self._last_tick = now

    def see(
        self, now: float, node: str, phase: int, load: float, limit: float, drawing: bool, tick_s: float
    ) -> None:
        """One phase of one node at one tick."""
        figures = self.nodes.setdefault(node, NodeOverloads())
        key = (node, phase)
        if not (drawing and load > limit + TOLERANCE_A):
            self._open.pop(key, None)
            return
        since, counted, stalled = self._open.get(key, (now, False, False))
        stalled = stalled or (self._stall and key in self._open)
        length = now - since + tick_s
        figures.longest_s = max(figures.longest_s, length)
        if not counted and length >= self.event_s:
            if stalled:
                figures.stalled += 1
            else:
                figures.events += 1
            counted = True
        self._open[key] = (since, counted, stalled)

    def observe(
        self,
        now: float,
        tick_s: float,
        engine: Engine,
        mains: Phases | None,
        meter_timeout_s: float,
    ) -> None:
        """Every phase of the mains and of every circuit after one engine step.

        `mains` is the mains load per phase (None: unknown, the mains is skipped). A circuit's load is
        its meter's reading while fresh, else what the chargers below it draw. Between two readings
        the other load is taken as unchanged and the chargers' part follows what they draw now: the
        reading minus what they drew when it came, plus what they draw now (a meter read every 10 s
        would otherwise keep an overload the chargers already ended on the books until the next one).
        """
        self.begin(now, tick_s)
        circuits = engine.site.circuits
        if circuits is not self._circuits:
            self._circuits, self._paths = circuits, circuit_paths(circuits)
        paths = self._paths
        # One pass over the chargers: each one's draw is added to every circuit on its path (a
        # charger that draws nothing adds nothing), so the cost does not grow with circuits × chargers.
        names = ("mains", *(c.name for c in circuits))
        sums = {name: [0.0, 0.0, 0.0] for name in names}
        drawing = {name: [False, False, False] for name in names}
        for ch in engine.chargers.values():
            currents = ch.currents
            if not (currents[0] or currents[1] or currents[2]):
                continue
            draw = mains_draw(ch.config, currents)
            leaf = ch.config.circuit
            for name in ("mains", *(paths.get(leaf, ()) if leaf is not None else ())):
                total, flags = sums[name], drawing[name]
                for p in range(3):
                    total[p] += draw[p]
                    if draw[p] > DRAW_THRESHOLD_A:
                        flags[p] = True
        if mains is not None:
            self._node(now, tick_s, "mains", mains, engine.site.mains_limit, drawing["mains"])
        for circuit in circuits:
            meter = engine.circuit_meters.get(circuit.name)
            reading = meter.latest() if meter is not None else None
            total = sums[circuit.name]
            drawn = (total[0], total[1], total[2])
            if reading is not None and now - reading.taken_at <= meter_timeout_s:
                seen = self._seen.get(circuit.name)
                if seen is None or seen[0] != reading.taken_at:
                    seen = self._seen[circuit.name] = (reading.taken_at, drawn)
                r, then = reading.currents, seen[1]
                load = (r[0] - then[0] + drawn[0], r[1] - then[1] + drawn[1], r[2] - then[2] + drawn[2])
            else:
                self._seen.pop(circuit.name, None)
                load = drawn
            self._node(now, tick_s, f"circuit:{circuit.name}", load, circuit.limit, drawing[circuit.name])
        for name, figures in self.nodes.items():
            figures.over_now = any(key[0] == name for key in self._open)

    def _node(
        self, now: float, tick_s: float, node: str, load: Phases, limit: float, drawing: list[bool]
    ) -> None:
        for p in range(3):
            self.see(now, node, p, load[p], limit, drawing[p], tick_s)

    def doc(self) -> dict[str, dict[str, Any]]:
        """Figures per node, by name (`mains`, `circuit:<name>`)."""
        return {name: self.nodes[name].doc() for name in sorted(self.nodes)}
