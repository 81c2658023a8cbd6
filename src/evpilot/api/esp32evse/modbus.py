"""The ESP32-EVSE firmware's Modbus holding registers (100-421), served from the REST facade's documents.

Two-word values put the high word first, as the firmware does. The values are those of
`GET /api/v1/state` and `GET /api/v1/info` in the firmware's Modbus units (currents ×10 or mA,
voltages mV, temperatures 0.01 °C), so a Modbus reader and a REST reader see the same charger.
Settings 300-317 come from the config file and are read-only here (a write gets exception 02).
"""

from __future__ import annotations

from collections.abc import Sequence

from pymodbus.constants import ExcCodes

from evpilot import __version__
from evpilot.api.esp32evse.rest import info_doc, state_doc
from evpilot.api.esp32evse.vocab import WS_PER_KWH
from evpilot.api.modbus import Refused
from evpilot.api.teltonika.modbus import restart
from evpilot.control.runtime import Runtime
from evpilot.core import commands as cmd
from evpilot.core.charger import Charger, ErrorFlag

# The firmware's error bits; `ev_not_stopping` is evpilot's own (bit 8).
ERROR_BITS: dict[str, int] = {
    ErrorFlag.PILOT_FAULT.value: 0,
    ErrorFlag.DIODE_SHORT.value: 1,
    "lock_fault": 2,
    "unlock_fault": 3,
    ErrorFlag.RCM_TRIGGERED.value: 4,
    "rcm_selftest_fault": 5,
    ErrorFlag.TEMPERATURE_HIGH.value: 6,
    "temperature_fault": 7,
    ErrorFlag.EV_NOT_STOPPING.value: 8,
}
# Blocks of registers that exist (reads anywhere else get exception 02).
BLOCKS = ((100, 112), (200, 218), (300, 317), (400, 421))
VERSION_AT, VERSION_WORDS = 405, 16
# The firmware's energy meter mode "current and voltage" and its AC voltage setting.
METER_MODE = 2
AC_VOLTAGE = 230

ORIGIN = "modbus:esp32evse"
# Registers a primary reads and writes (the Modbus charger driver's `map: esp32evse`).
STATE, ENABLED, CHARGING_CURRENT = 100, 103, 106
CONSUMPTION_WH, VOLTAGES_MV, CURRENTS_MA = 205, 207, 213


def hi_lo(value: float) -> list[int]:
    """An unsigned 32-bit value as two words, high word first (clipped to the range)."""
    v = max(0, min(0xFFFFFFFF, round(value)))
    return [v >> 16, v & 0xFFFF]


def from_hi_lo(hi: int, lo: int) -> int:
    """The unsigned 32-bit value of two words, high word first (the inverse of `hi_lo`)."""
    return (hi & 0xFFFF) << 16 | (lo & 0xFFFF)


def state_text(word: int) -> str:
    """The two ASCII characters of the state register (e.g. "C2"), without padding."""
    return bytes([word >> 8 & 0xFF, word & 0xFF]).rstrip(b"\0").decode("ascii", "replace")


def u16(value: float) -> int:
    """An unsigned 16-bit register, clipped."""
    return max(0, min(0xFFFF, round(value)))


def s16(value: float) -> int:
    """A signed 16-bit register (two's complement), clipped."""
    return max(-32768, min(32767, round(value))) & 0xFFFF


def text_words(text: str, count: int) -> list[int]:
    """ASCII text in `count` words, two characters each (first in the high byte), zero-padded."""
    raw = text.encode("ascii", "replace")[: 2 * count].ljust(2 * count, b"\0")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, 2 * count, 2)]


def error_bits(errors: Sequence[str] | None) -> int:
    """The firmware's error word for the REST `errors` list."""
    return sum(1 << ERROR_BITS[e] for e in errors or () if e in ERROR_BITS)


