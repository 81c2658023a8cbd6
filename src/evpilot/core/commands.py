"""What an API asks for: typed, immutable, JSON-serialisable commands and the rules that check them.

Every face (native REST, `/api/ws`, MQTT, the device facades) turns its request into these values;
the runtime checks and applies them in one place (`Runtime.apply`) and logs each with its origin.
The range rules below are the only ones: the charger's setters call them too, so a command is
refused with the same message (field, value, allowed range) whichever face sent it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from evpilot.core.errors import CommandError, check_range

if TYPE_CHECKING:
    from evpilot.core.charger import ChargerConfig

MODES = ("off", "normal", "smart", "solar", "min+solar")
PHASE_MODES = ("not_present", "always_1p", "always_3p", "solar_1p", "auto")
SITE_CAP_SOURCES = ("user", "override", "lease")
# Ranges shared by every face (the config's own where it has one).
MIN_LIMIT_A = 6.0
MAX_LEASE_A = 80.0
MAX_LEASE_W = 80.0 * 230.0 * 3
MAX_ENERGY_KWH = 1000.0
MAX_TIME_MIN = 1440.0
MAX_UNDER_POWER_W = 100_000.0
MAX_SITE_CAP_A = 600.0
CAPACITY_RANGE = (10.0, 600.0)
MIN_CURRENT_RANGE = (6.0, 16.0)
MAX_ID_TAG = 64


class CommandKind(StrEnum):
    """The kinds of commands (the `command` of their JSON form)."""

    SET_ENABLED = "set_enabled"
    SET_AVAILABLE = "set_available"
    AUTHORIZE = "authorize"
    START = "start"
    STOP = "stop"
    SET_USER_LIMIT = "set_user_limit"
    SET_OVERRIDE = "set_override"
    SET_LEASE = "set_lease"
    SET_POWER_LEASE = "set_power_lease"
    RENEW_LEASES = "renew_leases"
    SET_ENERGY_CAP = "set_energy_cap"
    SET_TIME_CAP = "set_time_cap"
    SET_UNDER_POWER = "set_under_power"
    SET_AUTO_CHARGE = "set_auto_charge"
    SET_MODE = "set_mode"
    SET_PHASE_MODE = "set_phase_mode"
    RESET_FAULTS = "reset_faults"
    RESET_LIFETIME = "reset_lifetime"
    SET_SCHEDULE = "set_schedule"
    CLEAR_START = "clear_start"
    SET_SITE_MODE = "set_site_mode"
    SET_CAPACITY_LIMIT = "set_capacity_limit"
    SET_CAP_STOP = "set_cap_stop"
    SET_SOLAR = "set_solar"
    SET_MIN_CURRENT = "set_min_current"
    SET_FUSES = "set_fuses"
    SET_SITE_CAP = "set_site_cap"
    SET_GRID_RELAY = "set_grid_relay"
    SWIPE = "swipe"
    SET_RFID_MODE = "set_rfid_mode"
    SET_SWITCH = "set_switch"
    SET_CABLE_LOCK = "set_cable_lock"
    LEARN_CARD = "learn_card"
    DELETE_CARDS = "delete_cards"
    SET_OCPP_TAG = "set_ocpp_tag"


# ---- the rules ------------------------------------------------------------------------------


def user_limit(amps: float | None, config: ChargerConfig) -> float | None:
    """A user limit: 6 A to the charger's MAX in 0.1 A steps; None removes it."""
    if amps is None:
        return None
    value = check_range("current_limit", amps, MIN_LIMIT_A, config.max_current, " A")
    if abs(round(value * 10) - value * 10) > 1e-6:
        raise CommandError("current_limit", f"{amps} A is not a multiple of 0.1 A")
    return round(value, 1)


def override(amps: float | None, config: ChargerConfig) -> float | None:
    """An override current: 0 or None = off, else the charger's MIN to its MAX."""
    if amps is None or amps == 0:
        return None
    return check_range("override_current", amps, config.min_current, config.max_current, " A")


def lease_amps(name: str, amps: float | None) -> float | None:
    """A leased cap in A, 0 (stop) to 80 A; None hands control back."""
    return None if amps is None else check_range(name, amps, 0.0, MAX_LEASE_A, " A")


