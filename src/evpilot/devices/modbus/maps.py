"""The register map of every supported meter model, one table each, with the maker's document it follows.

Addresses are protocol addresses (0-based, as sent on the wire): a manual's register 30001 or 40001 is
address 0. Scales turn the raw number into V, A, W, kWh and Hz.
"""

from __future__ import annotations

from evpilot.devices.modbus.registers import DataType as T
from evpilot.devices.modbus.registers import Identity, Quantity, Register, RegisterMap
from evpilot.devices.modbus.registers import WordOrder as W

Q = Quantity
LITTLE = W.LITTLE


def _f(address: int, fc: int = 4, scale: float = 1.0) -> Register:
    """A big-endian IEEE 754 float32."""
    return Register(address, fc, T.FLOAT32, W.BIG, scale)


# Eastron writes a product code into holding register 0xFC02 (the high half of its 32-bit meter code).
_EASTRON_ID = Identity(
    3,
    0xFC02,
    1,
    codes={0x0070: "sdm630", 0x0079: "sdm630", 0x0089: "sdm72d", 0x0087: "sdm72d", 0x0020: "sdm120"},
)

_EASTRON_3P = {
    Q.VOLTAGE_L1: _f(0x00),
    Q.VOLTAGE_L2: _f(0x02),
    Q.VOLTAGE_L3: _f(0x04),
    Q.CURRENT_L1: _f(0x06),
    Q.CURRENT_L2: _f(0x08),
    Q.CURRENT_L3: _f(0x0A),
    Q.POWER_L1: _f(0x0C),
    Q.POWER_L2: _f(0x0E),
    Q.POWER_L3: _f(0x10),
    Q.POWER: _f(0x34),
    Q.FREQUENCY: _f(0x46),
    Q.IMPORT_KWH: _f(0x48),
    Q.EXPORT_KWH: _f(0x4A),
}

# Eastron SDM630 Modbus V2: "SDM630 Modbus Protocol" (Eastron Europe), input registers 30001-30076, float32.
SDM630 = RegisterMap(
    "sdm630",
    "Eastron SDM630",
    "Eastron, SDM630-Modbus V2 protocol document, input registers (3X) 30001-30076, holding 4FC03",
    _EASTRON_3P,
    identity=_EASTRON_ID,
    max_gap=40,
)

# Eastron SDM72D-M (V2): same input-register layout as the SDM630 for these quantities.
SDM72D = RegisterMap(
    "sdm72d",
    "Eastron SDM72D-M",
    "Eastron, SDM72D-M-2 user manual, Modbus protocol section, input registers 30001-30076",
    _EASTRON_3P,
    identity=_EASTRON_ID,
    max_gap=40,
)

# Eastron SDM120-Modbus: single phase; the phase-1 quantities of the SDM630 layout.
SDM120 = RegisterMap(
    "sdm120",
    "Eastron SDM120",
    "Eastron, SDM120-Modbus user manual, Modbus protocol, input registers 30001-30076",
    {
        Q.VOLTAGE_L1: _f(0x00),
        Q.CURRENT_L1: _f(0x06),
        Q.POWER_L1: _f(0x0C),
        Q.FREQUENCY: _f(0x46),
        Q.IMPORT_KWH: _f(0x48),
        Q.EXPORT_KWH: _f(0x4A),
    },
    identity=_EASTRON_ID,
    max_gap=60,
    phases=1,
)

# ABB B23/B24 (and A-series): holding registers, fixed point; energies are 64-bit counters.
ABB_B23 = RegisterMap(
    "abb_b23",
    "ABB B23/B24",
    "ABB, B23/B24 energy meters user manual, 'Communication with Modbus': 5B00-5B2C, 5000-5007",
    {
        Q.VOLTAGE_L1: Register(0x5B00, 3, T.UINT32, W.BIG, 0.1),
        Q.VOLTAGE_L2: Register(0x5B02, 3, T.UINT32, W.BIG, 0.1),
        Q.VOLTAGE_L3: Register(0x5B04, 3, T.UINT32, W.BIG, 0.1),
        Q.CURRENT_L1: Register(0x5B0C, 3, T.UINT32, W.BIG, 0.01),
        Q.CURRENT_L2: Register(0x5B0E, 3, T.UINT32, W.BIG, 0.01),
        Q.CURRENT_L3: Register(0x5B10, 3, T.UINT32, W.BIG, 0.01),
        Q.POWER: Register(0x5B14, 3, T.INT32, W.BIG, 0.01),
        Q.POWER_L1: Register(0x5B16, 3, T.INT32, W.BIG, 0.01),
        Q.POWER_L2: Register(0x5B18, 3, T.INT32, W.BIG, 0.01),
        Q.POWER_L3: Register(0x5B1A, 3, T.INT32, W.BIG, 0.01),
        Q.FREQUENCY: Register(0x5B2C, 3, T.UINT16, W.BIG, 0.01),
        Q.IMPORT_KWH: Register(0x5000, 3, T.UINT64, W.BIG, 0.01),
        Q.EXPORT_KWH: Register(0x5004, 3, T.UINT64, W.BIG, 0.01),
    },
    max_gap=8,
)


