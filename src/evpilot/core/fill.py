"""Max-min fair water-filling of chargers under shared linear capacity constraints."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from evpilot.core.sources import Source

_EPS = 1e-9
ACTIVE, FROZEN = 1, 2
# Whole floats below this are exact, and so is any sum or difference of two of them.
_EXACT = 2.0**52
# Tests switch the aggregated freeze off to compare it with the per-charger one.
AGGREGATE = True
# Per constrained charger: (constraint, count, coefficients in member order or None when all are 1).
_Agg = tuple[tuple[int, int, tuple[float, ...] | None], ...]


class FillCache:
    """What freezing every member of a constraint adds to each constraint, per constraint (lazy).

    Valid for one `members`/`uses` structure: built once and reused by every problem sharing it.
    """

    __slots__ = ("aggs", "ids")

    def __init__(self, ncons: int) -> None:
        self.ids: list[tuple[int, ...] | None] = [None] * ncons
        self.aggs: list[_Agg | None] = [None] * ncons

    def members_of(self, problem: Problem, c: int) -> tuple[int, ...]:
        """The charger indices of constraint `c`, in member order."""
        ids = self.ids[c]
        if ids is None:
            ids = self.ids[c] = tuple(i for i, _k in problem.members[c])
        return ids

    def agg(self, problem: Problem, c: int) -> _Agg:
        """Per constraint touched by a member of `c`: the coefficients they add, in member order."""
        agg = self.aggs[c]
        if agg is None:
            seq: dict[int, list[float]] = {}
            uses = problem.uses
            for i, _k in problem.members[c]:
                for c2, k in uses[i]:
                    lst = seq.get(c2)
                    if lst is None:
                        seq[c2] = [k]
                    else:
                        lst.append(k)
            agg = self.aggs[c] = tuple(
                (c2, len(ks), None if all(k == 1.0 for k in ks) else tuple(ks)) for c2, ks in seq.items()
            )
        return agg


@dataclass(slots=True)
class Problem:
    """Constraints (capacity, source) and the chargers' coefficients on each."""

    capacity: list[float] = field(default_factory=list)
    used: list[float] = field(default_factory=list)
    source: list[Source] = field(default_factory=list)
    members: list[list[tuple[int, float]]] = field(default_factory=list)
    uses: list[list[tuple[int, float]]] = field(default_factory=list)
    # Shared by problems with the same members/uses (see `FillCache`); None: nothing cached.
    cache: FillCache | None = None

    def add_constraint(self, capacity: float, source: Source) -> int:
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


def _fill_one(
    problem: Problem,
    i: int,
    caps: list[float],
    cap_source: list[Source],
    alloc: list[float],
    bound: list[Source],
) -> None:
    """`fill` for one charger (most sites, most priority groups): no heap needed."""
    capacity = problem.capacity
    used = problem.used
    uses = problem.uses[i]
    weight: dict[int, float] = {}
    for c, k in uses:
        weight[c] = weight.get(c, 0.0) + k
    # The tightest constraint; on a tie the lowest index, as the heap in `fill` would pop it.
    best = math.inf
    best_c = -1
    for c in sorted(weight):
        w = weight[c]
        if w > _EPS:
            ratio = (capacity[c] - used[c]) / w
            if ratio < best:
                best, best_c = ratio, c
    if best < caps[i]:
        value = max(0.0, best)
        why = problem.source[best_c]
    else:
        value = max(0.0, caps[i])
        why = cap_source[i]
    alloc[i] = value
    bound[i] = why
    for c, k in uses:
        used[c] += k * value


