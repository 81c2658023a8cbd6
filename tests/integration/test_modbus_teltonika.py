"""The Modbus server with seed 003's Teltonika map: every register read and written by a real pymodbus
client over TCP and over an RTU line of two pseudo-terminals; the bad-write table; the watchdog."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient, ModbusTcpClient

from evpilot import __version__
from evpilot.control.runtime import Runtime
from evpilot.sim.ev import CarSpec
from tests.helpers import evpilot_process, free_port, make_config, serve
from tests.integration.modbus_helpers import FreezableClock, client, rtu_line

UNITS = {"cp1": 3, "cp2": 5}
CHARGERS = [
    # 3-phase, its L1 on mains L2, with a second contactor (can switch to 1 phase) and a cable lock.
    {
        "id": "cp1",
        "phases": 3,
        "phase_rotation": "L2L3L1",
        "contactor2": "auto",
        "max_current": 32,
        "fixed_cable": False,
        "lock": "solenoid",
    },
    # 1-phase on mains L3.
    {"id": "cp2", "phases": 1, "phase": 3, "max_current": 16},
]
# Seed 003's codes as the tests expect them.
STATUS_C, STATUS_A = 0, 7
CP_NO_EV, CP_CHARGING = 0, 3
IEC_A, IEC_C2 = 0, 4
LIMIT_CAUSE = {"max": 0, "mains": 1, "user": 2, "override": 2, "cable": 3, "temperature": 7}


def config(modbus: dict[str, Any]) -> Any:
    """Two chargers, a simulated car on cp1, the Modbus server as given."""
    return make_config(
        {
            "chargers": CHARGERS,
            "sim": {"cars": [{"charger": "cp1"}]},
            "modbus": {"units": UNITS, **modbus},
        }
    )


@contextlib.asynccontextmanager
async def running(kind: str, allow_writes: bool = True) -> AsyncIterator[tuple[Runtime, FreezableClock, Any]]:
    """evpilot with its Modbus server on TCP or RTU and a connected client; cp1 charging, clock frozen."""
    clock = FreezableClock(20)
    async with contextlib.AsyncExitStack() as stack:
        if kind == "tcp":
            port = free_port()
            modbus: dict[str, Any] = {"port": port, "allow_writes": allow_writes}
            where: Any = port
        else:
            line = await stack.enter_async_context(rtu_line())
            modbus = {"serial": line.server_port, "baudrate": 38400, "allow_writes": allow_writes}
            where = line.client_port
        _, rt = await stack.enter_async_context(serve(config(modbus), clock=clock))
        c = await stack.enter_async_context(client(kind, where, 38400))
        for _ in range(1000):
            ch = rt.charger("cp1")
            # Charging for a few seconds: non-zero energy (0.01 kWh) and session time.
            if ch.work_state().value == "charger_charging" and ch.session and ch.session.energy_kwh >= 0.01:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("cp1 never started charging")
        clock.freeze()
        await asyncio.sleep(0.05)
        yield rt, clock, c


async def read_all(c: Any, unit: int) -> list[int]:
    r = await c.read_holding_registers(0, count=45, device_id=unit)
    assert not r.isError(), r
    return list(r.registers)


def s16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def mains(values: tuple[float, float, float], first: int, wired: int) -> list[float]:
    """A charger's L1..L3 values placed on the mains phases (its L1 on mains index `first`)."""
    out = [0.0, 0.0, 0.0]
    for i in range(wired):
        out[(first + i) % 3] = values[i]
    return out


