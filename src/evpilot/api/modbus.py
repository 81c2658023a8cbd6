"""The Modbus server: pymodbus over TCP or RTU, one unit id per charger, one register map per vocabulary.

The register maps (`api.teltonika.modbus`, `api.esp32evse.modbus`) say what each holding register
means; this module only routes requests to them, refuses writes unless `modbus.allow_writes`, tells
the map which requests were valid (the Teltonika watchdog counts them) and ticks the map's watch in
the runtime's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from evpilot.config import ModbusModel
from evpilot.control.runtime import Runtime
from evpilot.core.errors import CommandError

log = logging.getLogger("evpilot.modbus")

READ_HOLDING = 3
WRITE_SINGLE = 6
WRITE_MULTIPLE = 16
READ_WRITE_MULTIPLE = 23
_READS = frozenset({READ_HOLDING, READ_WRITE_MULTIPLE, WRITE_SINGLE})
_WRITES = frozenset({WRITE_SINGLE, WRITE_MULTIPLE, READ_WRITE_MULTIPLE})
# The watch runs this often (clock seconds): watchdog timeouts are whole seconds.
WATCH_S = 0.25


class Refused(Exception):
    """A request the map refuses, with its Modbus exception code (02 address, 03 value)."""

    def __init__(self, code: ExcCodes, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class RegisterMap(Protocol):
    """A device vocabulary's holding registers for the chargers it serves."""

    def read(self, cid: str, address: int, count: int) -> list[int]:
        """`count` registers from `address` (raises Refused)."""

    def write(self, cid: str, address: int, values: Sequence[int]) -> None:
        """Write registers from `address`: all of them or none (raises Refused)."""

    def heard(self, cid: str) -> None:
        """A valid request for `cid` was answered (the watchdog's food)."""

    def watch(self) -> None:
        """Periodic upkeep in the runtime's clock (watchdogs, status times)."""


def unit_ids(model: ModbusModel, chargers: Sequence[str]) -> dict[int, str]:
    """Unit id -> charger id: the configured `units`, else the chargers in order from 1."""
    if model.units:
        return {unit: cid for cid, unit in model.units.items()}
    return {i + 1: cid for i, cid in enumerate(chargers)}


def build_map(rt: Runtime, model: ModbusModel, chargers: Sequence[str]) -> RegisterMap:
    """The register map the config names."""
    if model.map == "esp32evse":
        from evpilot.api.esp32evse.modbus import Esp32EvseMap

        return Esp32EvseMap(rt)
    from evpilot.api.teltonika.modbus import TeltonikaMap

    return TeltonikaMap(rt, chargers)


class _Context(ModbusServerContext):
    """pymodbus's datastore interface, answered by the register map (no register copy is kept)."""

    def __init__(self, units: Mapping[int, str], regs: RegisterMap, allow_writes: bool) -> None:
        # Not the base initializer: it wants pymodbus's own data blocks, which would hold a copy.
        self.old_simulator = True
        self.simdevices = []
        self.units = dict(units)
        self.regs = regs
        self.allow_writes = allow_writes
        self.requests = 0
        self.refusals = 0

    def _charger(self, device_id: int) -> str:
        cid = self.units.get(device_id)
        if cid is None:
            raise NoSuchIdException(f"no charger at unit id {device_id}")
        return cid

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        """Read holding registers through the map."""
        cid = self._charger(device_id)
        if func_code not in _READS:
            self.refusals += 1
            return ExcCodes.ILLEGAL_FUNCTION
        try:
            values = self.regs.read(cid, address, count)
        except Refused as exc:
            self.refusals += 1
            return exc.code
        if func_code == READ_HOLDING:
            # A write's read-back is not a request of its own: the write was counted.
            self.requests += 1
            self.regs.heard(cid)
        return values

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        """Write holding registers through the map (all or nothing)."""
        cid = self._charger(device_id)
        if func_code not in _WRITES:
            self.refusals += 1
            return ExcCodes.ILLEGAL_FUNCTION
        if not self.allow_writes:
            self.refusals += 1
            return ExcCodes.ILLEGAL_FUNCTION
        try:
            self.regs.write(cid, address, [int(v) for v in values])
        except (Refused, CommandError) as exc:
            self.refusals += 1
            log.info("modbus: unit %d write %d%s refused: %s", device_id, address, list(values), exc)
            return exc.code if isinstance(exc, Refused) else ExcCodes.ILLEGAL_VALUE
        self.requests += 1
        self.regs.heard(cid)
        return None

    def device_ids(self) -> list[int]:
        """The unit ids served."""
        return list(self.units)


class ModbusFacade:
    """A pymodbus server (TCP, or RTU on a serial port) serving one register map for the chargers."""

    def __init__(self, rt: Runtime, model: ModbusModel) -> None:
        self.rt = rt
        self.model = model
        chargers = list(rt.engine.chargers)
        self.units = unit_ids(model, chargers)
        self.map = build_map(rt, model, [self.units[u] for u in sorted(self.units)])
        self.context = _Context(self.units, self.map, model.allow_writes)
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self.port: int | None = None
        self._stop = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen (TCP) or open the serial port, and start the watch."""
        m = self.model
        if m.serial is not None:
            self.server = ModbusSerialServer(
                self.context,
                framer=FramerType.RTU,
                port=m.serial,
                baudrate=m.baudrate,
                parity=m.parity,
                stopbits=m.stopbits,
                # On a shared bus the other unit ids belong to other devices: stay silent.
                ignore_missing_devices=True,
            )
            where = f"{m.serial} ({m.baudrate} {m.parity}{m.stopbits})"
        else:
            assert m.port is not None
            self.server = ModbusTcpServer(self.context, address=(m.host, m.port))
            where = f"{m.host}:{m.port}"
        try:
            await self.server.serve_forever(background=True)
        except RuntimeError:
            raise OSError(f"Modbus: cannot listen on {where}") from None
        if m.serial is None:
            sockets = getattr(self.server.transport, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1]) if sockets else m.port
            where = f"{m.host}:{self.port}"
        self._watch = asyncio.create_task(self._run_watch(), name="modbus-watch")
        units = ", ".join(f"{u}={cid}" for u, cid in sorted(self.units.items()))
        log.info(
            "Modbus %s server on %s, map %s, units %s, writes %s",
            "RTU" if m.serial else "TCP",
            where,
            m.map,
            units,
            "allowed" if m.allow_writes else "refused",
        )

    async def stop(self) -> None:
        """Stop the watch and close the server."""
        self._stop.set()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.server is not None:
            await self.server.shutdown()  # type: ignore[no-untyped-call]

    async def _run_watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.map.watch()
            except Exception as exc:  # the watchdog must outlive a bug in one pass
                self.rt.supervisor.record("modbus", exc)
            # At most about 50 passes per real second, and at least one per clock second.
            await self.rt.clock.wait(self._stop, max(WATCH_S, min(1.0, self.rt.clock.speed * 0.02)))
