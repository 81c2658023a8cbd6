"""Modbus test plumbing: a clock that can be stopped, an RTU line made of two pseudo-terminals, CRC-16."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from collections.abc import AsyncIterator
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from evpilot.control.clock import ScaledClock


class FreezableClock(ScaledClock):
    """A scaled wall clock that `freeze()` stops where it is (ticks then repeat the same instant)."""

    def freeze(self) -> None:
        """Stop the clock at the current time."""
        self._t0 = self.now()
        self._m0 = time.monotonic()
        self.speed = 1e-9

    def run(self, speed: float) -> None:
        """Run on from the current time at `speed`."""
        self._t0 = self.now()
        self._m0 = time.monotonic()
        self.speed = speed


class RtuLine:
    """Two pseudo-terminals joined back to back: whatever is written on one end's device reaches the other.

    The server opens `server_port`, the client `client_port`; a relay copies the bytes between the
    two master sides, as an RS485 pair of adapters would.
    """

    def __init__(self) -> None:
        self._m1, self._s1 = os.openpty()
        self._m2, self._s2 = os.openpty()
        for fd in (self._m1, self._s1, self._m2, self._s2):
            tty.setraw(fd)
        self.server_port = os.ttyname(self._s1)
        self.client_port = os.ttyname(self._s2)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start relaying in the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._m1, self._copy, self._m1, self._m2)
        self._loop.add_reader(self._m2, self._copy, self._m2, self._m1)

    @staticmethod
    def _copy(src: int, dst: int) -> None:
        with contextlib.suppress(OSError):
            os.write(dst, os.read(src, 4096))

    def close(self) -> None:
        """Stop relaying and close all four descriptors."""
        if self._loop is not None:
            self._loop.remove_reader(self._m1)
            self._loop.remove_reader(self._m2)
        for fd in (self._m1, self._s1, self._m2, self._s2):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.asynccontextmanager
async def rtu_line() -> AsyncIterator[RtuLine]:
    """An RTU line for one test."""
    line = RtuLine()
    line.start()
    try:
        yield line
    finally:
        line.close()


@contextlib.asynccontextmanager
async def client(kind: str, where: Any, baudrate: int = 9600) -> AsyncIterator[Any]:
    """A connected pymodbus client: `tcp` to port `where` on 127.0.0.1, or `rtu` on serial device `where`."""
    c: AsyncModbusTcpClient | AsyncModbusSerialClient
    if kind == "tcp":
        c = AsyncModbusTcpClient("127.0.0.1", port=where, timeout=3, retries=0)
    else:
        c = AsyncModbusSerialClient(where, baudrate=baudrate, timeout=3, retries=0)
    assert await c.connect()
    try:
        yield c
    finally:
        c.close()


def crc16(frame: bytes) -> bytes:
    """Modbus RTU CRC-16 (polynomial 0xA001, initial 0xFFFF), low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes([crc & 0xFF, crc >> 8])
