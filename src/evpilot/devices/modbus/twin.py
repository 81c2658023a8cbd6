"""Simulated twins: real pymodbus servers whose registers follow values set from the simulator's physics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Protocol

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from evpilot.devices.modbus.registers import CURRENTS, POWERS, VOLTAGES, Quantity, RegisterMap


class TwinFault(StrEnum):
    """A fault a twin can be told to show."""

    NONE = "none"
    SILENT = "silent"  # no answer at all: the client times out
    EXCEPTION = "exception"  # a Modbus exception response (device failure)
    CRC = "crc"  # RTU only: the answer's CRC is wrong


class MeterTwin:
    """One simulated meter: per-phase values encoded through its model's register map."""

    def __init__(self, regmap: RegisterMap, identity: int | str | None = None) -> None:
        self.map = regmap
        self.fault = TwinFault.NONE
        self.reads = 0
        self._words: dict[tuple[int, int], int] = {}
        self._ranges = [(b.function, b.address, b.address + b.count) for b in regmap.blocks]
        ident = regmap.identity
        if ident is not None:
            self._ranges.append((ident.function, ident.address, ident.address + ident.count))
            if identity is None:
                # The code or name the model itself shows (the first of those that name it).
                own = [c for c, m in ident.codes.items() if m == regmap.model]
                own_names = [n for n, m in ident.names.items() if m == regmap.model]
                identity = own[0] if own else (own_names[0] if own_names else None)
            if isinstance(identity, int):
                self._words[(ident.function, ident.address)] = identity
            elif isinstance(identity, str):
                for i, word in enumerate(ident.words(identity)):
                    self._words[(ident.function, ident.address + i)] = word

    def set(
        self,
        currents: Sequence[float],
        voltages: Sequence[float] = (230.0, 230.0, 230.0),
        powers: Sequence[float] | None = None,
        import_kwh: float = 0.0,
        export_kwh: float = 0.0,
        frequency: float = 50.0,
    ) -> None:
        """Set per-phase currents (A, + import), voltages, powers (W; V·I if None) and counters."""
        if powers is None:
            powers = [v * i for v, i in zip(voltages, currents, strict=False)]
        values: dict[Quantity, float] = {
            Quantity.POWER: float(sum(powers[: self.map.phases])),
            Quantity.IMPORT_KWH: import_kwh,
            Quantity.EXPORT_KWH: export_kwh,
            Quantity.FREQUENCY: frequency,
        }
        for n in range(min(self.map.phases, len(currents))):
            # The meters report current magnitudes unless their map says otherwise.
            values[CURRENTS[n]] = currents[n] if self.map.currents_signed else abs(currents[n])
            values[VOLTAGES[n]] = voltages[n]
            values[POWERS[n]] = powers[n]
        self.set_values(values)

    def set_values(self, values: Mapping[Quantity, float]) -> None:
        """Encode quantities straight into the registers (non-finite values included)."""
        self._words.update(self.map.encode(values))

    def set_raw(self, function: int, words: Mapping[int, int]) -> None:
        """Put raw register words (address → word), e.g. a recorded block."""
        for address, word in words.items():
            self._words[(function, address)] = word & 0xFFFF

    def read(self, function: int, address: int, count: int) -> list[int] | ExcCodes:
        """What the meter answers to a read (illegal address outside its register blocks)."""
        end = address + count
        if not any(fc == function and lo <= address and end <= hi for fc, lo, hi in self._ranges):
            return ExcCodes.ILLEGAL_ADDRESS
        self.reads += 1
        return [self._words.get((function, a), 0) for a in range(address, end)]