def _cg(volts: int, freq: int, imp: int, exp: int) -> dict[Quantity, Register]:
    """Carlo Gavazzi's INT32 layout (low word first): V ×0.1, A ×0.001, W ×0.1, kWh ×0.1, Hz ×0.1."""
    return {
        Q.VOLTAGE_L1: Register(volts + 0x00, 4, T.INT32, LITTLE, 0.1),
        Q.VOLTAGE_L2: Register(volts + 0x02, 4, T.INT32, LITTLE, 0.1),
        Q.VOLTAGE_L3: Register(volts + 0x04, 4, T.INT32, LITTLE, 0.1),
        Q.CURRENT_L1: Register(0x0C, 4, T.INT32, LITTLE, 0.001),
        Q.CURRENT_L2: Register(0x0E, 4, T.INT32, LITTLE, 0.001),
        Q.CURRENT_L3: Register(0x10, 4, T.INT32, LITTLE, 0.001),
        Q.POWER_L1: Register(0x12, 4, T.INT32, LITTLE, 0.1),
        Q.POWER_L2: Register(0x14, 4, T.INT32, LITTLE, 0.1),
        Q.POWER_L3: Register(0x16, 4, T.INT32, LITTLE, 0.1),
        Q.POWER: Register(0x28, 4, T.INT32, LITTLE, 0.1),
        Q.FREQUENCY: Register(freq, 4, T.INT16, W.BIG, 0.1),
        Q.IMPORT_KWH: Register(imp, 4, T.INT32, LITTLE, 0.1),
        Q.EXPORT_KWH: Register(exp, 4, T.INT32, LITTLE, 0.1),
    }


# Carlo Gavazzi EM24: "EM24 Communication protocol" (Carlo Gavazzi), instantaneous variables 0000h-005Dh.
EM24 = RegisterMap(
    "em24",
    "Carlo Gavazzi EM24",
    "Carlo Gavazzi, EM24_DIN communication protocol, 'Instantaneous variables and meters' 0000h-005Dh",
    _cg(0x00, 0x37, 0x42, 0x5C),
    max_gap=16,
)

# Carlo Gavazzi EM330/EM340/ET330/ET340: same encoding, meters at 0034h / 004Eh.
EM340 = RegisterMap(
    "em340",
    "Carlo Gavazzi EM340/ET340",
    "Carlo Gavazzi, EM330/EM340/ET330/ET340 communication protocol, 0000h-004Fh",
    _cg(0x00, 0x33, 0x34, 0x4E),
    max_gap=16,
)

# Siemens SENTRON PAC2200: measured variables as float32 at their manual offsets, energies as float64 Wh
# (801 and 809 are the tariff-1 import and export counters: the total on a meter with one tariff).
PAC2200 = RegisterMap(
    "pac2200",
    "Siemens SENTRON PAC2200",
    "Siemens, SENTRON PAC2200 system manual, measured variables, offsets 1-69, 801, 809",
    {
        Q.VOLTAGE_L1: _f(1),
        Q.VOLTAGE_L2: _f(3),
        Q.VOLTAGE_L3: _f(5),
        Q.CURRENT_L1: _f(13),
        Q.CURRENT_L2: _f(15),
        Q.CURRENT_L3: _f(17),
        Q.POWER_L1: _f(25),
        Q.POWER_L2: _f(27),
        Q.POWER_L3: _f(29),
        Q.FREQUENCY: _f(55),
        Q.POWER: _f(65),
        Q.IMPORT_KWH: Register(801, 4, T.FLOAT64, W.BIG, 0.001),
        Q.EXPORT_KWH: Register(809, 4, T.FLOAT64, W.BIG, 0.001),
    },
    max_gap=30,
)

