"""The Modbus server with the ESP32-EVSE firmware's map (100-421): every register read and written by a
pymodbus client over TCP and RTU, and seed 004's Dragino RS485-LN reads decoded with a Python port of
the seed's TTN decoder, compared with `GET /api/v1/state` and `/api/v1/info`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from evpilot import __version__
from evpilot.control.runtime import Runtime
from evpilot.core.charger import ErrorFlag
from tests.helpers import free_port, make_config, serve
from tests.integration.modbus_helpers import FreezableClock, client, crc16, rtu_line

# The firmware's error bits (seed 004's firmware, evse.h), and evpilot's own ev_not_stopping.
FIRMWARE_ERROR_BITS = {
    "pilot_fault": 0,
    "diode_short": 1,
    "lock_fault": 2,
    "unlock_fault": 3,
    "rcm_triggered": 4,
    "rcm_selftest_fault": 5,
    "temperature_high": 6,
    "temperature_fault": 7,
    "ev_not_stopping": 8,
}
# Seed 004's Dragino configuration: the command (CRC appended, ", 1") and its DATACUT.
DRAGINO = [
    ("01 03 00 64 00 04", "13,2,4~9+11~11"),
    ("01 03 00 c8 00 03", "11,2,4~9"),
    ("01 03 00 cf 00 0c", "29,2,4~27"),
    ("01 03 01 90 00 04", "13,2,4~7+10~11"),
]
PAYLOAD_VERSION = 1  # AT+PAYVER=1: the uplink's first byte


def decode_uplink(data: bytes) -> dict[str, Any]:
    """Seed 004's TTN `decodeUplink`, ported: JavaScript's `<<` yields signed 32-bit integers."""

    def int32(value: int) -> int:
        value &= 0xFFFFFFFF
        return value - (1 << 32) if value & 0x80000000 else value

    def uint32(idx: int) -> int:
        return int32(data[idx] << 24 | data[idx + 1] << 16 | data[idx + 2] << 8 | data[idx + 3])

    def uint16(idx: int) -> int:
        return int32(data[idx] << 8 | data[idx + 1])

    def to_sint16(value: int) -> int:
        if value & (1 << 15):
            value = ((~value) & 0xFFFF) + 1
            value = value * -1
        return value

    return {
        "state": chr(data[1]) + (chr(data[2]) if data[2] > 0 else ""),
        "errors": uint32(3),
        "enabled": data[7] == 1,
        "power": uint16(8),
        "consumption": uint32(10),
        "voltage": [uint32(14) / 1000, uint32(18) / 1000, uint32(22) / 1000],
        "current": [uint32(26) / 1000, uint32(30) / 1000, uint32(34) / 1000],
        "uptime": uint32(38),
        "temperature": to_sint16(uint16(42)) / 100,
    }


def datacut(response: bytes, spec: str) -> bytes:
    """The Dragino's AT+DATACUT: check the response length, keep the 1-based inclusive byte ranges."""
    length, _, ranges = spec.split(",")
    assert len(response) == int(length), (response.hex(" "), spec)
    out = b""
    for part in ranges.split("+"):
        first, _, last = part.partition("~")
        out += response[int(first) - 1 : int(last or first)]
    return out


async def rtu_exchange(port: str, command: str, length: int) -> bytes:
    """Send one raw RTU request (CRC appended) on a serial device and read `length` bytes back."""
    frame = bytes.fromhex(command)
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        os.write(fd, frame + crc16(frame))
        got = b""
        for _ in range(300):
            with contextlib.suppress(BlockingIOError):
                got += os.read(fd, 256)
            if len(got) >= length:
                break
            await asyncio.sleep(0.01)
        assert crc16(got[:-2]) == got[-2:], got.hex(" ")
        return got
    finally:
        os.close(fd)


def modbus_config(modbus: dict[str, Any]) -> Any:
    return make_config(
        {
            "chargers": [{"id": "cp1", "phases": 3, "max_current": 32, "fixed_cable": False}],
            "modbus": {"map": "esp32evse", "allow_writes": True, **modbus},
        }
    )


