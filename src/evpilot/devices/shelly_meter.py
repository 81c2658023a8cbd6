"""A Shelly Pro 3EM / EM (Gen2 RPC) as a site meter, polled by its own task."""

from __future__ import annotations

from evpilot.devices.meter import Clock, MeterFault, MeterReading
from evpilot.devices.polled import MeterError, PolledMeter
from evpilot.devices.shelly_em import (
    EmReading,
    ShellyEmAuthError,
    ShellyEmError,
    ShellyEmMeter,
    ShellyEmTimeout,
    ShellyEmUnreachable,
)


def _fault(exc: ShellyEmError) -> MeterFault:
    if isinstance(exc, ShellyEmTimeout):
        return MeterFault.TIMEOUT
    if isinstance(exc, ShellyEmUnreachable):
        return MeterFault.UNREACHABLE
    if isinstance(exc, ShellyEmAuthError):
        return MeterFault.AUTH
    return MeterFault.PROTOCOL


def to_reading(em: EmReading, energies: tuple[float, float] | None, taken_at: float) -> MeterReading:
    """A Shelly reading on three phases (an EM channel is L1)."""
    c, v, p = em.currents, em.voltages, em.powers
    if em.kind == "em":
        currents = (c[0], c[1], c[2])
        voltages: tuple[float | None, float | None, float | None] = (v[0], v[1], v[2])
        powers: tuple[float | None, float | None, float | None] = (p[0], p[1], p[2])
    else:
        currents, voltages, powers = (c[0], 0.0, 0.0), (v[0], None, None), (p[0], None, None)
    return MeterReading(
        taken_at=taken_at,
        currents=currents,
        voltages=voltages,
        powers=powers,
        power=sum(p),
        import_kwh=None if energies is None else energies[0],
        export_kwh=None if energies is None else energies[1],
        frequency=em.frequency,
    )


class ShellyMeter(PolledMeter):
    """A Shelly EM-family meter; `EM.GetStatus` (Pro 3EM) or `EM1.GetStatus` (EM), plus its counters."""

    driver_type = "shelly"

    def __init__(
        self,
        name: str,
        host: str,
        clock: Clock,
        port: int = 80,
        channel: int = 0,
        poll_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__(name, clock, poll_s, timeout_s)
        self.device = ShellyEmMeter(host, port, timeout_s, channel)
        self._counters = True

    @property
    def model(self) -> str | None:
        """`Pro 3EM` or `EM` once the meter answered."""
        return {"em": "Pro 3EM", "em1": "EM"}.get(self.device.kind or "")

    @property
    def address(self) -> str:
        """`host:port` and the channel of an EM."""
        d = self.device
        where = f"{d.host}:{d.port}"
        return where if d.channel == 0 else f"{where} channel {d.channel}"

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self.device.close()

    async def fetch(self) -> MeterReading:
        """Read the currents and, where the meter keeps them, the energy counters."""
        try:
            em = await self.device.read()
            taken_at = self.clock()
            energies = await self.device.energies() if self._counters else None
        except ShellyEmError as exc:
            raise MeterError(_fault(exc), str(exc)) from None
        if energies is None:
            self._counters = False
        return to_reading(em, energies, taken_at)
