"""The Teltonika TeltoCharge (EVC) external-control vocabulary: holding registers 0-44 as data.

Seed 003's "Modbus register map": addresses, types, scales and ranges, and the code tables
(a) EVSE status, (b) charge point state, (c) IEC state, (d) warning bits, (e) error bits and
(f) current-limit cause. Multi-word values put the low word first (the seed's "first word" /
"second word >> 16"); energies count in 0.01 kWh (the seed's "*100kWh").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from evpilot.core.charger import ErrorFlag
from evpilot.core.iec61851 import PilotState


class Access(StrEnum):
    """Whether a register can be written."""

    R = "R"
    RW = "R/W"


@dataclass(frozen=True, slots=True)
class Register:
    """One holding register: its address, name, format, allowed written values and meaning."""

    address: int
    name: str
    access: Access
    fmt: str
    unit: str = ""
    # Allowed values of a writable register: (low, high) spans, inclusive.
    spans: tuple[tuple[int, int], ...] = ()
    default: int | None = None

    def allows(self, value: int) -> bool:
        """`value` is within one of the register's spans."""
        return any(low <= value <= high for low, high in self.spans)


R, RW = Access.R, Access.RW
_AMPS = ((0, 0), (6, 32))

REGISTERS: tuple[Register, ...] = (
    Register(0, "Voltage L1", R, "int16", "V"),
    Register(1, "Voltage L2", R, "int16", "V"),
    # The seed's comment says "on L2": its name and the order say L3.
    Register(2, "Voltage L3", R, "int16", "V"),
    Register(3, "Current L1", R, "int16", "0.1 A"),
    Register(4, "Current L2", R, "int16", "0.1 A"),
    Register(5, "Current L3", R, "int16", "0.1 A"),
    Register(6, "EVSE status", R, "uint16"),
    Register(7, "EVSE status time 1st word", R, "uint16", "s"),
    Register(8, "EVSE status time 2nd word", R, "uint16", "s"),
    Register(9, "EVSE ID", R, "uint16"),
    Register(10, "EVSE 3ph config", R, "uint16"),
    Register(11, "Phase change", R, "uint16"),
    Register(12, "Amp limit", R, "uint16", "A"),
    Register(13, "Phase connected", R, "uint16"),
    Register(14, "Phase to use", RW, "uint16", spans=((0, 7),)),
    Register(15, "Amps to use", RW, "uint16", "A", spans=_AMPS),
    Register(16, "Request stop charging", RW, "uint16", spans=((0, 2),), default=0),
    Register(17, "Request authorize", RW, "uint16", spans=((0, 1),), default=0),
    Register(18, "Lock/unlock socket", RW, "uint16", spans=((0, 2),), default=0),
    Register(19, "Communication timeout", RW, "uint16", "s", spans=((0, 600),), default=30),
    Register(20, "Failsafe current", RW, "uint16", "A", spans=_AMPS, default=6),
    Register(21, "Request reboot", RW, "uint16", spans=((0, 1),), default=0),
    Register(22, "Require authorization", R, "uint16"),
    Register(23, "Product code", R, "uint16"),
    Register(24, "Serial number 1st word", R, "uint16"),
    Register(25, "Serial number 2nd word", R, "uint16"),
    Register(26, "FW version", R, "uint16"),
    Register(27, "Charge point state", R, "uint16"),
    Register(28, "Max power from grid", R, "uint16", "A"),
    Register(29, "User settable max current", R, "uint16", "A"),
    Register(30, "Lock status", R, "uint16"),
    Register(31, "Internal temperature", R, "int16", "0.1 °C"),
    Register(32, "OCPP connected", R, "uint16"),
    Register(33, "IEC state", R, "uint16"),
    Register(34, "Warning code", R, "uint16"),
    Register(35, "Error code", R, "uint16"),
    Register(36, "Current limit cause", R, "uint16"),
    Register(37, "Max supported power", R, "uint16"),
    Register(38, "Instant active power", R, "uint16", "W"),
    Register(39, "Energy delivered", R, "uint16", "0.01 kWh"),
    Register(40, "Session duration", R, "uint16", "s"),
    Register(41, "Total kWh supplied 1st word", R, "uint16", "0.01 kWh"),
    Register(42, "Total kWh supplied 2nd word", R, "uint16", "0.01 kWh"),
    Register(43, "Total kWh supplied 3rd word", R, "uint16", "0.01 kWh"),
    Register(44, "Total kWh supplied 4th word", R, "uint16", "0.01 kWh"),
)
BY_ADDRESS = {r.address: r for r in REGISTERS}
COUNT = len(REGISTERS)
WRITABLE = frozenset(r.address for r in REGISTERS if r.access is RW)