def lease_watts(name: str, watts: float | None) -> float | None:
    """A leased power cap in W, 0 to 80 A on three phases at 230 V; None hands control back."""
    return None if watts is None else check_range(name, watts, 0.0, MAX_LEASE_W, " W")


def energy_cap(kwh: float | None) -> float | None:
    """A session energy cap, 0-1000 kWh (None or 0 = none)."""
    return None if kwh is None else check_range("global_charge_limit", kwh, 0.0, MAX_ENERGY_KWH, " kWh")


def time_cap(minutes: float | None) -> float | None:
    """A session duration cap, 0-1440 min (None or 0 = none)."""
    return None if minutes is None else check_range("global_time_limit", minutes, 0.0, MAX_TIME_MIN, " min")


def under_power(watts: float | None) -> float | None:
    """The under-power stop, 0-100,000 W (None or 0 = off)."""
    if watts is None:
        return None
    return check_range("under_power_limit", watts, 0.0, MAX_UNDER_POWER_W, " W") or None


def mode(value: str | None) -> str | None:
    """A charging mode, or None to follow the site."""
    if value is not None and value not in MODES:
        raise CommandError("mode", f"{value!r} is not one of {', '.join(MODES)}")
    return value


def phase_mode(value: str, config: ChargerConfig) -> str:
    """A second-contactor mode this charger can use."""
    if value not in PHASE_MODES:
        raise CommandError("phase_mode", f"{value!r} is not one of {', '.join(PHASE_MODES)}")
    if config.phases == 1 and value not in ("not_present", "always_1p"):
        raise CommandError("phase_mode", "a 1-phase charger cannot switch phases")
    return value


def site_mode(value: str) -> str:
    """The site's default mode."""
    if value not in MODES:
        raise CommandError("mode", f"{value!r} is not one of {', '.join(MODES)}")
    return value


def capacity_limit(amps: float | None) -> float | None:
    """CAPACITY in A summed over the phases, 10-600; None or 0 removes it."""
    return None if not amps else check_range("capacity_limit", amps, *CAPACITY_RANGE, " A")


def check_id_tag(tag: str | None) -> None:
    """An id tag: text of at most 64 characters (None: no tag)."""
    if tag is not None and (not isinstance(tag, str) or len(tag) > MAX_ID_TAG):
        raise CommandError("id_tag", f"must be text of at most {MAX_ID_TAG} characters")



def _flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise CommandError(name, "must be true or false")


def _time(name: str, value: float | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    ):
        raise CommandError(name, "must be a time in seconds")


# ---- charger commands -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetEnabled:
    """Allow or forbid charging."""

    kind: ClassVar[CommandKind] = CommandKind.SET_ENABLED
    persist: ClassVar[bool] = True
    charger: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class SetAvailable:
    """Put the charge point in or out of service."""

    kind: ClassVar[CommandKind] = CommandKind.SET_AVAILABLE
    persist: ClassVar[bool] = False
    charger: str
    available: bool


@dataclass(frozen=True, slots=True)
class Authorize:
    """Grant or revoke authorization for the connected EV, optionally for an id tag."""

    kind: ClassVar[CommandKind] = CommandKind.AUTHORIZE
    persist: ClassVar[bool] = False
    charger: str
    authorized: bool = True
    id_tag: str | None = None


