"""Max-min fair water-filling of chargers under shared linear capacity constraints."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

_EPS = 1e-9
ACTIVE, FROZEN = 1, 2


@dataclass(slots=True)
class Problem:
    """Constraints (capacity, source) and the chargers' coefficients on each."""

    capacity: list[float] = field(default_factory=list)
    used: list[float] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    members: list[list[tuple[int, float]]] = field(default_factory=list)
    uses: list[list[tuple[int, float]]] = field(default_factory=list)

    def add_constraint(self, capacity: float, source: str) -> int:
        """Add a constraint and return its index."""
        self.capacity.append(capacity)
        self.used.append(0.0)
        self.source.append(source)
        self.members.append([])
        return len(self.capacity) - 1

    def add_charger(self) -> int:
        """Add a charger and return its index."""
        self.uses.append([])
        return len(self.uses) - 1

    def link(self, charger: int, constraint: int, coef: float) -> None:
        """Charger uses `coef` units of `constraint` per ampere of its level."""
        self.uses[charger].append((constraint, coef))
        self.members[constraint].append((charger, coef))

    def residual(self, constraint: int) -> float:
        """Capacity left on a constraint after what was filled so far."""
        return self.capacity[constraint] - self.used[constraint]


def fill(
    problem: Problem,
    members: list[int],
    caps: list[float],
    cap_source: list[str],
    alloc: list[float],
    bound: list[str],
) -> None:
    """Raise `members` together (equal per-phase level) until a cap or constraint binds.

    Results go into `alloc` and `bound`; the capacity they use is added to `problem.used`
    so a later call (a lower priority) fills what is left.
    """
    if not members:
        return
    ncons = len(problem.capacity)
    weight = [0.0] * ncons
    status: dict[int, int] = {}
    for i in members:
        status[i] = ACTIVE
        for c, k in problem.uses[i]:
            weight[c] += k
    version = [0] * ncons
    heap: list[tuple[float, int, int]] = []
    for c in range(ncons):
        if weight[c] > _EPS:
            heap.append(((problem.capacity[c] - problem.used[c]) / weight[c], c, 0))
    heapq.heapify(heap)
    order = sorted(members, key=lambda i: caps[i])
    ptr = 0
    level = 0.0
    active = len(members)

    def freeze(i: int, value: float, why: str) -> None:
        nonlocal active
        status[i] = FROZEN
        alloc[i] = value
        bound[i] = why
        active -= 1
        for c, k in problem.uses[i]:
            problem.used[c] += k * value
            weight[c] -= k
            version[c] += 1
            if weight[c] > _EPS:
                heapq.heappush(heap, ((problem.capacity[c] - problem.used[c]) / weight[c], c, version[c]))

    while active:
        while ptr < len(order) and status[order[ptr]] != ACTIVE:
            ptr += 1
        next_cap = caps[order[ptr]] if ptr < len(order) else math.inf
        while heap and (heap[0][2] != version[heap[0][1]] or weight[heap[0][1]] <= _EPS):
            heapq.heappop(heap)
        next_con = heap[0][0] if heap else math.inf
        if next_con < next_cap:
            _, c, _ = heapq.heappop(heap)
            level = max(level, next_con)
            for i, _k in problem.members[c]:
                if status.get(i) == ACTIVE:
                    freeze(i, level, problem.source[c])
        else:
            level = max(level, next_cap)
            i = order[ptr]
            freeze(i, level, cap_source[i])
