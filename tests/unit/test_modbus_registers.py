"""Register maps as data: encoding both ways, the tables, `model: custom` validation, signs and specs."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evpilot.devices.modbus.driver import ModbusSpec, SpecError, to_reading
from evpilot.devices.modbus.maps import MAPS, lookup
from evpilot.devices.modbus.registers import (
    MAX_READ,
    DataType,
    Quantity,
    Register,
    RegisterMap,
    RegisterMapError,
    WordOrder,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "modbus"
MAPS_SOURCE = Path(__file__).resolve().parents[2] / "src" / "evpilot" / "devices" / "modbus" / "maps.py"

REQUIRED_MODELS = {
    "sdm630",
    "sdm72d",
    "sdm120",
    "abb_b23",
    "em24",
    "em340",
    "pac2200",
    "pro380",
    "finder_7m",
    "eem_ma370",
    "dtsu666",
    "iem3155",
    "orno_we517",
}


def test_every_required_model_has_a_table_citing_its_document() -> None:
    assert set(MAPS) >= REQUIRED_MODELS
    text = MAPS_SOURCE.read_text()
    for m in MAPS.values():
        assert m.source and m.title
        assert m.source in text or m.source[:40] in text
        for block in m.blocks:
            assert 1 <= block.count <= MAX_READ
            assert block.function in (3, 4)
        for reg in m.registers.values():
            assert reg.function in (3, 4)


def test_aliases_and_unknown_model() -> None:
    assert lookup("ET340") is MAPS["em340"]
    assert lookup("b24") is MAPS["abb_b23"]
    with pytest.raises(KeyError, match="known: abb_b23"):
        lookup("sdm999")


@given(st.integers(-(2**31), 2**31 - 1), st.sampled_from(list(WordOrder)))
def test_int32_round_trip_in_both_word_orders(raw: int, order: WordOrder) -> None:
    reg = Register(0, 4, DataType.INT32, order, 1.0)
    words = reg.encode(raw)
    assert reg.decode(words) == raw
    big = list(struct.unpack(">2H", struct.pack(">i", raw)))
    assert words == (big if order is WordOrder.BIG else big[::-1])


@given(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([DataType.FLOAT32, DataType.FLOAT64]))
def test_float_round_trip(value: float, dtype: DataType) -> None:
    reg = Register(10, 3, dtype, WordOrder.BIG, 1.0)
    back = reg.decode(reg.encode(value))
    assert math.isclose(back, value, rel_tol=1e-6, abs_tol=1e-30)


def test_known_words_decode() -> None:
    # 230.0 as an IEEE 754 float32 is 0x43660000; 2300 (0.1 V) as a low-word-first int32.
    assert Register(0, 4, DataType.FLOAT32).decode([0x4366, 0x0000]) == 230.0
    assert Register(0, 4, DataType.INT32, WordOrder.LITTLE, 0.1).decode([2300, 0]) == pytest.approx(230.0)
    assert Register(0, 3, DataType.INT16, scale=0.1).decode([0xFFF6]) == pytest.approx(-1.0)
    assert Register(0, 3, DataType.UINT64, scale=0.01).decode([0, 0, 0x0001, 0x0000]) == pytest.approx(655.36)


def test_integer_encoding_clamps_to_the_type() -> None:
    reg = Register(0, 3, DataType.UINT16)
    assert reg.encode(-5) == [0]
    assert reg.encode(1e9) == [0xFFFF]


def test_blocks_merge_only_within_the_gap() -> None:
    regs = {
        Quantity.CURRENT_L1: Register(0),
        Quantity.CURRENT_L2: Register(2),
        Quantity.POWER: Register(20),
        Quantity.IMPORT_KWH: Register(5, 3),
    }
    tight = RegisterMap("t", "t", "doc", regs)
    assert [(b.function, b.address, b.count) for b in tight.blocks] == [(3, 5, 2), (4, 0, 4), (4, 20, 2)]
    loose = RegisterMap("t", "t", "doc", regs, max_gap=16)
    assert [(b.function, b.address, b.count) for b in loose.blocks] == [(3, 5, 2), (4, 0, 22)]


@pytest.mark.parametrize("model", sorted(MAPS))
def test_replayed_register_block_decodes_to_the_known_reading(model: str) -> None:
    doc = json.loads((DATA / f"{model}.json").read_text())
    regmap = MAPS[model]
    words = {
        (int(fc), int(a)): int(w, 16) for fc, block in doc["registers"].items() for a, w in block.items()
    }
    raw = [
        (b, [words.get((b.function, a), 0) for a in range(b.address, b.address + b.count)])
        for b in regmap.blocks
    ]
    values = regmap.decode(raw)
    for key, expected in doc["expect"].items():
        assert values[Quantity(key)] == pytest.approx(expected, rel=1e-6, abs=1e-3), key
    reading = to_reading(regmap, values, 5.0)
    # L2 exports (negative power): its current magnitude comes out negative.
    if regmap.phases == 3 and Quantity.POWER_L2 in regmap.registers:
        assert reading.currents == pytest.approx((10.5, -2.25, 0.75))


def test_currents_are_signed_by_their_phase_power() -> None:
    regmap = MAPS["sdm630"]
    values = {
        Quantity.CURRENT_L1: 10.0,
        Quantity.CURRENT_L2: 4.0,
        Quantity.CURRENT_L3: 3.0,
        Quantity.POWER_L1: 2300.0,
        Quantity.POWER_L2: -920.0,
        Quantity.POWER_L3: 0.0,
        Quantity.POWER: 1380.0,
    }
    assert to_reading(regmap, values, 0.0).currents == (10.0, -4.0, 3.0)
    # A meter that already signs its currents is left alone even if powers disagree.
    signed = RegisterMap.from_config(
        {"current_l1": {"address": 0}, "power_l1": {"address": 2}, "currents_signed": True}
    )
    out = to_reading(signed, {Quantity.CURRENT_L1: -6.0, Quantity.POWER_L1: 100.0}, 0.0)
    assert out.currents == (-6.0, 0.0, 0.0)


def test_without_phase_powers_the_total_power_signs_the_currents() -> None:
    regmap = RegisterMap.from_config(
        {"current_l1": {"address": 0}, "current_l2": {"address": 2}, "power": {"address": 4}}
    )
    values = {Quantity.CURRENT_L1: 5.0, Quantity.CURRENT_L2: 6.0, Quantity.POWER: -3000.0}
    assert to_reading(regmap, values, 0.0).currents == (-5.0, -6.0, 0.0)


def test_identity_registers_name_the_model() -> None:
    eastron = MAPS["sdm630"].identity
    assert eastron is not None
    assert [eastron.match([code]) for code in (0x70, 0x79, 0x89, 0x20, 0x1234)] == [
        "sdm630",
        "sdm630",
        "sdm72d",
        "sdm120",
        None,
    ]
    phoenix = MAPS["eem_ma370"].identity
    assert phoenix is not None and phoenix.swapped
    # "EEM-MA370" with the first character of each pair in the low byte: 'E','E' → 0x4545, 'M','-' → 0x2D4D.
    words = [0x4545, 0x2D4D, 0x414D, 0x3733, 0x0030, 0, 0, 0]
    assert phoenix.text(words) == "EEM-MA370" and phoenix.match(words) == "eem_ma370"
    assert phoenix.words("EEM-MA370") == words
    schneider = MAPS["iem3155"].identity
    assert schneider is not None and schneider.match(schneider.words("iEM3155")) == "iem3155"


def test_custom_map_from_config() -> None:
    regmap = RegisterMap.from_config(
        {
            "current_l1": {
                "address": 0x10,
                "function": 3,
                "type": "int32",
                "word_order": "little",
                "scale": 0.001,
            },
            "current_l2": {
                "address": 0x12,
                "function": 3,
                "type": "int32",
                "word_order": "little",
                "scale": 0.001,
            },
            "current_l3": {
                "address": 0x14,
                "function": 3,
                "type": "int32",
                "word_order": "little",
                "scale": 0.001,
            },
            "voltage_l1": {"address": 0x00, "function": 3, "type": "uint16", "scale": 0.1},
            "max_gap": 16,
        }
    )
    assert regmap.model == "custom" and regmap.phases == 3
    assert [(b.function, b.address, b.count) for b in regmap.blocks] == [(3, 0, 0x16)]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "registers: expected a mapping"),
        ({"voltage_l1": {"address": 0}}, "at least current_l1"),
        (
            {"current_l1": {"address": 0}, "curent_l2": {"address": 2}},
            "registers.curent_l2: unknown quantity",
        ),
        ({"current_l1": {"address": -1}}, "registers.current_l1.address: expected an integer 0-65535"),
        ({"current_l1": {"address": 0, "function": 6}}, "registers.current_l1.function: expected 3"),
        ({"current_l1": {"address": 0, "type": "double"}}, "registers.current_l1.type: expected one of"),
        ({"current_l1": {"address": 0, "word_order": "middle"}}, "word_order: expected big or little"),
        ({"current_l1": {"address": 0, "scale": 0}}, "scale: expected a finite non-zero number"),
        ({"current_l1": {"address": 0, "unit": "A"}}, "registers.current_l1: unknown key"),
        ({"current_l1": 5}, "registers.current_l1: expected a mapping"),
        ({"current_l1": {"address": 0}, "current_l2": {"address": 1}}, "registers.current_l2: overlaps"),
        ({"current_l1": {"address": 65535}}, "runs past register 65535"),
        ({"current_l1": {"address": 0}, "currents_signed": "yes"}, "currents_signed: expected true or false"),
    ],
)
def test_custom_map_errors_name_the_key(doc: object, message: str) -> None:
    with pytest.raises(RegisterMapError, match=message):
        RegisterMap.from_config(doc)


def test_spec_from_mapping() -> None:
    spec = ModbusSpec.from_mapping({"type": "modbus", "model": "sdm630", "host": "192.0.2.5", "unit": 3})
    assert (spec.port, spec.poll_s, spec.unit) == (502, 1.0, 3)
    assert str(spec.endpoint) == "192.0.2.5:502"
    rtu = ModbusSpec.from_mapping(
        {"model": "abb_b23", "serial": "/dev/ttyUSB0", "baudrate": 19200, "parity": "E"}
    )
    assert str(rtu.endpoint) == "/dev/ttyUSB0 19200 8E1"
    custom = ModbusSpec.from_mapping(
        {"model": "custom", "host": "h", "registers": {"current_l1": {"address": 6}}}
    )
    assert custom.register_map().model == "custom"


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"host": "h"}, "model"),
        ({"model": "sdm630"}, "host"),
        ({"model": "sdm630", "host": "h", "serial": "/dev/ttyUSB0"}, "host"),
        ({"model": "sdm630", "host": "h", "unit": 0}, "unit"),
        ({"model": "sdm630", "host": "h", "unit": "1"}, "unit"),
        ({"model": "sdm630", "host": "h", "port": 70000}, "port"),
        ({"model": "sdm630", "serial": "/dev/x", "baudrate": 1000}, "baudrate"),
        ({"model": "sdm630", "serial": "/dev/x", "parity": "X"}, "parity"),
        ({"model": "sdm630", "host": "h", "poll_s": 0}, "poll_s"),
        ({"model": "sdm630", "host": "h", "timeout_s": True}, "timeout_s"),
        ({"model": "nope", "host": "h"}, "model"),
        ({"model": "custom", "host": "h"}, "registers"),
        ({"model": "custom", "host": "h", "registers": {"current_l1": {"address": "x"}}}, "registers"),
        ({"model": "sdm630", "host": "h", "registers": {}}, "registers"),
        ({"model": "sdm630", "host": "h", "adress": 1}, "adress"),
    ],
)
def test_spec_errors_name_the_field(doc: dict[str, object], key: str) -> None:
    with pytest.raises(SpecError) as err:
        ModbusSpec.from_mapping(doc)
    assert err.value.key == key


def test_rtu_crc_matches_a_known_frame() -> None:
    from evpilot.devices.modbus.bus import _crc_ok, crc16

    # "Read one holding register at 0 from unit 1" is 01 03 00 00 00 01 with CRC bytes 84 0A.
    assert crc16(bytes.fromhex("010300000001")) == 0x0A84
    assert _crc_ok(bytes.fromhex("010300000001840A"))
    assert not _crc_ok(bytes.fromhex("010300000001840B"))