def check_registers(rt: Runtime, cid: str, regs: list[int]) -> None:
    """Every register against the runtime, in seed 003's meanings and scales."""
    ch = rt.charger(cid)
    cfg = ch.config
    first = cfg.phase - 1 if cfg.phases == 1 else 1  # cp1's rotation L2L3L1 puts its L1 on mains L2
    now = rt.clock.now()
    assert [s16(w) for w in regs[0:3]] == [round(v) for v in mains(ch.voltages, first, cfg.phases)]
    assert [s16(w) for w in regs[3:6]] == [round(a * 10) for a in mains(ch.currents, first, cfg.phases)]
    session = ch.session
    if cid == "cp1":
        assert session is not None
        assert regs[6] == STATUS_C
        assert regs[27] == CP_CHARGING
        assert regs[33] == IEC_C2
        assert regs[30] == 1  # plugged and authorized: the lock closed (its feedback)
        assert regs[17] == 1  # authorized
    else:
        assert session is None
        assert regs[6] == STATUS_A
        assert regs[27] == CP_NO_EV
        assert regs[33] == IEC_A
        assert regs[30] == 0  # no lock
        assert regs[17] == 0
    status_time = regs[7] | regs[8] << 16
    assert 0 <= status_time <= (now - rt.started_at) + 1
    assert regs[9] == 21571
    assert regs[10] == (1 if cfg.phases == 3 else 0)
    assert regs[11] == (1 if cid == "cp1" else 0)
    assert regs[12] == cfg.max_current
    assert regs[13] == (6 if cfg.phases == 3 else first)
    assert regs[14] == (6 if ch.active_phases == 3 and cfg.phases == 3 else first)
    assert regs[15] == cfg.max_current  # no lease: the amp limit
    assert regs[16] == 0
    assert regs[18:22] == [0, 30, 6, 0]
    assert regs[22] == 0
    assert regs[23] == 1234
    serial = regs[24] | regs[25] << 16
    assert 0 < serial < 1_000_000_000
    major, minor, patch = (int(p) for p in __version__.split(".")[:3])
    assert regs[26] == major * 10000 + minor * 100 + patch
    assert regs[28] == rt.engine.site.mains_limit
    assert regs[29] == cfg.max_current
    assert s16(regs[31]) == round(ch.temperature * 10)
    assert regs[32] == 0
    assert regs[34] == 0 and regs[35] == 0
    binding = ch.available_source if ch.available_current < ch.allocated else ch.allocation_source
    assert regs[36] == LIMIT_CAUSE.get(str(binding).partition(":")[0], 6 if cid == "cp1" else regs[36])
    assert regs[37] == (0 if cfg.phases == 1 else 2)
    assert regs[38] == round(ch.power_w)
    if session is not None:
        assert regs[39] == round(session.energy_kwh * 100) > 0
        assert regs[40] == round(session.duration_s(now)) > 0
    else:
        assert regs[39] == regs[40] == 0
    lifetime = sum(w << (16 * i) for i, w in enumerate(regs[41:45]))
    assert lifetime == round(ch.lifetime_kwh * 100)


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
async def test_every_register_reads_as_the_seed_says(kind: str) -> None:
    async with running(kind) as (rt, clock, c):
        for cid, unit in UNITS.items():
            regs = await read_all(c, unit)
            check_registers(rt, cid, regs)
            # One register at a time reads the same words.
            for address in range(45):
                r = await c.read_holding_registers(address, count=1, device_id=unit)
                assert r.registers == [regs[address]], address
        # Reads past the map are refused with exception 02.
        r = await c.read_holding_registers(40, count=6, device_id=3)
        assert r.isError() and r.exception_code == 2
        # The status time counts in the runtime's clock.
        before = await read_all(c, 3)
        clock.run(20)
        await asyncio.sleep(0.3)
        clock.freeze()
        after = await read_all(c, 3)
        assert (after[7] | after[8] << 16) > (before[7] | before[8] << 16)
        assert after[40] > before[40]


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
async def test_every_writable_register_writes(kind: str) -> None:
    async with running(kind) as (rt, _clock, c):
        ch = rt.charger("cp1")

        async def write(address: int, value: int, unit: int = 3) -> list[int]:
            r = await c.write_register(address, value, device_id=unit)
            assert not r.isError(), (address, value, r)
            await asyncio.sleep(0.05)
            return await read_all(c, unit)

        regs = await write(15, 10)
        assert regs[15] == 10 and ch.leases["modbus"].value == 10
        assert rt.charger_doc("cp1")["current"]["available"] == 10
        regs = await write(15, 0)
        assert regs[15] == 0 and ch.commanded == 0
        regs = await write(15, 16)
        regs = await write(14, 1)  # mains L2: cp1's L1, the 1-phase switch
        assert ch.phase_mode == "always_1p"
        regs = await write(14, 6)
        assert ch.phase_mode == "always_3p" and regs[14] in (1, 6)
        regs = await write(16, 1)
        assert ch.paused and regs[16] == 1 and ch.commanded == 0
        regs = await write(16, 2)
        assert not ch.paused and ch.start_requested and regs[16] == 2
        regs = await write(16, 0)
        assert regs[16] == 0 and not ch.paused
        ch.set_authorized(False)
        regs = await write(17, 1)
        assert ch.authorized and regs[17] == 1
        regs = await write(18, 2)
        assert regs[18] == 2 and rt.access.of("cp1").lock_setting.value == "force_unlock"
        regs = await write(18, 1)
        assert regs[18] == 1 and rt.access.of("cp1").lock_setting.value == "always"
        regs = await write(19, 120)
        assert regs[19] == 120
        regs = await write(20, 0)
        assert regs[20] == 0
        regs = await write(20, 32)
        assert regs[20] == 32
        regs = await write(21, 1)  # reboot: the primary's settings back to their defaults
        assert regs[18:22] == [0, 30, 6, 0] and "modbus" not in ch.leases and regs[15] == 32
        # A multi-register write: 14-20 in one request.
        r = await c.write_registers(14, [6, 12, 0, 1, 0, 45, 8], device_id=3)
        assert not r.isError(), r
        regs = await read_all(c, 3)
        assert regs[14:21] == [6, 12, 0, 1, 0, 45, 8]
        # cp2 (unit 5) takes its own phase and amps.
        regs = await write(14, 2, unit=5)
        assert regs[14] == 2
        regs = await write(15, 8, unit=5)
        assert rt.charger("cp2").leases["modbus"].value == 8 and "modbus" in ch.leases