@contextlib.asynccontextmanager
async def running(kind: str) -> AsyncIterator[tuple[str, Runtime, FreezableClock, Any, str]]:
    """evpilot (ESP32-EVSE map) with a charging simulated car, the clock frozen, and a client."""
    clock = FreezableClock(20)
    async with contextlib.AsyncExitStack() as stack:
        if kind == "tcp":
            port = free_port()
            modbus: dict[str, Any] = {"port": port}
            where: Any = port
        else:
            line = await stack.enter_async_context(rtu_line())
            modbus = {"serial": line.server_port, "baudrate": 9600}
            where = line.client_port
        base, rt = await stack.enter_async_context(serve(modbus_config(modbus), clock=clock))
        for _ in range(400):
            ch = rt.charger("cp1")
            if ch.work_state().value == "charger_charging" and ch.session and ch.session.energy_kwh > 0:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("cp1 never started charging")
        await asyncio.sleep(0.2)
        clock.freeze()
        await asyncio.sleep(0.05)
        c = None if kind == "raw" else await stack.enter_async_context(client(kind, where, 9600))
        yield base, rt, clock, c, (where if kind != "tcp" else "")


def u32(words: list[int]) -> int:
    return words[0] << 16 | words[1]


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
async def test_every_register_reads_and_writes(kind: str) -> None:
    async with running(kind) as (base, rt, _, c, _):
        async with httpx.AsyncClient(base_url=base) as http:
            state = (await http.get("/api/v1/state")).json()
            info = (await http.get("/api/v1/info")).json()
        regs: dict[int, int] = {}
        for first, count in ((100, 13), (200, 19), (300, 18), (400, 22)):
            r = await c.read_holding_registers(first, count=count, device_id=1)
            assert not r.isError(), (first, r)
            regs.update({first + i: w for i, w in enumerate(r.registers)})
        word = regs[100]
        assert chr(word >> 8) + (chr(word & 0xFF) if word & 0xFF else "") == state["state"] == "C2"
        assert u32([regs[101], regs[102]]) == 0 and state["errors"] is None
        assert [regs[103], regs[104], regs[105]] == [
            state["enabled"],
            state["available"],
            state["pendingAuth"],
        ]
        assert regs[106] == round(state["chargingCurrent"] * 10)
        assert u32([regs[107], regs[108]]) == state["consumptionLimit"]
        assert u32([regs[109], regs[110]]) == state["chargingTimeLimit"]
        assert regs[111] == state["underPowerLimit"]
        assert regs[200] == state["power"] > 0
        assert u32([regs[201], regs[202]]) == state["sessionTime"] > 0
        assert u32([regs[203], regs[204]]) == state["chargingTime"]
        assert u32([regs[205], regs[206]]) == round(state["consumption"] / 3600)  # Wh
        for i in range(3):
            assert u32([regs[207 + 2 * i], regs[208 + 2 * i]]) == round(state["voltage"][i] * 1000)
            assert u32([regs[213 + 2 * i], regs[214 + 2 * i]]) == round(state["current"][i] * 1000)
        assert [regs[300], regs[301], regs[302], regs[303], regs[304]] == [1, 1, 65, 0, 32]
        assert regs[305] == round(state["chargingCurrent"] * 10)
        assert regs[317] == 1
        assert u32([regs[400], regs[401]]) == info["uptime"]
        assert regs[403] == round(info["temperatureHigh"] * 100)
        assert regs[404] == 1
        text = b"".join(regs[a].to_bytes(2, "big") for a in range(405, 421)).rstrip(b"\0").decode()
        assert text == __version__
        for address in (99, 113, 199, 219, 299, 318, 422):
            r = await c.read_holding_registers(address, count=1, device_id=1)
            assert r.isError() and r.exception_code == 2, address
        r = await c.read_holding_registers(110, count=5, device_id=1)
        assert r.isError() and r.exception_code == 2

        ch = rt.charger("cp1")

        async def ok(address: int, values: list[int]) -> None:
            r = await c.write_registers(address, values, device_id=1)
            assert not r.isError(), (address, values, r)

        await ok(106, [105])
        assert ch.user_limit == 10.5
        await ok(107, [0x0001, 0x0000])  # 65536 Ws
        assert ch.energy_cap_kwh == pytest.approx(65536 / 3_600_000)
        await ok(109, [0, 3600])
        assert ch.time_cap_min == 60
        await ok(111, [500])
        assert ch.under_power_w == 500
        await ok(103, [0])
        assert not ch.enabled
        await ok(103, [1, 0])  # enabled and available together
        assert ch.enabled and not ch.available
        # One typed command per register, logged with the map's origin.
        assert [(c["origin"], c["command"], c["fields"]) for c in list(rt.recent_commands)[-2:]] == [
            ("modbus:esp32evse", "set_enabled", {"charger": "cp1", "enabled": True}),
            ("modbus:esp32evse", "set_available", {"charger": "cp1", "available": False}),
        ]
        await ok(104, [1])
        assert ch.available
        ch.set_authorized(False)
        await ok(112, [1])
        assert ch.authorized
        ch.errors.add(ErrorFlag.DIODE_SHORT)
        await ok(421, [1])
        assert not ch.faulted
        r = await c.read_holding_registers(106, count=6, device_id=1)
        assert r.registers == [105, 1, 0, 0, 3600, 500]

        before = (ch.enabled, ch.available, ch.user_limit, ch.energy_cap_kwh, ch.time_cap_min)
        for address, values, code in (
            (103, [2], 3),
            (106, [59], 3),
            (106, [321], 3),
            (107, [1], 2),
            (108, [1], 2),
            (109, [0xFFFF, 0xFFFF], 3),
            (112, [0], 3),
            (421, [2], 3),
            (100, [0], 2),
            (113, [0], 2),
            (200, [0], 2),
            (300, [0], 2),
            (103, [0, 5], 3),  # all or nothing: 103 stays enabled
        ):
            r = await c.write_registers(address, values, device_id=1)
            assert r.isError() and r.exception_code == code, (address, values, r)
            assert (ch.enabled, ch.available, ch.user_limit, ch.energy_cap_kwh, ch.time_cap_min) == before
        assert rt.recent_commands[-1]["command"] == "reset_faults"  # refused writes logged nothing


