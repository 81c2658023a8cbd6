"""Register maps as data: where each quantity lives, how it is encoded, and the decoding both ways."""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

# One Modbus read carries at most 125 registers.
MAX_READ = 125


class DataType(StrEnum):
    """How a value is laid out in its registers (bytes big-endian within each register)."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT64 = "float64"

    @property
    def words(self) -> int:
        """Registers the type occupies."""
        return {"16": 1, "32": 2, "64": 4}[self.value[-2:]]

    @property
    def code(self) -> str:
        """The struct format code of the whole value."""
        return {
            "int16": "h",
            "uint16": "H",
            "int32": "i",
            "uint32": "I",
            "float32": "f",
            "int64": "q",
            "uint64": "Q",
            "float64": "d",
        }[self.value]


class WordOrder(StrEnum):
    """Order of the registers of a multi-register value."""

    BIG = "big"  # high word first (most meters)
    LITTLE = "little"  # low word first (Carlo Gavazzi, Phoenix Contact EEM-350)


class Quantity(StrEnum):
    """What a register holds, in evpilot's units (V, A, W, kWh, Hz)."""

    VOLTAGE_L1 = "voltage_l1"
    VOLTAGE_L2 = "voltage_l2"
    VOLTAGE_L3 = "voltage_l3"
    CURRENT_L1 = "current_l1"
    CURRENT_L2 = "current_l2"
    CURRENT_L3 = "current_l3"
    POWER_L1 = "power_l1"
    POWER_L2 = "power_l2"
    POWER_L3 = "power_l3"
    POWER = "power"
    IMPORT_KWH = "import_kwh"
    EXPORT_KWH = "export_kwh"
    FREQUENCY = "frequency"

    @property
    def unit(self) -> str:
        """The unit a decoded value is in."""
        head = self.value.split("_")[0]
        return {
            "voltage": "V",
            "current": "A",
            "power": "W",
            "import": "kWh",
            "export": "kWh",
            "frequency": "Hz",
        }[head]


VOLTAGES = (Quantity.VOLTAGE_L1, Quantity.VOLTAGE_L2, Quantity.VOLTAGE_L3)
CURRENTS = (Quantity.CURRENT_L1, Quantity.CURRENT_L2, Quantity.CURRENT_L3)
POWERS = (Quantity.POWER_L1, Quantity.POWER_L2, Quantity.POWER_L3)


class RegisterMapError(ValueError):
    """A register map (usually a `model: custom` one from the config) is not valid."""


@dataclass(frozen=True, slots=True)
class Register:
    """One quantity's register: address, function code (3 holding, 4 input), type, order, scale."""

    address: int
    function: int = 4
    type: DataType = DataType.FLOAT32
    word_order: WordOrder = WordOrder.BIG
    # Multiplies the raw number into the quantity's unit (0.001 for a register in Wh read as kWh).
    scale: float = 1.0

    @property
    def words(self) -> int:
        """Registers the value occupies."""
        return self.type.words

    def decode(self, words: list[int]) -> float:
        """The value in the quantity's unit from its raw registers."""
        ordered = words if self.word_order is WordOrder.BIG else list(reversed(words))
        raw = struct.unpack(">" + self.type.code, struct.pack(f">{len(ordered)}H", *ordered))[0]
        return float(raw) * self.scale

    def encode(self, value: float) -> list[int]:
        """The raw registers that decode to `value` (rounded and clamped to the type's range)."""
        raw: float | int = value / self.scale
        if self.type not in (DataType.FLOAT32, DataType.FLOAT64):
            bits = 16 * self.type.words
            signed = self.type.value.startswith("int")
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            raw = min(hi, max(lo, round(raw))) if math.isfinite(raw) else hi
        data = struct.pack(">" + self.type.code, raw)
        words = list(struct.unpack(f">{self.type.words}H", data))
        return words if self.word_order is WordOrder.BIG else list(reversed(words))