@dataclass(frozen=True, slots=True)
class Start:
    """Start charging (start_charging = true), authorizing `id_tag` first if given."""

    kind: ClassVar[CommandKind] = CommandKind.START
    persist: ClassVar[bool] = False
    charger: str
    id_tag: str | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop (pause) charging until a start or an unplug."""

    kind: ClassVar[CommandKind] = CommandKind.STOP
    persist: ClassVar[bool] = False
    charger: str


@dataclass(frozen=True, slots=True)
class SetUserLimit:
    """The user current limit in A (6 to the charger's MAX, 0.1 A steps); None removes it."""

    kind: ClassVar[CommandKind] = CommandKind.SET_USER_LIMIT
    persist: ClassVar[bool] = True
    charger: str
    amps: float | None


@dataclass(frozen=True, slots=True)
class SetOverride:
    """The override current in A (6 to the charger's MAX); None or 0 turns it off."""

    kind: ClassVar[CommandKind] = CommandKind.SET_OVERRIDE
    persist: ClassVar[bool] = False
    charger: str
    amps: float | None


@dataclass(frozen=True, slots=True)
class SetLease:
    """A leased cap `name` in A (0 stops charging) lapsing at `expires_at`; None amps hands back."""

    kind: ClassVar[CommandKind] = CommandKind.SET_LEASE
    persist: ClassVar[bool] = False
    charger: str
    name: str
    amps: float | None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class SetPowerLease:
    """A leased power cap `name` in W (turned into A at the phases in use); None watts hands back."""

    kind: ClassVar[CommandKind] = CommandKind.SET_POWER_LEASE
    persist: ClassVar[bool] = False
    charger: str
    name: str
    watts: float | None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class RenewLeases:
    """Re-arm the leases `names` already set to lapse at `expires_at` (a keep-alive)."""

    kind: ClassVar[CommandKind] = CommandKind.RENEW_LEASES
    persist: ClassVar[bool] = False
    charger: str
    names: tuple[str, ...]
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class SetEnergyCap:
    """The session energy cap in kWh (0-1000); None or 0 removes it."""

    kind: ClassVar[CommandKind] = CommandKind.SET_ENERGY_CAP
    persist: ClassVar[bool] = True
    charger: str
    kwh: float | None


@dataclass(frozen=True, slots=True)
class SetTimeCap:
    """The session duration cap in minutes (0-1440); None or 0 removes it."""

    kind: ClassVar[CommandKind] = CommandKind.SET_TIME_CAP
    persist: ClassVar[bool] = True
    charger: str
    minutes: float | None


@dataclass(frozen=True, slots=True)
class SetUnderPower:
    """Stop the session once charging power stays below `watts` (0-100,000 W; None or 0 = off)."""

    kind: ClassVar[CommandKind] = CommandKind.SET_UNDER_POWER
    persist: ClassVar[bool] = False
    charger: str
    watts: float | None


@dataclass(frozen=True, slots=True)
class SetAutoCharge:
    """Start on plug-in (True) or wait for an explicit start (False)."""

    kind: ClassVar[CommandKind] = CommandKind.SET_AUTO_CHARGE
    persist: ClassVar[bool] = True
    charger: str
    auto_charge: bool


@dataclass(frozen=True, slots=True)
class SetMode:
    """The charger's mode (off, normal, smart, solar, min+solar); None follows the site."""

    kind: ClassVar[CommandKind] = CommandKind.SET_MODE
    persist: ClassVar[bool] = True
    charger: str
    mode: str | None


@dataclass(frozen=True, slots=True)
class SetPhaseMode:
    """The second-contactor mode (not_present, always_1p, always_3p, solar_1p, auto)."""

    kind: ClassVar[CommandKind] = CommandKind.SET_PHASE_MODE
    persist: ClassVar[bool] = True
    charger: str
    phase_mode: str


@dataclass(frozen=True, slots=True)
class ResetFaults:
    """Clear latched faults (the hardware re-raises any that persist)."""

    kind: ClassVar[CommandKind] = CommandKind.RESET_FAULTS
    persist: ClassVar[bool] = False
    charger: str


@dataclass(frozen=True, slots=True)
class ResetLifetime:
    """Zero the charger's lifetime energy counter."""

    kind: ClassVar[CommandKind] = CommandKind.RESET_LIFETIME
    persist: ClassVar[bool] = False
    charger: str


@dataclass(frozen=True, slots=True)
class SetSchedule:
    """Start charging at `start_at`, stop at `stop_at` (clock epoch s), once or daily."""

    kind: ClassVar[CommandKind] = CommandKind.SET_SCHEDULE
    persist: ClassVar[bool] = False
    charger: str
    start_at: float
    stop_at: float | None = None
    repeat: bool = False


@dataclass(frozen=True, slots=True)
class ClearStart:
    """Drop a pending scheduled start (a stop time stays)."""

    kind: ClassVar[CommandKind] = CommandKind.CLEAR_START
    persist: ClassVar[bool] = False
    charger: str


# ---- site commands --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetSiteMode:
    """The site's default mode."""

    kind: ClassVar[CommandKind] = CommandKind.SET_SITE_MODE
    mode: str


@dataclass(frozen=True, slots=True)
class SetCapacityLimit:
    """CAPACITY in A summed over the phases (10-600); None or 0 removes it."""

    kind: ClassVar[CommandKind] = CommandKind.SET_CAPACITY_LIMIT
    amps: float | None


@dataclass(frozen=True, slots=True)
class SetCapStop:
    """How long (s) the capacity sum may stay exceeded before charging stops."""

    kind: ClassVar[CommandKind] = CommandKind.SET_CAP_STOP
    seconds: float


@dataclass(frozen=True, slots=True)
class SetSolar:
    """Solar settings; a None field stays as it is."""

    kind: ClassVar[CommandKind] = CommandKind.SET_SOLAR
    start_current: float | None = None
    stop_min: float | None = None
    max_import: float | None = None


@dataclass(frozen=True, slots=True)
class SetMinCurrent:
    """MIN (A per phase, 6-16) of every charger; refused above a charger's MAX."""

    kind: ClassVar[CommandKind] = CommandKind.SET_MIN_CURRENT
    amps: float


@dataclass(frozen=True, slots=True)
class SetFuses:
    """MAINS, one circuit's limit and one charger's MAX, MIN (A per phase) and priority together, or none."""

    kind: ClassVar[CommandKind] = CommandKind.SET_FUSES
    mains: float | None = None
    circuit: str | None = None
    circuit_limit: float | None = None
    charger: str | None = None
    max_current: float | None = None
    min_current: float | None = None
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class SetSiteCap:
    """An external cap `source` on all chargers together (A per phase); None amps removes it."""

    kind: ClassVar[CommandKind] = CommandKind.SET_SITE_CAP
    source: str
    amps: float | None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class SetGridRelay:
    """The grid operator's relay input (§14a EnWG): open = the 4.2 kW cap."""

    kind: ClassVar[CommandKind] = CommandKind.SET_GRID_RELAY
    open: bool


# ---- access commands (docs/access.md; applied by the runtime's AccessControl) ---------------


@dataclass(frozen=True, slots=True)
class Swipe:
    """A card presented to the charger's reader (uid normalised); what it does depends on the RFID mode."""

    kind: ClassVar[CommandKind] = CommandKind.SWIPE
    charger: str
    uid: str


@dataclass(frozen=True, slots=True)
class SetRfidMode:
    """The charger's RFID mode (an operating mode or a learning mode); kept over a restart."""

    kind: ClassVar[CommandKind] = CommandKind.SET_RFID_MODE
    charger: str
    mode: str


@dataclass(frozen=True, slots=True)
class SetSwitch:
    """The switch input's contact closed (True) or open (False)."""

    kind: ClassVar[CommandKind] = CommandKind.SET_SWITCH
    charger: str
    closed: bool


@dataclass(frozen=True, slots=True)
class SetCableLock:
    """What the cable lock is told: `auto`, `always` or `force_unlock` (Teltonika register 18)."""

    kind: ClassVar[CommandKind] = CommandKind.SET_CABLE_LOCK
    charger: str
    setting: str


@dataclass(frozen=True, slots=True)
class LearnCard:
    """Learn (or replace) a card with its optional name, chargers, expiry and energy cap."""

    kind: ClassVar[CommandKind] = CommandKind.LEARN_CARD
    uid: str
    name: str = ""
    chargers: tuple[str, ...] = ()
    expires_at: float | None = None
    energy_kwh: float | None = None


@dataclass(frozen=True, slots=True)
class DeleteCards:
    """Forget one card (`uid`) or every card (None)."""

    kind: ClassVar[CommandKind] = CommandKind.DELETE_CARDS
    uid: str | None = None


@dataclass(frozen=True, slots=True)
class SetOcppTag:
    """An OCPP wallbox (evpilot its backend) started a transaction with an accepted `tag`, authorized
    by `method` (card, api, free); None `tag`: the transaction ended."""

    kind: ClassVar[CommandKind] = CommandKind.SET_OCPP_TAG
    charger: str
    tag: str | None
    method: str | None = None


ChargerCommand = (
    SetEnabled
    | SetAvailable
    | Authorize
    | Start
    | Stop
    | SetUserLimit
    | SetOverride
    | SetLease
    | SetPowerLease
    | RenewLeases
    | SetEnergyCap
    | SetTimeCap
    | SetUnderPower
    | SetAutoCharge
    | SetMode
    | SetPhaseMode
    | ResetFaults
    | ResetLifetime
    | SetSchedule
    | ClearStart
)
SiteCommand = (
    SetSiteMode
    | SetCapacityLimit
    | SetCapStop
    | SetSolar
    | SetMinCurrent
    | SetFuses
    | SetSiteCap
    | SetGridRelay
)
AccessCommand = Swipe | SetRfidMode | SetSwitch | SetCableLock | LearnCard | DeleteCards | SetOcppTag
Command = ChargerCommand | SiteCommand | AccessCommand

COMMAND_TYPES: dict[CommandKind, type[Any]] = {
    t.kind: t
    for t in (
        SetEnabled,
        SetAvailable,
        Authorize,
        Start,
        Stop,
        SetUserLimit,
        SetOverride,
        SetLease,
        SetPowerLease,
        RenewLeases,
        SetEnergyCap,
        SetTimeCap,
        SetUnderPower,
        SetAutoCharge,
        SetMode,
        SetPhaseMode,
        ResetFaults,
        ResetLifetime,
        SetSchedule,
        ClearStart,
        SetSiteMode,
        SetCapacityLimit,
        SetCapStop,
        SetSolar,
        SetMinCurrent,
        SetFuses,
        SetSiteCap,
        SetGridRelay,
        Swipe,
        SetRfidMode,
        SetSwitch,
        SetCableLock,
        LearnCard,
        DeleteCards,
        SetOcppTag,
    )
}


def charger_of(command: Command) -> str | None:
    """The charger a command is for (None for a site command)."""
    return getattr(command, "charger", None) if not isinstance(command, SetFuses) else None


def to_json(command: Command) -> dict[str, Any]:
    """The command as a JSON object: `command` (its kind) and its fields."""
    out: dict[str, Any] = {"command": command.kind.value}
    for f in fields(command):
        value = getattr(command, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def from_json(doc: dict[str, Any]) -> Command:
    """The command a `to_json` object describes (CommandError if it names no command or a bad field)."""
    try:
        cls = COMMAND_TYPES[CommandKind(str(doc.get("command")))]
    except ValueError:
        raise CommandError("command", f"unknown command {doc.get('command')!r}") from None
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items() if k != "command"}
    try:
        return cls(**args)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise CommandError("command", str(exc)) from None


def check(command: ChargerCommand, config: ChargerConfig) -> None:
    """Refuse a charger command this charger cannot take (CommandError naming the field and range)."""
    match command:
        case SetUserLimit(amps=amps):
            user_limit(amps, config)
        case SetOverride(amps=amps):
            override(amps, config)
        case SetLease(name=name, amps=amps, expires_at=expires):
            lease_amps(name, amps)
            _time("expires_at", expires)
        case SetPowerLease(name=name, watts=watts, expires_at=expires):
            lease_watts(name, watts)
            _time("expires_at", expires)
        case RenewLeases(expires_at=expires):
            _time("expires_at", expires)
        case SetEnergyCap(kwh=kwh):
            energy_cap(kwh)
        case SetTimeCap(minutes=minutes):
            time_cap(minutes)
        case SetUnderPower(watts=watts):
            under_power(watts)
        case SetMode(mode=value):
            mode(value)
        case SetPhaseMode(phase_mode=value):
            phase_mode(value, config)
        case Start(id_tag=tag):
            check_id_tag(tag)
        case Authorize(authorized=flag, id_tag=tag):
            _flag("authorized", flag)
            check_id_tag(tag)
        case SetSchedule(start_at=start, stop_at=stop, repeat=repeat):
            _time("starttime", start)
            _time("stoptime", stop)
            _flag("repeat", repeat)
        case SetEnabled(enabled=flag):
            _flag("enabled", flag)
        case SetAvailable(available=flag):
            _flag("available", flag)
        case SetAutoCharge(auto_charge=flag):
            _flag("auto_charge", flag)
        case _:
            pass