async def test_dragino_reads_decode_to_the_rest_state() -> None:
    """Seed 004's four Dragino commands over RTU, its DATACUTs and TTN decoder: the values REST reports.

    The decoder's `consumption` reads 201-202, which the firmware's map fills with the session time:
    it decodes to `sessionTime`, not to `consumption` (the map is kept as the firmware has it).
    """
    async with running("raw") as (base, _rt, clock, _, port), httpx.AsyncClient(base_url=base) as http:
        for _ in range(2):  # once as it is, once after the clock moved on
            payload = bytes([PAYLOAD_VERSION])
            for command, cut in DRAGINO:
                length = int(cut.split(",")[0])
                payload += datacut(await rtu_exchange(port, command, length), cut)
            assert len(payload) == 44
            decoded = decode_uplink(payload)
            state = (await http.get("/api/v1/state")).json()
            info = (await http.get("/api/v1/info")).json()
            bits = sum(1 << FIRMWARE_ERROR_BITS[e] for e in state["errors"] or [])
            assert decoded == {
                "state": state["state"],
                "errors": bits,
                "enabled": state["enabled"],
                "power": state["power"],
                "consumption": state["sessionTime"],
                "voltage": state["voltage"],
                "current": state["current"],
                "uptime": info["uptime"],
                "temperature": info["temperatureHigh"],
            }
            assert decoded["state"] == "C2" and decoded["power"] > 0
            clock.run(20)
            await asyncio.sleep(0.3)
            clock.freeze()
            await asyncio.sleep(0.05)