async def registers_until(c: Any, check: Any, what: str) -> list[int]:
    """Read unit 3 until `check(registers)` holds (fails after 10 s of real time)."""
    regs: list[int] = []
    for _ in range(500):
        regs = await read_all(c, 3)
        if check(regs):
            return regs
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: registers 18, 30 are {regs[18]}, {regs[30]}")


async def test_register_18_drives_the_cable_lock_and_30_reports_it() -> None:
    async with running("tcp") as (rt, clock, c):
        ch = rt.charger("cp1")
        hw = rt.access.of("cp1").actuator
        assert hw is not None
        regs = await read_all(c, 3)
        assert regs[18] == 0 and regs[30] == 1 and hw.position is True  # auto: locked while charging
        clock.run(20)
        # Force unlock: charging is held at 0 A, then the lock opens once no current flows.
        assert not (await c.write_register(18, 2, device_id=3)).isError()
        regs = await registers_until(c, lambda r: r[30] == 0, "forced unlock")
        assert regs[18] == 2 and not ch.contactor and hw.position is False
        assert rt.charger_doc("cp1")["limit_source"] == "lock"
        assert rt.access.of("cp1").lock.state.value == "unlocked"
        assert {
            "origin": "modbus:teltonika",
            "command": "set_cable_lock",
            "fields": {"charger": "cp1", "setting": "force_unlock"},
        }.items() <= next(d for d in rt.recent_commands if d["command"] == "set_cable_lock").items()
        # The socket is free: the setting goes back to auto.
        rt.sim_unplug("cp1")
        await registers_until(c, lambda r: r[18] == 0 and r[30] == 0, "back to auto once unplugged")
        # Always lock: locked with no car at all; auto again: open.
        assert not (await c.write_register(18, 1, device_id=3)).isError()
        await registers_until(c, lambda r: r[18] == 1 and r[30] == 1, "always locked")
        assert hw.position is True and not ch.plugged
        assert not (await c.write_register(18, 0, device_id=3)).isError()
        await registers_until(c, lambda r: r[18] == 0 and r[30] == 0, "auto with no car: open")
        # Auto with a car: locked again, and charging only once locked.
        rt.sim_plug("cp1", CarSpec())
        await registers_until(c, lambda r: r[30] == 1 and r[6] == STATUS_C, "locked and charging")
        # A jammed lock opened while charging: the fault stops charging and 30 shows it open.
        hw.jammed = True
        hw.position = False
        regs = await registers_until(c, lambda r: r[30] == 0 and r[6] != STATUS_C, "lock fault")
        assert rt.access.of("cp1").lock.fault == "lock opened while locked"


def state_of(rt: Runtime) -> dict[str, Any]:
    ch = rt.charger("cp1")
    return {
        "leases": {k: (v.value, v.expires_at) for k, v in ch.leases.items()},
        "paused": ch.paused,
        "start": ch.start_requested,
        "phase_mode": ch.phase_mode,
        "authorized": ch.authorized,
    }


# (address, values, exception code): out of range -> 03, read-only or unknown -> 02.
BAD_WRITES = [
    (15, [5], 3),
    (15, [33], 3),
    (15, [65535], 3),
    (14, [8], 3),
    (14, [3], 3),  # L1/L2: evpilot cannot run on two phases
    (14, [0], 3),  # mains L1: cp1's L1 is on mains L2
    (14, [7], 3),  # none
    (16, [3], 3),
    (17, [2], 3),
    (18, [3], 3),
    (19, [601], 3),
    (20, [5], 3),
    (20, [33], 3),
    (21, [2], 3),
    (0, [230], 2),
    (13, [1], 2),
    (22, [0], 2),
    (36, [0], 2),
    (44, [0], 2),
    (45, [0], 2),
    (1000, [0], 2),
    # All or nothing: one bad register refuses the whole write.
    (14, [6, 16, 0, 0, 0, 60, 8, 0, 0], 2),  # runs into 22 (read-only)
    (15, [16, 0, 0, 0, 60, 5], 3),  # failsafe 5 A
    (19, [60, 6, 0, 0], 2),  # runs into 22
    (43, [0, 0, 0], 2),
]


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
async def test_bad_writes_change_nothing(kind: str) -> None:
    async with running(kind) as (rt, _clock, c):
        regs = await read_all(c, 3)
        state = state_of(rt)
        for address, values, code in BAD_WRITES:
            if len(values) == 1:
                r = await c.write_register(address, values[0], device_id=3)
            else:
                r = await c.write_registers(address, values, device_id=3)
            assert r.isError() and r.exception_code == code, (address, values, r)
            assert await read_all(c, 3) == regs, (address, values)
            assert state_of(rt) == state, (address, values)


