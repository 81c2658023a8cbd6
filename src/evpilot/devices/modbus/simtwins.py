"""Serve the simulator's meter as Modbus twins on loopback, so a simulated site runs through real Modbus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from evpilot.devices.modbus.driver import ModbusSpec
from evpilot.devices.modbus.net import is_loopback
from evpilot.devices.modbus.twin import MeterTwin, SiteReading, TwinServer, follow

# The twins update their registers this often (real seconds); meters poll at 1 s by default.
FOLLOW_S = 0.2


class TwinPlanError(ValueError):
    """A meter that cannot be served as a twin (not Modbus TCP on a loopback address)."""


class SimTwins:
    """One twin server per (host, port), each unit a twin following `source()` (the simulated meter)."""

    def __init__(self, source: Callable[[], SiteReading], specs: Iterable[ModbusSpec]) -> None:
        self._source = source
        self._endpoints: dict[tuple[str, int], dict[int, MeterTwin]] = {}
        for spec in specs:
            if spec.host is None or not is_loopback(spec.host):
                raise TwinPlanError(
                    f"{spec.endpoint}: a simulated twin is served on a loopback TCP address only "
                    "(127.0.0.1, ::1 or localhost)"
                )
            units = self._endpoints.setdefault((spec.host, spec.port), {})
            if spec.unit in units:
                raise TwinPlanError(f"{spec.endpoint} unit {spec.unit}: two meters on one twin")
            units[spec.unit] = MeterTwin(spec.register_map())
        self._servers: list[TwinServer] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def twins(self) -> list[MeterTwin]:
        """Every twin."""
        return [t for units in self._endpoints.values() for t in units.values()]

    def update(self) -> None:
        """Set every twin from the simulator's present reading."""
        reading = self._source()
        for twin in self.twins:
            follow(twin, reading)

    async def _follow(self) -> None:
        while True:
            self.update()
            await asyncio.sleep(FOLLOW_S)

    async def start(self) -> None:
        """Listen on every endpoint and start following the simulator."""
        self.update()
        try:
            for (host, port), units in self._endpoints.items():
                server = TwinServer(units)
                try:
                    await server.start_tcp("127.0.0.1" if host == "localhost" else host, port)
                except (RuntimeError, OSError) as exc:
                    await server.stop()
                    raise TwinPlanError(f"{host}:{port}: cannot listen for the Modbus twin ({exc})") from exc
                self._servers.append(server)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._follow(), name="modbus-twins")

    async def stop(self) -> None:
        """Stop following and close every server."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for server in self._servers:
            await server.stop()
        self._servers = []