# Inepro PRO380-Mod: holding registers, float32; powers in kW.
PRO380 = RegisterMap(
    "pro380",
    "Inepro PRO380",
    "Inepro Metering, PRO380 user manual V2.18, Modbus register list 5000h-5031h, 6000h-6047h",
    {
        Q.VOLTAGE_L1: _f(0x5002, 3),
        Q.VOLTAGE_L2: _f(0x5004, 3),
        Q.VOLTAGE_L3: _f(0x5006, 3),
        Q.FREQUENCY: _f(0x5008, 3),
        Q.CURRENT_L1: _f(0x500C, 3),
        Q.CURRENT_L2: _f(0x500E, 3),
        Q.CURRENT_L3: _f(0x5010, 3),
        Q.POWER: _f(0x5012, 3, 1000.0),
        Q.POWER_L1: _f(0x5014, 3, 1000.0),
        Q.POWER_L2: _f(0x5016, 3, 1000.0),
        Q.POWER_L3: _f(0x5018, 3, 1000.0),
        Q.IMPORT_KWH: _f(0x600C, 3),
        Q.EXPORT_KWH: _f(0x6018, 3),
    },
    max_gap=12,
)

# Finder 7M.38: input registers, float32; the energy counter in Wh.
FINDER_7M = RegisterMap(
    "finder_7m",
    "Finder 7M.38",
    "Finder, 'Modbus 7M.24-7M.38' register map v2 (30/06/2021), input registers 2500-2638",
    {
        Q.VOLTAGE_L1: _f(2500),
        Q.VOLTAGE_L2: _f(2502),
        Q.VOLTAGE_L3: _f(2504),
        Q.CURRENT_L1: _f(2516),
        Q.CURRENT_L2: _f(2518),
        Q.CURRENT_L3: _f(2520),
        Q.POWER_L1: _f(2530),
        Q.POWER_L2: _f(2532),
        Q.POWER_L3: _f(2534),
        Q.POWER: _f(2536),
        Q.FREQUENCY: _f(2584),
        Q.IMPORT_KWH: _f(2638, 4, 0.001),
    },
    max_gap=12,
)


def _fl(address: int) -> Register:
    """A float32 holding register, low word first (Phoenix Contact EMpro)."""
    return Register(address, 3, T.FLOAT32, LITTLE)


# Phoenix Contact EMpro EEM-MA370: holding registers, float32 with the low word first; energies in Wh.
# The device name ("EEM-MA370") is ASCII at register 300, the first character of each pair in the
# low byte.
EEM_MA370 = RegisterMap(
    "eem_ma370",
    "Phoenix Contact EEM-MA370",
    "Phoenix Contact, EEM-MA370 (EMpro) Modbus register list, 0x8000-0x8023 and 0x8100-0x8107",
    {
        Q.VOLTAGE_L1: _fl(0x8006),
        Q.VOLTAGE_L2: _fl(0x8008),
        Q.VOLTAGE_L3: _fl(0x800A),
        Q.FREQUENCY: _fl(0x800C),
        Q.CURRENT_L1: _fl(0x800E),
        Q.CURRENT_L2: _fl(0x8010),
        Q.CURRENT_L3: _fl(0x8012),
        Q.POWER: _fl(0x8016),
        Q.POWER_L1: _fl(0x801E),
        Q.POWER_L2: _fl(0x8020),
        Q.POWER_L3: _fl(0x8022),
        Q.IMPORT_KWH: Register(0x8100, 3, T.FLOAT32, LITTLE, 0.001),
        Q.EXPORT_KWH: Register(0x8106, 3, T.FLOAT32, LITTLE, 0.001),
    },
    identity=Identity(3, 300, 8, names={"EEM-MA370": "eem_ma370", "MA370": "eem_ma370"}, swapped=True),
    max_gap=8,
)

# Chint DTSU666: holding registers, float32 with fixed scales (V ×0.1, A ×0.001, W ×0.1, Hz ×0.01).
DTSU666 = RegisterMap(
    "dtsu666",
    "Chint DTSU666",
    "CHINT, DTSU666/DSSU666 user manual, 'Communication address table' 2000H-2044H, 401EH, 4028H",
    {
        Q.VOLTAGE_L1: _f(0x2006, 3, 0.1),
        Q.VOLTAGE_L2: _f(0x2008, 3, 0.1),
        Q.VOLTAGE_L3: _f(0x200A, 3, 0.1),
        Q.CURRENT_L1: _f(0x200C, 3, 0.001),
        Q.CURRENT_L2: _f(0x200E, 3, 0.001),
        Q.CURRENT_L3: _f(0x2010, 3, 0.001),
        Q.POWER: _f(0x2012, 3, 0.1),
        Q.POWER_L1: _f(0x2014, 3, 0.1),
        Q.POWER_L2: _f(0x2016, 3, 0.1),
        Q.POWER_L3: _f(0x2018, 3, 0.1),
        Q.FREQUENCY: _f(0x2044, 3, 0.01),
        Q.IMPORT_KWH: _f(0x401E, 3),
        Q.EXPORT_KWH: _f(0x4028, 3),
    },
    max_gap=8,
)

