"""OCPP charging profiles as pure schedules: stacking, validity, recurrence and the composite limit.

Shared by the charge point side (a backend sets profiles on evpilot) and the backend side (evpilot
builds profiles for third-party wallboxes). Times are epoch seconds; nothing here reads a clock.
The rules follow OCPP 1.6 §3.13 (the same rules hold for the 2.0.1 purposes used here):

- per purpose, the valid profile with the highest stack level whose schedule covers `now` wins;
  when it ends (duration, validTo, a gap before its first period) the next lower one applies;
- a TxProfile overrides the TxDefaultProfile of its connector during its transaction; a
  TxDefaultProfile set on a connector overrides one set on connector 0 (which applies to all);
- the ChargePointMaxProfile (connector 0) caps the whole station: the composite is the lowest of it
  and the connector's transaction limit;
- a profile with the id of an installed one, or with the purpose, stack level and connector of an
  installed one, replaces it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from evpilot.core.units import NOMINAL_VOLTAGE

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
# A composite schedule or a search for the next change looks at most this many boundaries ahead.
MAX_STEPS = 512
MAX_PERIODS = 48
MAX_STACK_LEVEL = 100


class Purpose(StrEnum):
    """chargingProfilePurpose."""

    CHARGE_POINT_MAX = "ChargePointMaxProfile"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


class Kind(StrEnum):
    """chargingProfileKind."""

    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class Recurrency(StrEnum):
    """recurrencyKind."""

    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(StrEnum):
    """chargingRateUnit."""

    A = "A"
    W = "W"


class ProfileError(ValueError):
    """A charging profile that cannot be installed; `field` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Period:
    """One chargingSchedulePeriod: from `start_s` after the schedule's start, `limit` in the unit."""

    start_s: float
    limit: float
    phases: int | None = None


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    """A charging profile as installed on one connector (0 = the whole station)."""

    id: int
    connector: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    unit: RateUnit
    periods: tuple[Period, ...]
    start: float | None = None
    duration_s: float | None = None
    recurrency: Recurrency | None = None
    valid_from: float | None = None
    valid_to: float | None = None
    # 1.6 numbers transactions, 2.0.1 names them.
    transaction_id: int | str | None = None
    min_rate: float | None = None

    def check(self) -> ChargingProfile:
        """Return the profile if it is well formed, else raise ProfileError."""
        if not 0 <= self.stack_level <= MAX_STACK_LEVEL:
            raise ProfileError("stackLevel", f"must be 0 to {MAX_STACK_LEVEL}")
        if self.connector < 0:
            raise ProfileError("connectorId", "must not be negative")
        if not self.periods:
            raise ProfileError("chargingSchedulePeriod", "needs at least one period")
        if len(self.periods) > MAX_PERIODS:
            raise ProfileError("chargingSchedulePeriod", f"at most {MAX_PERIODS} periods")
        if self.periods[0].start_s != 0:
            raise ProfileError("chargingSchedulePeriod", "the first period must start at 0")
        starts = [p.start_s for p in self.periods]
        if any(b <= a for a, b in itertools.pairwise(starts)):
            raise ProfileError("chargingSchedulePeriod", "startPeriod must increase")
        for p in self.periods:
            if not math.isfinite(p.limit) or p.limit < 0:
                raise ProfileError("limit", "must be a finite number >= 0")
            if p.phases is not None and p.phases not in (1, 2, 3):
                raise ProfileError("numberPhases", "must be 1, 2 or 3")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ProfileError("duration", "must be positive")
        if self.kind is Kind.RECURRING:
            if self.recurrency is None:
                raise ProfileError("recurrencyKind", "a Recurring profile needs Daily or Weekly")
            if self.start is None:
                raise ProfileError("startSchedule", "a Recurring profile needs a startSchedule")
        if self.kind is Kind.RELATIVE and self.start is not None:
            raise ProfileError("startSchedule", "a Relative profile has no startSchedule")
        if self.valid_from is not None and self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ProfileError("validTo", "must be after validFrom")
        if self.purpose is Purpose.CHARGE_POINT_MAX and self.connector != 0:
            raise ProfileError("connectorId", "a ChargePointMaxProfile is set on connector 0")
        if self.purpose is Purpose.TX and self.connector == 0:
            raise ProfileError("connectorId", "a TxProfile is set on a connector, not 0")
        if self.purpose is not Purpose.TX and self.transaction_id is not None:
            raise ProfileError("transactionId", "only a TxProfile names a transaction")
        return self

    def slot(self, now: float, tx_start: float | None) -> tuple[Period | None, float | None]:
        """The period in force at `now` (None: the profile does not apply) and when that may change."""
        if self.valid_to is not None and now >= self.valid_to:
            return None, None
        if self.valid_from is not None and now < self.valid_from:
            return None, self.valid_from
        ends = self.valid_to
        if self.kind is Kind.RELATIVE:
            anchor = now if tx_start is None else tx_start
        elif self.kind is Kind.RECURRING:
            cycle = DAY_S if self.recurrency is Recurrency.DAILY else WEEK_S
            base = self.start if self.start is not None else 0.0
            anchor = base + math.floor((now - base) / cycle) * cycle
            ends = _first(ends, anchor + cycle)
        else:
            anchor = self.start if self.start is not None else now
        offset = now - anchor
        if offset < 0:
            return None, _first(anchor, ends)
        if self.duration_s is not None and offset >= self.duration_s:
            # A recurring profile resumes at its next cycle; any other one is done.
            return None, ends if self.kind is Kind.RECURRING else None
        if self.duration_s is not None:
            ends = _first(ends, anchor + self.duration_s)
        current = self.periods[0]
        for p in self.periods:
            if p.start_s <= offset:
                current = p
            else:
                return current, _first(ends, anchor + p.start_s)
        return current, ends

    def to_doc(self) -> dict[str, Any]:
        """The profile as plain JSON (for the store)."""
        return {
            "id": self.id,
            "connector": self.connector,
            "stack_level": self.stack_level,
            "purpose": self.purpose.value,
            "kind": self.kind.value,
            "unit": self.unit.value,
            "periods": [[p.start_s, p.limit, p.phases] for p in self.periods],
            "start": self.start,
            "duration_s": self.duration_s,
            "recurrency": None if self.recurrency is None else self.recurrency.value,
            "valid_from": self.valid_from,
            "valid_to": self.valid_to,
            "transaction_id": self.transaction_id,
            "min_rate": self.min_rate,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ChargingProfile:
        """A profile read back from `to_doc`."""
        return cls(
            id=int(doc["id"]),
            connector=int(doc["connector"]),
            stack_level=int(doc["stack_level"]),
            purpose=Purpose(doc["purpose"]),
            kind=Kind(doc["kind"]),
            unit=RateUnit(doc["unit"]),
            periods=tuple(Period(float(s), float(lim), ph) for s, lim, ph in doc["periods"]),
            start=doc.get("start"),
            duration_s=doc.get("duration_s"),
            recurrency=None if doc.get("recurrency") is None else Recurrency(doc["recurrency"]),
            valid_from=doc.get("valid_from"),
            valid_to=doc.get("valid_to"),
            transaction_id=doc.get("transaction_id"),
            min_rate=doc.get("min_rate"),
        ).check()


def _first(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def to_amps(limit: float, unit: RateUnit, phases: int, voltage: float = NOMINAL_VOLTAGE) -> float:
    """A limit in A per phase: W are divided over the phases in use."""
    return limit if unit is RateUnit.A else limit / (voltage * max(1, phases))


@dataclass(frozen=True, slots=True)
class Limit:
    """The limit in force: A per phase, the source (`ocpp:<purpose>`) and when it next changes."""

    amps: float
    source: str
    next_change: float | None


@dataclass(frozen=True, slots=True)
class SchedulePeriod:
    """One period of a composite schedule, `start_s` after its start."""

    start_s: float
    limit: float
    phases: int | None = None


@dataclass(frozen=True, slots=True)
class Transaction:
    """A transaction running on a connector: its id and start (the anchor of Relative profiles)."""

    id: int | str
    started_at: float


@dataclass(slots=True)
class ProfileSet:
    """The profiles installed on a station and the transactions they may refer to."""

    profiles: dict[int, ChargingProfile] = field(default_factory=dict)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    # Bumped on every change, so a cached limit knows to look again.
    version: int = 0

    # ---- changes ---------------------------------------------------------------------------------

    def install(self, profile: ChargingProfile) -> None:
        """Install `profile` (SetChargingProfile), replacing one with its id or its purpose/level/connector.

        A TxProfile needs a transaction on its connector (and the same transaction id when it names one).
        """
        profile.check()
        if profile.purpose is Purpose.TX:
            tx = self.transactions.get(profile.connector)
            if tx is None:
                raise ProfileError("chargingProfilePurpose", "a TxProfile needs a running transaction")
            if profile.transaction_id is not None and profile.transaction_id != tx.id:
                raise ProfileError("transactionId", f"the transaction on the connector is {tx.id}")
            if profile.transaction_id is None:
                profile = replace(profile, transaction_id=tx.id)
        for pid, p in list(self.profiles.items()):
            if pid == profile.id or (
                p.purpose is profile.purpose
                and p.stack_level == profile.stack_level
                and p.connector == profile.connector
            ):
                del self.profiles[pid]
        self.profiles[profile.id] = profile
        self.version += 1

    def clear(
        self,
        profile_id: int | None = None,
        connector: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> list[int]:
        """Remove the profile with `profile_id`, or those matching every given criterion; their ids."""
        if profile_id is not None:
            gone = [profile_id] if profile_id in self.profiles else []
        else:
            gone = [
                pid
                for pid, p in self.profiles.items()
                if (connector is None or p.connector == connector)
                and (purpose is None or p.purpose is purpose)
                and (stack_level is None or p.stack_level == stack_level)
            ]
        for pid in gone:
            del self.profiles[pid]
        if gone:
            self.version += 1
        return gone

    def start_transaction(self, connector: int, tx_id: int | str, started_at: float) -> None:
        """A transaction started on `connector` (TxProfiles may now be set for it)."""
        self.transactions[connector] = Transaction(tx_id, started_at)
        self.version += 1

    def end_transaction(self, connector: int) -> None:
        """The transaction on `connector` ended: its TxProfiles are removed."""
        self.transactions.pop(connector, None)
        self.clear(connector=connector, purpose=Purpose.TX)
        self.version += 1

    # ---- evaluation ------------------------------------------------------------------------------

    def _stacked(
        self, now: float, purpose: Purpose, connectors: tuple[int, ...], phases: int
    ) -> tuple[float | None, float | None, int | None]:
        """The winning limit (A) of `purpose` over `connectors` (first one first), the next boundary
        and the winner's phases."""
        boundary: float | None = None
        for connector in connectors:
            tx = self.transactions.get(connector)
            candidates = sorted(
                (
                    p
                    for p in self.profiles.values()
                    if p.purpose is purpose
                    and p.connector == connector
                    and (purpose is not Purpose.TX or (tx is not None and p.transaction_id == tx.id))
                ),
                key=lambda p: -p.stack_level,
            )
            for p in candidates:
                period, change = p.slot(now, None if tx is None else tx.started_at)
                boundary = _first(boundary, change)
                if period is not None:
                    return to_amps(period.limit, p.unit, phases), boundary, period.phases
        return None, boundary, None

    def _evaluate(
        self, now: float, connector: int, phases: int, station: bool
    ) -> tuple[float | None, str, float | None]:
        amps: float | None = None
        source = ""
        boundary: float | None = None
        parts: list[tuple[Purpose, tuple[int, ...]]] = []
        if connector != 0:
            parts.append((Purpose.TX, (connector,)))
            parts.append((Purpose.TX_DEFAULT, (connector, 0)))
        if station or connector == 0:
            parts.append((Purpose.CHARGE_POINT_MAX, (0,)))
        tx_bound = False
        for purpose, connectors in parts:
            if purpose is Purpose.TX_DEFAULT and tx_bound:
                continue
            value, change, _ = self._stacked(now, purpose, connectors, phases)
            boundary = _first(boundary, change)
            if value is None:
                continue
            if purpose is Purpose.TX:
                tx_bound = True
            if amps is None or value < amps:
                amps, source = value, f"ocpp:{purpose.value}"
        return amps, source, boundary

    def limit_at(self, now: float, connector: int, phases: int = 3, station: bool = True) -> Limit | None:
        """The composite limit on `connector` at `now` (None: no profile applies), with its next change.

        `station` includes the ChargePointMaxProfile (leave it out when the station's connectors are
        capped together elsewhere); `phases` converts W limits into A.
        """
        amps, source, boundary = self._evaluate(now, connector, phases, station)
        t = boundary
        steps = 0
        # Step over boundaries where nothing changes (a lower stack level ending under a higher one).
        while t is not None and steps < MAX_STEPS:
            later, later_source, later_boundary = self._evaluate(t, connector, phases, station)
            if later != amps or later_source != source:
                break
            if later_boundary is None or later_boundary <= t:
                t = None
                break
            t = later_boundary
            steps += 1
        if amps is None:
            return None if t is None else Limit(math.inf, "", t)
        return Limit(amps, source, t)

    def composite(
        self,
        now: float,
        connector: int,
        duration_s: float,
        phases: int = 3,
        unit: RateUnit = RateUnit.A,
        default: float | None = None,
    ) -> list[SchedulePeriod]:
        """GetCompositeSchedule: the limit on `connector` from `now` for `duration_s`, as periods.

        Where no profile applies the period carries `default` (the charger's own maximum); with no
        default such a stretch is left out. An empty list means nothing applies at all.
        """
        periods: list[SchedulePeriod] = []
        t = now
        end = now + duration_s
        steps = 0
        while t < end and steps < MAX_STEPS:
            amps, _, boundary = self._evaluate(t, connector, phases, True)
            value = amps if amps is not None else default
            if value is not None and round(t - now) < duration_s:
                if unit is RateUnit.W:
                    value = value * NOMINAL_VOLTAGE * phases
                value = round(value, 1)
                if not periods or periods[-1].limit != value:
                    periods.append(SchedulePeriod(round(t - now), value, phases))
            if boundary is None or boundary <= t:
                break
            t = boundary
            steps += 1
        if not any(self.profiles[p].connector in (0, connector) for p in self.profiles):
            return []
        return periods

    def to_doc(self) -> dict[str, Any]:
        """The installed profiles and transactions as plain JSON (for the store)."""
        return {
            "profiles": [p.to_doc() for p in self.profiles.values()],
            "transactions": {str(c): [t.id, t.started_at] for c, t in self.transactions.items()},
        }

    @classmethod
    def from_doc(cls, doc: Any) -> ProfileSet:
        """A profile set read back from `to_doc`; a malformed entry is dropped alone."""
        out = cls()
        if not isinstance(doc, dict):
            return out
        for c, pair in dict(doc.get("transactions") or {}).items():
            try:
                tx_id = pair[0] if isinstance(pair[0], str) else int(pair[0])
                out.transactions[int(c)] = Transaction(tx_id, float(pair[1]))
            except (TypeError, ValueError, IndexError):
                continue
        for raw in list(doc.get("profiles") or []):
            try:
                p = ChargingProfile.from_doc(raw)
            except (KeyError, TypeError, ValueError):
                continue
            out.profiles[p.id] = p
        return out


@dataclass(slots=True)
class ConnectorCap:
    """The profile limit of one connector as a charger cap, re-evaluated only at its next change."""

    profiles: ProfileSet
    connector: int
    station: bool = True
    _cached: Limit | None = None
    _version: int = -1
    _phases: int = 0
    _valid_until: float = -math.inf
    _valid_from: float = math.inf

    @property
    def last(self) -> Limit | None:
        """The limit found by the last `limit_at` (None: no profile applied)."""
        cached = self._cached
        return None if cached is None or cached.amps == math.inf else cached

    def limit_at(self, now: float, phases: int) -> Limit | None:
        """The connector's limit at `now`: (amps, source, next_change), or None if no profile applies."""
        fresh = (
            self._version == self.profiles.version
            and self._phases == phases
            and self._valid_from <= now < self._valid_until
        )
        if not fresh:
            self._cached = self.profiles.limit_at(now, self.connector, phases, self.station)
            self._version = self.profiles.version
            self._phases = phases
            self._valid_from = now
            nxt = None if self._cached is None else self._cached.next_change
            self._valid_until = math.inf if nxt is None else nxt
        cached = self._cached
        if cached is None or cached.amps == math.inf:
            return None
        return cached