@dataclass(frozen=True, slots=True)
class Identity:
    """Registers that name the model: a uint16 code, or an ASCII string (two characters a register)."""

    function: int
    address: int
    count: int
    # uint16 code → model, or (for ASCII) a substring of the name → model.
    codes: Mapping[int, str] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)
    # Some makers put the first character of each pair in the register's low byte.
    swapped: bool = False

    def text(self, words: list[int]) -> str:
        """The ASCII name the words hold."""
        data = b"".join(w.to_bytes(2, "little" if self.swapped else "big") for w in words)
        return data.split(b"\0")[0].decode("ascii", "replace").strip()

    def words(self, name: str) -> list[int]:
        """The words that hold `name` (what the meter serves)."""
        data = name.encode("ascii")[: 2 * self.count].ljust(2 * self.count, b"\0")
        order: Literal["little", "big"] = "little" if self.swapped else "big"
        return [int.from_bytes(data[2 * i : 2 * i + 2], order) for i in range(self.count)]

    def match(self, words: list[int]) -> str | None:
        """The model the raw words name, or None."""
        if self.codes:
            return self.codes.get(words[0])
        text = self.text(words)
        return next((model for key, model in self.names.items() if key in text), None)


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: function code, first address, register count, and the quantities inside."""

    function: int
    address: int
    count: int
    quantities: tuple[Quantity, ...]


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """One meter model's registers, identification and decoding rules."""

    model: str
    title: str
    source: str
    registers: Mapping[Quantity, Register]
    identity: Identity | None = None
    # Most meters report current magnitudes; their sign then comes from the phase's active power.
    currents_signed: bool = False
    # Unused registers one read may span to save a round trip (0: only adjacent ones are merged).
    max_gap: int = 0
    phases: int = 3
    blocks: tuple[Block, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not any(q in self.registers for q in CURRENTS):
            raise RegisterMapError(f"{self.model}: the map has no phase current register")
        object.__setattr__(self, "blocks", _plan(self.registers, self.max_gap))

    def decode(self, blocks: Iterable[tuple[Block, list[int]]]) -> dict[Quantity, float]:
        """Every quantity's value from the raw words of each block."""
        out: dict[Quantity, float] = {}
        for block, words in blocks:
            for q in block.quantities:
                reg = self.registers[q]
                off = reg.address - block.address
                out[q] = reg.decode(words[off : off + reg.words])
        return out

    def encode(self, values: Mapping[Quantity, float]) -> dict[tuple[int, int], int]:
        """(function, address) → raw word for each quantity given (what a twin serves)."""
        out: dict[tuple[int, int], int] = {}
        for q, value in values.items():
            reg = self.registers.get(q)
            if reg is None:
                continue
            for i, word in enumerate(reg.encode(value)):
                out[(reg.function, reg.address + i)] = word
        return out

    @classmethod
    def from_config(cls, doc: object, model: str = "custom") -> RegisterMap:
        """A map from a config mapping (`registers: {current_l1: {address: 6, ...}, ...}`)."""
        return _from_config(doc, model)


def _plan(registers: Mapping[Quantity, Register], max_gap: int) -> tuple[Block, ...]:
    """Group the registers into as few reads as the gap rule and the 125-register limit allow."""
    by_fc: dict[int, list[tuple[Quantity, Register]]] = {}
    for q, reg in registers.items():
        by_fc.setdefault(reg.function, []).append((q, reg))
    blocks: list[Block] = []
    for fc in sorted(by_fc):
        items = sorted(by_fc[fc], key=lambda item: item[1].address)
        start = end = -1
        members: list[Quantity] = []
        for q, reg in items:
            reg_end = reg.address + reg.words
            if members and reg.address - end <= max_gap and reg_end - start <= MAX_READ:
                end = max(end, reg_end)
                members.append(q)
                continue
            if members:
                blocks.append(Block(fc, start, end - start, tuple(members)))
            start, end, members = reg.address, reg_end, [q]
        if members:
            blocks.append(Block(fc, start, end - start, tuple(members)))
    return tuple(blocks)


_REGISTER_KEYS = {"address", "function", "type", "word_order", "scale"}


def _register(key: str, spec: object) -> Register:
    if not isinstance(spec, Mapping):
        raise RegisterMapError(f"registers.{key}: expected a mapping with address, function, type, ...")
    unknown = set(spec) - _REGISTER_KEYS
    if unknown:
        raise RegisterMapError(f"registers.{key}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    address = spec.get("address")
    if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address <= 0xFFFF:
        raise RegisterMapError(f"registers.{key}.address: expected an integer 0-65535, got {address!r}")
    function = spec.get("function", 4)
    if function not in (3, 4) or isinstance(function, bool):
        raise RegisterMapError(
            f"registers.{key}.function: expected 3 (holding) or 4 (input), got {function!r}"
        )
    try:
        dtype = DataType(spec.get("type", "float32"))
    except ValueError:
        allowed = ", ".join(t.value for t in DataType)
        raise RegisterMapError(f"registers.{key}.type: expected one of {allowed}") from None
    try:
        order = WordOrder(spec.get("word_order", "big"))
    except ValueError:
        raise RegisterMapError(f"registers.{key}.word_order: expected big or little") from None
    scale = spec.get("scale", 1.0)
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not math.isfinite(scale)
        or scale == 0
    ):
        raise RegisterMapError(f"registers.{key}.scale: expected a finite non-zero number, got {scale!r}")
    if address + dtype.words - 1 > 0xFFFF:
        raise RegisterMapError(f"registers.{key}: the value runs past register 65535")
    return Register(address, int(function), dtype, order, float(scale))


def _from_config(doc: object, model: str) -> RegisterMap:
    if not isinstance(doc, Mapping):
        raise RegisterMapError("registers: expected a mapping of quantity → register")
    if not any(q.value in doc for q in CURRENTS):
        raise RegisterMapError("registers: at least current_l1 is required")
    regs: dict[Quantity, Register] = {}
    allowed = ", ".join(q.value for q in Quantity)
    extra: dict[str, Any] = {}
    for key, spec in doc.items():
        if key in ("currents_signed", "max_gap"):
            extra[str(key)] = spec
            continue
        try:
            q = Quantity(key)
        except ValueError:
            raise RegisterMapError(f"registers.{key}: unknown quantity; expected one of {allowed}") from None
        regs[q] = _register(str(key), spec)
    signed = extra.get("currents_signed", False)
    if not isinstance(signed, bool):
        raise RegisterMapError("registers.currents_signed: expected true or false")
    gap = extra.get("max_gap", 0)
    if isinstance(gap, bool) or not isinstance(gap, int) or not 0 <= gap <= 64:
        raise RegisterMapError("registers.max_gap: expected an integer 0-64")
    spans: list[tuple[int, int, int, str]] = sorted(
        (r.function, r.address, r.address + r.words, q.value) for q, r in regs.items()
    )
    for (fa, _sa, ea, qa), (fb, sb, _eb, qb) in itertools.pairwise(spans):
        if fa == fb and sb < ea:
            raise RegisterMapError(f"registers.{qb}: overlaps registers.{qa}")
    phases = 3 if any(q in regs for q in CURRENTS[1:]) else 1
    return RegisterMap(
        model=model,
        title="Custom register map",
        source="the site's config",
        registers=regs,
        currents_signed=signed,
        max_gap=gap,
        phases=phases,
    )