class _TwinContext(ModbusServerContext):
    """The server's datastore: each unit id answered by its twin."""

    def __init__(self, twins: Mapping[int, MeterTwin]) -> None:
        # The parent's constructor wants pymodbus' own datastores; this context answers reads itself.
        self.twins = twins
        self.old_simulator = True
        self.simdevices = []

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        twin = self.twins.get(device_id)
        if twin is None or twin.fault is TwinFault.SILENT:
            raise NoSuchIdException(f"no twin at unit {device_id}")
        if twin.fault is TwinFault.EXCEPTION:
            return ExcCodes.DEVICE_FAILURE
        if func_code not in (3, 4):
            return ExcCodes.ILLEGAL_FUNCTION
        return twin.read(func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_FUNCTION

    def device_ids(self) -> list[int]:
        return list(self.twins)


class PtyPair:
    """Two pseudo-terminals joined back to back: what one end writes, the other reads (a null modem)."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        self.paths: tuple[str, str] = ("", "")
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> tuple[str, str]:
        """Open both terminals and start relaying; the two device paths."""
        ends = [os.openpty(), os.openpty()]
        for master, slave in ends:
            tty.setraw(slave)
            os.set_blocking(master, False)
        self._fds = [fd for pair in ends for fd in pair]
        self._loop = asyncio.get_running_loop()
        (m1, s1), (m2, s2) = ends
        self._loop.add_reader(m1, self._relay, m1, m2)
        self._loop.add_reader(m2, self._relay, m2, m1)
        self.paths = (os.ttyname(s1), os.ttyname(s2))
        return self.paths

    @staticmethod
    def _relay(src: int, dst: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            data = os.read(src, 4096)
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(dst, view) :]
                except BlockingIOError:
                    continue

    def close(self) -> None:
        """Stop relaying and close every descriptor."""
        if self._loop is not None and self._fds:
            for fd in (self._fds[0], self._fds[2]):
                self._loop.remove_reader(fd)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


class TwinServer:
    """A pymodbus server (TCP on loopback, or RTU on one end of a pty pair) answering for its twins."""

    def __init__(self, twins: Mapping[int, MeterTwin]) -> None:
        self.twins = dict(twins)
        self._context = _TwinContext(self.twins)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._pty: PtyPair | None = None
        self.address: str = ""

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending and self._pty is not None and data:
            twin = self.twins.get(data[0])
            if twin is not None and twin.fault is TwinFault.CRC:
                return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on TCP; the (host, port) it listens on."""
        server = ModbusTcpServer(self._context, address=(host, port), ignore_missing_devices=True)
        await server.serve_forever(background=True)
        self._server = server
        sock = server.transport.sockets[0]  # type: ignore[attr-defined]
        bound: tuple[str, int] = sock.getsockname()[:2]
        self.address = f"{bound[0]}:{bound[1]}"
        return bound

    async def start_rtu(self, baudrate: int = 9600) -> str:
        """Serve RTU on one end of a new pty pair; the other end's path, for the client."""
        self._pty = PtyPair()
        server_end, client_end = self._pty.open()
        server = ModbusSerialServer(
            self._context,
            port=server_end,
            baudrate=baudrate,
            ignore_missing_devices=True,
            trace_packet=self._trace,
        )
        await server.serve_forever(background=True)
        self._server = server
        self.address = client_end
        return client_end

    async def stop(self) -> None:
        """Stop serving and release the port or terminals."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
        if self._pty is not None:
            self._pty.close()
            self._pty = None

    async def __aenter__(self) -> TwinServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class SiteReading(Protocol):
    """What the simulator's meters report (`SimSite.mains_meter()` is one)."""

    @property
    def voltages(self) -> tuple[float, float, float]:
        """V per phase."""

    @property
    def currents(self) -> tuple[float, float, float]:
        """A per phase, + import."""

    @property
    def powers(self) -> tuple[float, float, float]:
        """W per phase."""

    @property
    def import_kwh(self) -> float:
        """Imported energy."""

    @property
    def export_kwh(self) -> float:
        """Exported energy."""

    @property
    def frequency(self) -> float:
        """Hz."""


def follow(twin: MeterTwin, reading: SiteReading) -> None:
    """Set a twin's registers from one simulated reading (per-phase V, A, W, counters, Hz)."""
    twin.set(
        reading.currents,
        reading.voltages,
        reading.powers,
        reading.import_kwh,
        reading.export_kwh,
        reading.frequency,
    )


async def follow_forever(twin: MeterTwin, source: Callable[[], SiteReading], period_s: float) -> None:
    """Keep a twin following the simulator: `source()` every `period_s` until cancelled."""
    while True:
        follow(twin, source())
        await asyncio.sleep(period_s)
