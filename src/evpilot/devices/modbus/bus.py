"""One Modbus connection per TCP endpoint or serial port, shared by every device on it."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from evpilot.devices.meter import MeterFault

# Reconnect waits double from the first to the cap after each failed connect.
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0

_quiet = logging.getLogger("pymodbus")
# pymodbus logs every timeout at ERROR and deprecation notes at WARNING; the drivers log once per episode.
if _quiet.level == logging.NOTSET:
    _quiet.setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a bus is: a TCP host and port, or a serial port with its line settings."""

    host: str | None = None
    port: int = 502
    serial: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1

    @property
    def rtu(self) -> bool:
        """True for a serial (RTU) bus."""
        return self.serial is not None

    def __str__(self) -> str:
        if self.serial is not None:
            return f"{self.serial} {self.baudrate} 8{self.parity}{self.stopbits}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


class BusError(Exception):
    """A request gave no registers; `fault` says why."""

    def __init__(self, fault: MeterFault, message: str) -> None:
        super().__init__(message)
        self.fault = fault


def crc16(data: bytes) -> int:
    """The Modbus RTU CRC of `data` (as the little-endian integer the frame carries)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


class ModbusBus:
    """A shared client with a lock (one request at a time: RTU is half duplex), timeouts and backoff."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.users = 0
        self.requests = 0
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._rx = bytearray()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx += data
        return data

    def _new_client(self, timeout: float) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        ep = self.endpoint
        if ep.serial is not None:
            return AsyncModbusSerialClient(
                ep.serial,
                framer=FramerType.RTU,
                baudrate=ep.baudrate,
                parity=ep.parity,
                stopbits=ep.stopbits,
                timeout=timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
        assert ep.host is not None
        return AsyncModbusTcpClient(
            ep.host, port=ep.port, timeout=timeout, retries=0, reconnect_delay=0, trace_packet=self._trace
        )

    async def _connected(self, timeout: float) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        client = self._client
        if client is not None and client.connected:
            return client
        now = time.monotonic()
        if now < self._retry_at:
            raise BusError(
                MeterFault.UNREACHABLE,
                f"{self.endpoint}: not connected, next attempt in {self._retry_at - now:.1f} s",
            )
        if client is not None:
            client.close()
        client = self._client = self._new_client(timeout)
        try:
            ok = await asyncio.wait_for(client.connect(), timeout + 1.0)
        except (TimeoutError, OSError) as exc:
            ok = False
            reason = f"{exc.__class__.__name__}: {exc}"
        else:
            reason = "connection refused or port missing"
        if not ok:
            client.close()
            self._client = None
            self._backoff = min(BACKOFF_CAP_S, max(BACKOFF_FIRST_S, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            raise BusError(MeterFault.UNREACHABLE, f"{self.endpoint}: cannot connect ({reason})")
        self._backoff = 0.0
        return client

    async def read(self, unit: int, function: int, address: int, count: int, timeout: float) -> list[int]:
        """`count` registers from `address` (function 3 holding, 4 input) of device `unit`."""
        what = f"{self.endpoint} unit {unit}: read {count} from {address} (fc {function})"

        async def call(client: Any) -> Any:
            if function == 3:
                return await client.read_holding_registers(address, count=count, device_id=unit)
            return await client.read_input_registers(address, count=count, device_id=unit)

        resp = await self._request(what, timeout, call)
        regs = list(resp.registers)
        if len(regs) != count:
            raise BusError(MeterFault.PROTOCOL, f"{what}: {len(regs)} registers in the answer")
        return regs

    async def write(self, unit: int, address: int, values: list[int], timeout: float) -> None:
        """Write `values` to holding registers from `address` of device `unit` (function 6 or 16)."""
        what = f"{self.endpoint} unit {unit}: write {values} at {address}"

        async def call(client: Any) -> Any:
            if len(values) == 1:
                return await client.write_register(address, values[0], device_id=unit)
            return await client.write_registers(address, values, device_id=unit)

        await self._request(what, timeout, call)

    async def _request(self, what: str, timeout: float, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """One request on the shared line: its answer, or a BusError naming the fault."""
        async with self._lock:
            client = await self._connected(timeout)
            client.comm_params.timeout_connect = timeout
            self._rx.clear()
            self.requests += 1
            try:
                resp = await call(client)
            except ModbusIOException as exc:
                if self.endpoint.rtu and self._rx and not _crc_ok(bytes(self._rx)):
                    raise BusError(MeterFault.CRC, f"{what}: CRC error in the answer") from exc
                raise BusError(MeterFault.TIMEOUT, f"{what}: no answer within {timeout:g} s") from exc
            except ConnectionException as exc:
                client.close()
                raise BusError(MeterFault.UNREACHABLE, f"{what}: connection lost ({exc})") from exc
            except ModbusException as exc:
                raise BusError(MeterFault.PROTOCOL, f"{what}: {exc}") from exc
            if resp.isError():
                code = getattr(resp, "exception_code", "?")
                raise BusError(MeterFault.EXCEPTION, f"{what}: exception response, code {code}")
            return resp

    def close(self) -> None:
        """Close the connection (the next read opens it again)."""
        if self._client is not None:
            self._client.close()
            self._client = None


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Endpoint, ModbusBus]] = (
    weakref.WeakKeyDictionary()
)


def acquire(endpoint: Endpoint) -> ModbusBus:
    """The running loop's bus for `endpoint`, shared by every meter on it; pair with `release`."""
    pool = _pools.setdefault(asyncio.get_running_loop(), {})
    bus = pool.get(endpoint)
    if bus is None:
        bus = pool[endpoint] = ModbusBus(endpoint)
    bus.users += 1
    return bus


def release(bus: ModbusBus) -> None:
    """Drop one user of a bus; the last one closes it."""
    bus.users -= 1
    if bus.users > 0:
        return
    bus.close()
    for pool in _pools.values():
        if pool.get(bus.endpoint) is bus:
            del pool[bus.endpoint]