class Esp32EvseMap:
    """The ESP32-EVSE register map for each served charger."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def registers(self, cid: str) -> dict[int, int]:
        """Every register of charger `cid` now, by address."""
        rt = self.rt
        ch = rt.charger(cid)
        state = state_doc(rt, cid)
        info = info_doc(rt, cid)
        cfg = ch.config
        shown = state["state"]
        out: dict[int, int] = {}

        def put(address: int, values: Sequence[int]) -> None:
            for i, v in enumerate(values):
                out[address + i] = v

        put(100, [ord(shown[0]) << 8 | (ord(shown[1]) if len(shown) > 1 else 0)])
        put(101, hi_lo(error_bits(state["errors"])))
        put(103, [int(state["enabled"]), int(state["available"]), int(state["pendingAuth"])])
        put(106, [u16(state["chargingCurrent"] * 10)])
        put(107, hi_lo(state["consumptionLimit"]))
        put(109, hi_lo(state["chargingTimeLimit"]))
        put(111, [u16(state["underPowerLimit"])])
        put(112, [0])
        put(200, [u16(state["power"])])
        put(201, hi_lo(state["sessionTime"]))
        put(203, hi_lo(state["chargingTime"]))
        put(205, hi_lo(state["consumption"] / 3600.0))  # Ws -> Wh
        for i in range(3):
            put(207 + 2 * i, hi_lo(state["voltage"][i] * 1000))
            put(213 + 2 * i, hi_lo(state["current"][i] * 1000))
        put(300, [0 if cfg.fixed_cable else 1, 1, u16(cfg.max_temp), int(cfg.require_auth)])
        put(304, [u16(cfg.max_current), u16(state["chargingCurrent"] * 10)])
        put(306, hi_lo(state["consumptionLimit"]))
        put(308, hi_lo(state["chargingTimeLimit"]))
        put(310, [u16(state["underPowerLimit"])])
        put(311, [0, 0, 0, 0, METER_MODE, AC_VOLTAGE, 1 if cfg.phases == 3 else 0])
        put(400, hi_lo(info["uptime"]))
        put(402, [s16(info["temperatureLow"] * 100), s16(info["temperatureHigh"] * 100)])
        put(404, [info["temperatureSensorCount"]])
        put(VERSION_AT, text_words(__version__, VERSION_WORDS))
        put(421, [0])
        return out

    def read(self, cid: str, address: int, count: int) -> list[int]:
        """`count` registers from `address` (02 if any does not exist)."""
        last = address + count - 1
        if count < 1 or not any(lo <= address and last <= hi for lo, hi in BLOCKS):
            raise Refused(ExcCodes.ILLEGAL_ADDRESS, f"registers {address}-{last} do not exist")
        regs = self.registers(cid)
        try:
            return [regs[a] for a in range(address, last + 1)]
        except KeyError as exc:
            raise Refused(ExcCodes.ILLEGAL_ADDRESS, f"register {exc.args[0]} does not exist") from None

    def write(self, cid: str, address: int, values: Sequence[int]) -> None:
        """Check every value first, then apply all (02 not writable, 03 out of range)."""
        ch = self.rt.charger(cid)
        actions: list[cmd.Command] = []
        i = 0
        while i < len(values):
            addr, value = address + i, values[i]
            if addr in (107, 109):
                if i + 1 >= len(values):
                    raise Refused(
                        ExcCodes.ILLEGAL_ADDRESS, f"register {addr} takes two words ({addr}-{addr + 1})"
                    )
                actions.append(self._pair(ch.config.id, addr, value << 16 | values[i + 1]))
                i += 2
                continue
            actions += self._single(ch, addr, value)
            i += 1
        self.rt.apply(actions, ORIGIN)

    @staticmethod
    def _pair(cid: str, addr: int, value: int) -> cmd.Command:
        # The ranges are the commands' own (a refusal is exception 03).
        if addr == 107:
            return cmd.SetEnergyCap(cid, value / WS_PER_KWH or None)
        return cmd.SetTimeCap(cid, value / 60.0 or None)

    @staticmethod
    def _single(ch: Charger, addr: int, value: int) -> list[cmd.Command]:
        cid = ch.config.id
        if addr in (103, 104):
            if value > 1:
                raise Refused(ExcCodes.ILLEGAL_VALUE, f"register {addr} is 0 or 1")
            flag = value == 1
            return [cmd.SetEnabled(cid, flag) if addr == 103 else cmd.SetAvailable(cid, flag)]
        if addr == 106:
            amps = value / 10.0
            if not 6.0 <= amps <= ch.config.max_current:
                raise Refused(
                    ExcCodes.ILLEGAL_VALUE,
                    f"charging current {value} is not 60-{round(ch.config.max_current * 10)}",
                )
            return [cmd.SetUserLimit(cid, amps)]
        if addr == 111:
            return [cmd.SetUnderPower(cid, float(value) or None)]
        if addr in (112, 421):
            if value != 1:
                raise Refused(ExcCodes.ILLEGAL_VALUE, f"register {addr} takes 1")
            return [cmd.Authorize(cid)] if addr == 112 else restart(cid)
        raise Refused(ExcCodes.ILLEGAL_ADDRESS, f"register {addr} is not writable")

    def heard(self, cid: str) -> None:
        """The ESP32-EVSE map has no watchdog."""

    def watch(self) -> None:
        """Nothing to keep up."""
