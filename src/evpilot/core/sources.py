"""What bound a charger's current: a typed source (a kind and an optional detail), not a string.

The core only handles `Source` values; the API edges render them with `str()` as the strings the
native API, MQTT and the SECC facade have always shown (`mains`, `circuit:garage`, `stale:garage`,
`lease`, ...), and device facades map the kind to the device's own code. A site-wide cap renders
as `site:<name>` (`site:user`), so it never reads like the charger's own `user` limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SourceKind(StrEnum):
    """The kinds of limits that can bind a charger's current."""

    NONE = "none"
    # The charger's own limits (`available_source`).
    MAX = "max"
    CABLE = "cable"
    USER = "user"
    OVERRIDE = "override"
    LEASE = "lease"
    TEMPERATURE = "temperature"
    # An OCPP charging profile (the detail is its purpose: `ocpp:TxProfile`).
    OCPP = "ocpp"
    # The allocation lease lapsed: the hardware runs at its safe current.
    LAPSED = "lapsed"
    # The site tree.
    MAINS = "mains"
    CIRCUIT = "circuit"
    CAPACITY = "capacity"
    GRID_RELAY = "grid_relay"
    SITE = "site"
    # The balancer's decisions.
    TRIP = "trip"
    IDLE = "idle"
    OFF = "off"
    SHORTAGE = "shortage"
    EV = "ev"
    FALLBACK = "fallback"
    STALE = "stale"
    SOLAR = "solar"
    IMPORT = "import"
    BATTERY = "battery"
    MIN = "min"
    RAMP = "ramp"
    PHASE_SWITCH = "phase_switch"


# Kinds whose detail is the whole rendering (a lease shows its own name) or that render otherwise.
_BARE_DETAIL = frozenset({SourceKind.LEASE})
_RENDER = {SourceKind.LAPSED: "lease"}


@dataclass(frozen=True, slots=True)
class Source:
    """A binding source: its kind and, for a circuit, stale meter, lease, site cap or profile, its name."""

    kind: SourceKind
    detail: str | None = None
    # Sources are hashed on every tick (the balancer's allocation memo): computed once.
    _hash: int = field(init=False, repr=False, compare=False)
    _text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind, detail = self.kind, self.detail
        if detail is None:
            text = _RENDER.get(kind, kind.value)
        elif kind in _BARE_DETAIL:
            text = detail
        else:
            text = f"{kind.value}:{detail}"
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_hash", hash((kind, detail)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self._text

    @property
    def text(self) -> str:
        """The wire form (`mains`, `circuit:garage`, `site:user`, a lease's name, ...)."""
        return self._text


NONE = Source(SourceKind.NONE)
MAX = Source(SourceKind.MAX)
CABLE = Source(SourceKind.CABLE)
USER = Source(SourceKind.USER)
OVERRIDE = Source(SourceKind.OVERRIDE)
TEMPERATURE = Source(SourceKind.TEMPERATURE)
LAPSED = Source(SourceKind.LAPSED)
MAINS = Source(SourceKind.MAINS)
CAPACITY = Source(SourceKind.CAPACITY)
GRID_RELAY = Source(SourceKind.GRID_RELAY)
SITE = Source(SourceKind.SITE)
TRIP = Source(SourceKind.TRIP)
IDLE = Source(SourceKind.IDLE)
OFF = Source(SourceKind.OFF)
SHORTAGE = Source(SourceKind.SHORTAGE)
EV = Source(SourceKind.EV)
FALLBACK = Source(SourceKind.FALLBACK)
SOLAR = Source(SourceKind.SOLAR)
IMPORT = Source(SourceKind.IMPORT)
BATTERY = Source(SourceKind.BATTERY)
MIN = Source(SourceKind.MIN)
RAMP = Source(SourceKind.RAMP)
PHASE_SWITCH = Source(SourceKind.PHASE_SWITCH)
STALE_CHARGER = Source(SourceKind.STALE, "charger")

# One shared value per kind and name (these are made on every tick), kept by the plain name: an
# enum member's hash is a Python call.
_NAMED: dict[SourceKind, dict[str, Source]] = {kind: {} for kind in SourceKind}
_CIRCUITS = _NAMED[SourceKind.CIRCUIT]
_STALE = _NAMED[SourceKind.STALE]
_LEASES = _NAMED[SourceKind.LEASE]
_SITES = _NAMED[SourceKind.SITE]
_OCPP = _NAMED[SourceKind.OCPP]
_STALE["charger"] = STALE_CHARGER


def _make(names: dict[str, Source], kind: SourceKind, name: str) -> Source:
    if len(names) > 10_000:
        names.clear()
    found = names[name] = Source(kind, name)
    return found


def named(kind: SourceKind, name: str) -> Source:
    """The source `kind` for `name` (one shared value per pair)."""
    names = _NAMED[kind]
    return names.get(name) or _make(names, kind, name)


def circuit(name: str) -> Source:
    """Circuit `name`'s fuse."""
    return _CIRCUITS.get(name) or _make(_CIRCUITS, SourceKind.CIRCUIT, name)


def stale(name: str) -> Source:
    """The fallback cap while meter `name` (`mains`, a circuit) is stale."""
    return _STALE.get(name) or _make(_STALE, SourceKind.STALE, name)


def lease(name: str) -> Source:
    """The charger's external lease `name` (rendered as the name itself)."""
    return _LEASES.get(name) or _make(_LEASES, SourceKind.LEASE, name)


def site(name: str) -> Source:
    """The site-wide external cap `name` (`user`, `override`, `lease`): rendered `site:<name>`.

    The OCPP station cap (`ocpp:ChargePointMaxProfile`) is the profile's own source.
    """
    found = _SITES.get(name)
    if found is None:
        head, sep, rest = name.partition(":")
        if sep and head == SourceKind.OCPP:
            found = _SITES[name] = ocpp(rest)
        else:
            found = _make(_SITES, SourceKind.SITE, name)
    return found


def ocpp(purpose: str) -> Source:
    """The OCPP charging profile of `purpose` (`TxProfile`, ...): rendered `ocpp:<purpose>`."""
    return _OCPP.get(purpose) or _make(_OCPP, SourceKind.OCPP, purpose)


_PLAIN = (NONE, MAX, CABLE, USER, OVERRIDE, TEMPERATURE, MAINS, CAPACITY, GRID_RELAY, TRIP, IDLE, OFF)
_DECIDED = (SHORTAGE, EV, FALLBACK, SOLAR, IMPORT, BATTERY, MIN, RAMP, PHASE_SWITCH, STALE_CHARGER)
_SIMPLE = {s.text: s for s in (*_PLAIN, *_DECIDED)}


def parse(text: str) -> Source:
    """The source a wire string names (the inverse of `str()`; any other text is a lease's name)."""
    found = _SIMPLE.get(text)
    if found is not None:
        return found
    head, sep, rest = text.partition(":")
    if sep and head in (SourceKind.CIRCUIT, SourceKind.STALE, SourceKind.SITE, SourceKind.OCPP):
        return named(SourceKind(head), rest)
    return lease(text)