EVSE_ID = 21571  # "TC"
PRODUCT_CODE = 1234  # the seed's default
PHASE_3 = 6
PHASE_NONE = 7
DEFAULT_TIMEOUT_S = BY_ADDRESS[19].default or 0
DEFAULT_FAILSAFE_A = BY_ADDRESS[20].default or 0


class EvseStatus(IntEnum):
    """(a) The EVSE's state in dynamic load management."""

    C = 0  # charging
    B1 = 1  # connected, authorized, waiting for the EV to start
    B2 = 2  # connected, authorized, was charging, not enough power
    B3 = 3  # connected, authorized, wasn't charging, not enough power
    D1 = 4  # charging stopped by the EV
    D2 = 5  # connected, no authorization
    D3 = 6  # simplified CP / charging not allowed
    A = 7  # not connected
    F = 8  # error
    E = 9  # unknown


class ChargePointState(IntEnum):
    """(b) The charge point state."""

    NO_EV = 0
    AWAITING_PERMISSION = 1
    AUTHORIZED = 2
    CHARGING = 3
    PAUSED = 4
    SUCCESSFUL = 5
    STOPPED_BY_USER = 6
    ERROR = 7
    RESERVED = 8
    OTHER = 9


# (c) IEC state per pilot state.
IEC_STATE: dict[PilotState, int] = {
    PilotState.A: 0,
    PilotState.B1: 1,
    PilotState.B2: 2,
    PilotState.C1: 3,
    PilotState.C2: 4,
    PilotState.D1: 5,
    PilotState.D2: 6,
    PilotState.E: 7,
    PilotState.F: 8,
}

# (d) Warning bits and (e) error bits per evpilot flag.
WARNING_BITS: dict[ErrorFlag, int] = {ErrorFlag.TEMPERATURE_HIGH: 1}
ERROR_BITS: dict[ErrorFlag, int] = {
    ErrorFlag.PILOT_FAULT: 3,  # fault in the CP line
    ErrorFlag.DIODE_SHORT: 3,  # EV diode failed
    ErrorFlag.EV_NOT_STOPPING: 4,  # overcurrent: the EV draws after being told to stop
    ErrorFlag.RCM_TRIGGERED: 8,  # current leakage detected
}


class LimitCause(IntEnum):
    """(f) What limits the current."""

    HARDWARE = 0
    GRID = 1
    USER = 2
    CABLE = 3
    SIMPLE_CP = 4
    DEFAULTS = 5
    LOAD_BALANCE = 6
    TEMPERATURE = 7


# The engine's binding source (its kind: the text before any `:`) per cause; anything else is
# load balancing (circuits, stale meters, fallbacks, shortage, solar, leases, site caps).
LIMIT_CAUSE: dict[str, LimitCause] = {
    "max": LimitCause.HARDWARE,
    "mains": LimitCause.GRID,
    "capacity": LimitCause.GRID,
    "grid_relay": LimitCause.GRID,
    "user": LimitCause.USER,
    "override": LimitCause.USER,
    "cable": LimitCause.CABLE,
    "none": LimitCause.DEFAULTS,
    "idle": LimitCause.DEFAULTS,
    "off": LimitCause.DEFAULTS,
    "temperature": LimitCause.TEMPERATURE,
}


def limit_cause(source: object) -> LimitCause:
    """The cause (f) for an engine binding source (a string or a typed source rendering as one)."""
    kind = str(source).partition(":")[0]
    return LIMIT_CAUSE.get(kind, LimitCause.LOAD_BALANCE)


def words(value: int, count: int) -> list[int]:
    """An unsigned integer as `count` 16-bit words, low word first (clipped to the range)."""
    value = max(0, min(int(value), (1 << (16 * count)) - 1))
    return [(value >> (16 * i)) & 0xFFFF for i in range(count)]


def int16(value: float) -> int:
    """A signed 16-bit register (two's complement), clipped to the range."""
    return max(-32768, min(32767, round(value))) & 0xFFFF


def uint16(value: float) -> int:
    """An unsigned 16-bit register, clipped to the range."""
    return max(0, min(0xFFFF, round(value)))


def version_number(version: str) -> int:
    """A dotted version as one number: major × 10000 + minor × 100 + patch."""
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:3]] + [0, 0, 0]
    return parts[0] * 10000 + parts[1] * 100 + parts[2]


def from_words(values: list[int]) -> int:
    """The unsigned integer in 16-bit words, low word first (the inverse of `words`)."""
    return sum((w & 0xFFFF) << (16 * i) for i, w in enumerate(values))


def signed(word: int) -> int:
    """A signed 16-bit register's value (the inverse of `int16`)."""
    return word - 0x10000 if word & 0x8000 else word


# (c) IEC state -> the pilot letter a primary reads it as.
IEC_LETTER: dict[int, str] = {code: state.value[0] for state, code in IEC_STATE.items()}