# Schneider Electric iEM3150/3155: holding registers (manual register N = address N-1), float32 in A, V,
# kW, Hz; the energies as float32 kWh (registers 45100/45102). The model name is ASCII at register 50.
IEM3155 = RegisterMap(
    "iem3155",
    "Schneider Electric iEM3155",
    "Schneider Electric, iEM3100/iEM3200/iEM3300 series user manual (DOCA0005EN), Modbus register list",
    {
        Q.CURRENT_L1: _f(2999, 3),
        Q.CURRENT_L2: _f(3001, 3),
        Q.CURRENT_L3: _f(3003, 3),
        Q.VOLTAGE_L1: _f(3027, 3),
        Q.VOLTAGE_L2: _f(3029, 3),
        Q.VOLTAGE_L3: _f(3031, 3),
        Q.POWER_L1: _f(3053, 3, 1000.0),
        Q.POWER_L2: _f(3055, 3, 1000.0),
        Q.POWER_L3: _f(3057, 3, 1000.0),
        Q.POWER: _f(3059, 3, 1000.0),
        Q.FREQUENCY: _f(3109, 3),
        Q.IMPORT_KWH: _f(0xB02B, 3),
        Q.EXPORT_KWH: _f(0xB02D, 3),
    },
    identity=Identity(3, 0x0031, 20, names={"iEM3155": "iem3155", "iEM3150": "iem3155", "iEM3": "iem3155"}),
    max_gap=30,
)

# Orno OR-WE-516/517: holding registers, float32; powers in kW.
ORNO_WE517 = RegisterMap(
    "orno_we517",
    "Orno OR-WE-517",
    "Orno, 'Register description OR-WE-516 & OR-WE-517' (Modbus RTU), 000Eh-0035h, 0100h-0147h",
    {
        Q.VOLTAGE_L1: _f(0x0E, 3),
        Q.VOLTAGE_L2: _f(0x10, 3),
        Q.VOLTAGE_L3: _f(0x12, 3),
        Q.FREQUENCY: _f(0x14, 3),
        Q.CURRENT_L1: _f(0x16, 3),
        Q.CURRENT_L2: _f(0x18, 3),
        Q.CURRENT_L3: _f(0x1A, 3),
        Q.POWER: _f(0x1C, 3, 1000.0),
        Q.POWER_L1: _f(0x1E, 3, 1000.0),
        Q.POWER_L2: _f(0x20, 3, 1000.0),
        Q.POWER_L3: _f(0x22, 3, 1000.0),
        Q.IMPORT_KWH: _f(0x108, 3),
        Q.EXPORT_KWH: _f(0x110, 3),
    },
    max_gap=8,
)

MAPS: dict[str, RegisterMap] = {
    m.model: m
    for m in (
        SDM630,
        SDM72D,
        SDM120,
        ABB_B23,
        EM24,
        EM340,
        PAC2200,
        PRO380,
        FINDER_7M,
        EEM_MA370,
        DTSU666,
        IEM3155,
        ORNO_WE517,
    )
}

# Other names installers use for the same tables.
ALIASES = {
    "sdm72": "sdm72d",
    "abb_b24": "abb_b23",
    "b23": "abb_b23",
    "b24": "abb_b23",
    "et340": "em340",
    "em330": "em340",
    "ex3x0": "em340",
    "finder_7m38": "finder_7m",
    "iem3150": "iem3155",
    "orno_we516": "orno_we517",
    "or-we-517": "orno_we517",
}


def lookup(model: str) -> RegisterMap:
    """The map of a model name (case-insensitive, aliases allowed); KeyError with the choices if unknown."""
    key = model.strip().lower()
    key = ALIASES.get(key, key)
    if key not in MAPS:
        raise KeyError(f"unknown meter model {model!r}; known: {', '.join(sorted(MAPS))}, custom")
    return MAPS[key]
