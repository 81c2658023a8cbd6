"""Units and the phase map: how a charger's conductors land on the mains phases."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

Phases = tuple[float, float, float]
ZERO3: Phases = (0.0, 0.0, 0.0)


class PhaseRotation(StrEnum):
    """Which mains phase a 3-phase charger's L1, L2 and L3 are wired to (its L1 is named first)."""

    L1L2L3 = "L1L2L3"
    L2L3L1 = "L2L3L1"
    L3L1L2 = "L3L1L2"

    @property
    def first(self) -> int:
        """Mains phase index (0-2) of the charger's L1."""
        return int(self.value[1]) - 1


@dataclass(frozen=True, slots=True)
class PhaseMap:
    """Mains phase index of each of a charger's conductors; a 1-phase charger uses only the first."""

    order: tuple[int, int, int]
    wired: int

    @property
    def single(self) -> tuple[int]:
        """The mains phase of the charger's L1 (all a 1-phase charger or a 1-phase switch uses)."""
        return (self.order[0],)

    def used(self, active: int) -> tuple[int, ...]:
        """Mains phase indices drawn on while the charger runs `active` phases."""
        if active == 1 or self.wired == 1:
            return (self.order[0],)
        return self.order

    def to_mains(self, currents: Phases) -> Phases:
        """The charger's L1..L3 currents placed on the mains phases."""
        out = [0.0, 0.0, 0.0]
        order = self.order
        out[order[0]] = currents[0]
        if self.wired == 3:
            out[order[1]] = currents[1]
            out[order[2]] = currents[2]
        return (out[0], out[1], out[2])

    def from_mains(self, mains: Phases) -> Phases:
        """Mains-phase values seen from the charger's L1..L3 (the inverse of `to_mains`)."""
        order = self.order
        return (mains[order[0]], mains[order[1]], mains[order[2]])


@lru_cache(maxsize=16)
def phase_map(wired: int, first: int) -> PhaseMap:
    """The map of a charger with `wired` phases whose L1 is on mains phase index `first`."""
    if wired not in (1, 3) or first not in (0, 1, 2):
        raise ValueError(f"no phase map for {wired} phases starting at index {first}")
    return PhaseMap((first, (first + 1) % 3, (first + 2) % 3), wired)


# Nominal phase voltage (V) for turning power into current.
NOMINAL_VOLTAGE = 230.0