async def test_writes_refused_unless_allowed_reads_work() -> None:
    async with running("tcp", allow_writes=False) as (rt, _clock, c):
        regs = await read_all(c, 3)
        check_registers(rt, "cp1", regs)
        for address, value in ((15, 10), (19, 60), (21, 1)):
            r = await c.write_register(address, value, device_id=3)
            assert r.isError() and r.exception_code == 1
        r = await c.write_registers(14, [6, 10], device_id=3)
        assert r.isError() and r.exception_code == 1
        assert await read_all(c, 3) == regs and "modbus" not in rt.charger("cp1").leases


async def test_unknown_unit_is_refused_on_tcp() -> None:
    async with running("tcp") as (_rt, _clock, c):
        r = await c.read_holding_registers(0, count=1, device_id=9)
        assert r.isError() and r.exception_code == 0x0B  # gateway target failed to respond


async def test_watchdog_over_tcp_in_the_runtime_clock() -> None:
    """No valid request for the timeout: the failsafe current; valid requests again: control is back."""
    clock = FreezableClock(10)
    port = free_port()
    async with serve(config({"port": port, "allow_writes": True}), clock=clock) as (_, rt):
        c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
        assert await c.connect()
        try:
            ch = rt.charger("cp1")
            assert not (await c.write_registers(19, [20, 8], device_id=3)).isError()  # 20 s, 8 A
            assert not (await c.write_register(15, 16, device_id=3)).isError()
            last = rt.clock.now()
            # cp2 (unit 5) is polled all along: its watchdog never trips.
            tripped_at = None
            for _ in range(1000):
                assert not (await c.read_holding_registers(0, count=1, device_id=5)).isError()
                if "modbus_failsafe" in ch.leases:
                    tripped_at = rt.clock.now()
                    break
                await asyncio.sleep(0.01)
            assert tripped_at is not None, "the watchdog never tripped"
            # Clock time, not wall time: at 10x the 20 s lapse in about 2 s of wall time.
            assert 19.5 <= tripped_at - last <= 20 + 5
            assert ch.leases["modbus_failsafe"].value == 8
            assert "modbus" not in ch.leases  # amps to use ended
            tripped = [(c["origin"], c["fields"]["name"], c["fields"]["amps"]) for c in rt.recent_commands]
            assert tripped[-2:] == [
                ("modbus:teltonika", "modbus", None),
                ("modbus:teltonika", "modbus_failsafe", 8.0),
            ]
            assert "modbus_failsafe" not in rt.charger("cp2").leases
            for _ in range(200):
                if rt.charger_doc("cp1")["limit_source"] == "modbus_failsafe":
                    break
                await asyncio.sleep(0.02)
            assert rt.charger_doc("cp1")["current"]["commanded"] <= 8
            # A valid request ends the failsafe; amps to use stays ended until written again.
            regs = (await c.read_holding_registers(0, count=45, device_id=3)).registers
            assert "modbus_failsafe" not in ch.leases and regs[15] == 32
            assert not (await c.write_register(15, 10, device_id=3)).isError()
            assert ch.leases["modbus"].value == 10
            # A refused request is not valid communication: the watchdog trips through it.
            last = rt.clock.now()
            for _ in range(1000):
                await c.write_register(15, 99, device_id=3)
                if "modbus_failsafe" in ch.leases:
                    break
                await asyncio.sleep(0.01)
            assert "modbus_failsafe" in ch.leases and rt.clock.now() - last >= 19.5
        finally:
            c.close()


def test_cli_modbus_flag_serves_the_teltonika_map(tmp_path: Path) -> None:
    """`evpilot run --modbus HOST:PORT` starts the server (reads work; writes need allow_writes)."""
    port = free_port()
    with evpilot_process(tmp_path, extra=["--modbus", f"127.0.0.1:{port}"]):
        c = ModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
        assert c.connect()
        try:
            r = c.read_holding_registers(9, count=1, device_id=1)
            assert r.registers == [21571]
            r = c.write_register(15, 10, device_id=1)
            assert r.isError() and r.exception_code == 1
        finally:
            c.close()


def test_a_serial_device_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "ttyNOPE"
    with (
        pytest.raises(RuntimeError, match=f"Modbus: cannot listen on {missing}"),
        evpilot_process(tmp_path, config={"modbus": {"serial": str(missing)}}),
    ):
        pass