def fill(
    problem: Problem,
    members: list[int],
    caps: list[float],
    cap_source: list[Source],
    alloc: list[float],
    bound: list[Source],
    weights: list[float] | None = None,
) -> None:
    """Raise `members` together (equal per-phase level) until a cap or constraint binds.

    Results go into `alloc` and `bound`; the capacity they use is added to `problem.used`
    so a later call (a lower priority) fills what is left. `weights`, if given, is each
    constraint's summed coefficient over `members` (taken over, not copied).
    """
    if not members:
        return
    if len(members) == 1:
        _fill_one(problem, members[0], caps, cap_source, alloc, bound)
        return
    capacity = problem.capacity
    used = problem.used
    uses = problem.uses
    ncons = len(capacity)
    # Per charger: 0 = not a member of this fill, ACTIVE, FROZEN.
    status = bytearray(len(uses))
    if weights is None:
        weight = [0.0] * ncons
        for i in members:
            status[i] = ACTIVE
            for c, k in uses[i]:
                weight[c] += k
    else:
        weight = weights
        for i in members:
            status[i] = ACTIVE
    version = [0] * ncons
    heap: list[tuple[float, int, int]] = []
    for c in range(ncons):
        if weight[c] > _EPS:
            heap.append(((capacity[c] - used[c]) / weight[c], c, 0))
    heapq.heapify(heap)
    heappush = heapq.heappush
    heappop = heapq.heappop
    order = sorted(members, key=caps.__getitem__)
    norder = len(order)
    ptr = 0
    level = 0.0
    active = len(members)
    con_members = problem.members
    cache = problem.cache if AGGREGATE else None
    # Freezing a charger: status FROZEN, its value and source set, what it uses added to each constraint.
    # Heap keys are refreshed lazily when they reach the top: freezing a member at the current level
    # can only raise a saturation level that is still ahead, so a stale key is a lower bound; a
    # refreshed key is never below the current level (a constraint already over capacity binds at once).
    while active:
        while ptr < norder and status[order[ptr]] != ACTIVE:
            ptr += 1
        next_cap = caps[order[ptr]] if ptr < norder else math.inf
        while heap:
            top = heap[0]
            c = top[1]
            w = weight[c]
            if w <= _EPS:
                heappop(heap)
            elif top[2] != version[c]:
                heappop(heap)
                heappush(heap, (max((capacity[c] - used[c]) / w, level), c, version[c]))
            else:
                break
        next_con = heap[0][0] if heap else math.inf
        if next_con < next_cap:
            c = heappop(heap)[1]
            level = max(level, next_con)
            why = problem.source[c]
            if cache is not None:
                ids = cache.members_of(problem, c)
                for i in ids:
                    if status[i] != ACTIVE:
                        break
                else:
                    # Every member freezes at this level: per touched constraint, the same sums
                    # (in the same order) as the loop below, without walking each member's uses.
                    for i in ids:
                        status[i] = FROZEN
                        alloc[i] = level
                        bound[i] = why
                    active -= len(ids)
                    for c2, m, ks in cache.agg(problem, c):
                        if ks is None:
                            u = used[c2]
                            for _ in range(m):
                                u += level
                            used[c2] = u
                            w = weight[c2]
                            if w.is_integer() and -_EXACT < w < _EXACT:
                                # Whole numbers: m steps of −1 are exact, as is one step of −m.
                                weight[c2] = w - m
                            else:
                                for _ in range(m):
                                    w -= 1.0
                                weight[c2] = w
                        else:
                            u = used[c2]
                            w = weight[c2]
                            for k in ks:
                                u += k * level
                                w -= k
                            used[c2] = u
                            weight[c2] = w
                        version[c2] += m
                    continue
                # Some members are frozen already: the others one by one (`ids` as in `con_members[c]`).
                for i in ids:
                    if status[i] == ACTIVE:
                        status[i] = FROZEN
                        alloc[i] = level
                        bound[i] = why
                        for c2, k in uses[i]:
                            used[c2] += k * level
                            weight[c2] -= k
                            version[c2] += 1
                        active -= 1
                continue
            for i, _k in con_members[c]:
                if status[i] == ACTIVE:
                    status[i] = FROZEN
                    alloc[i] = level
                    bound[i] = why
                    for c2, k in uses[i]:
                        used[c2] += k * level
                        weight[c2] -= k
                        version[c2] += 1
                    active -= 1
        else:
            level = max(level, next_cap)
            i = order[ptr]
            status[i] = FROZEN
            alloc[i] = level
            bound[i] = cap_source[i]
            for c2, k in uses[i]:
                used[c2] += k * level
                weight[c2] -= k
                version[c2] += 1
            active -= 1
