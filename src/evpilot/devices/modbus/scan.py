"""Finding meters on a bus: probe unit ids, name the model by identity registers or a plausible read."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from evpilot.devices.meter import MeterFault
from evpilot.devices.modbus.bus import BusError, ModbusBus
from evpilot.devices.modbus.driver import _absurd, _finite, read_values
from evpilot.devices.modbus.maps import MAPS
from evpilot.devices.modbus.registers import VOLTAGES, Identity, Quantity, RegisterMap

# A voltage and frequency a meter on a live grid shows (any of 120/230 V, 50/60 Hz grids).
PLAUSIBLE_V = (80.0, 300.0)
PLAUSIBLE_HZ = (45.0, 65.0)


@dataclass(frozen=True, slots=True)
class Found:
    """A device that answered: its unit id, the model (None if no map fits) and how it was named."""

    unit: int
    model: str | None
    how: str
    candidates: tuple[str, ...] = ()


def _identities() -> list[Identity]:
    seen: dict[tuple[int, int, int], Identity] = {}
    for m in MAPS.values():
        ident = m.identity
        if ident is not None:
            seen.setdefault((ident.function, ident.address, ident.count), ident)
    return list(seen.values())


def plausible(regmap: RegisterMap, values: dict[Quantity, float]) -> bool:
    """True if decoded values look like a live meter (finite, sane, a grid voltage and frequency)."""
    if _finite(values) or _absurd(values):
        return False
    volts = values.get(VOLTAGES[0])
    if volts is not None and not PLAUSIBLE_V[0] <= volts <= PLAUSIBLE_V[1]:
        return False
    hz = values.get(Quantity.FREQUENCY)
    if hz is not None and not PLAUSIBLE_HZ[0] <= hz <= PLAUSIBLE_HZ[1]:
        return False
    return volts is not None or hz is not None


async def probe(bus: ModbusBus, unit: int, timeout: float) -> Found | None:
    """What answers at `unit`, or None if nothing does (silence to the first request: nobody there)."""
    for n, ident in enumerate(_identities()):
        try:
            words = await bus.read(unit, ident.function, ident.address, ident.count, timeout)
        except BusError as exc:
            # A meter answers a register it lacks with an exception; silence means no device.
            if n == 0 and exc.fault in (MeterFault.TIMEOUT, MeterFault.UNREACHABLE):
                return None
            continue
        model = ident.match(words)
        if model is not None:
            return Found(unit, model, "identity register")
    fits: list[str] = []
    for name, regmap in MAPS.items():
        try:
            values = await read_values(bus, regmap, unit, timeout)
        except BusError:
            continue
        if plausible(regmap, values):
            fits.append(name)
    if fits:
        return Found(unit, fits[0], "plausible reading", tuple(fits))
    return Found(unit, None, "answers, but no known map reads plausibly")


async def scan(
    bus: ModbusBus,
    units: Iterable[int],
    timeout: float,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> list[Found]:
    """Probe each unit id in turn; `progress(done, total, unit, found)` after each one."""
    todo = list(units)
    found: list[Found] = []
    for n, unit in enumerate(todo, 1):
        hit = await probe(bus, unit, timeout)
        if hit is not None:
            found.append(hit)
        if progress is not None:
            progress(n, len(todo), unit, len(found))
    return found
