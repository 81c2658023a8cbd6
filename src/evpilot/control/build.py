"""Assemble a site (config → chargers, drivers, simulator, engine)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evpilot.config import AppConfig
from evpilot.control.engine import Engine
from evpilot.core.charger import Charger
from evpilot.devices.apifed import ApiFedMeter
from evpilot.devices.base import MeterSource, PilotHardware
from evpilot.devices.sim import SimMainsMeter
from evpilot.sim.site import SimSite


@dataclass(slots=True)
class Assembly:
    """The parts of a running site."""

    engine: Engine
    sim: SimSite | None
    sim_meter: SimMainsMeter | None
    api_meter: ApiFedMeter


def assemble(
    config: AppConfig,
    start: float,
    lifetime: Callable[[str], float] | None = None,
) -> Assembly:
    """Build the engine with simulated pilots and the configured mains meter."""
    cfgs = [c.core() for c in config.chargers]
    sim = SimSite(config.sim.params([c.id for c in cfgs]), cfgs, start)
    pilots: dict[str, PilotHardware] = dict(sim.pilots)
    chargers = {c.id: Charger.create(c, lifetime(c.id) if lifetime else 0.0) for c in cfgs}
    api_meter = ApiFedMeter("mains")
    sim_meter: SimMainsMeter | None = None
    mains: MeterSource | None
    if config.site.mains_meter == "api":
        mains = api_meter
    elif config.site.mains_meter == "none":
        mains = None
    else:
        sim_meter = SimMainsMeter(sim)
        mains = sim_meter
    engine = Engine(
        config.site_core(),
        chargers,
        pilots,
        mains,
        lease_s=config.control.tick_s * config.control.lease_ticks,
    )
    for circuit in config.site.circuits:
        if circuit.meter == "api":
            meter = ApiFedMeter(circuit.name)
            engine.circuit_meters[circuit.name] = meter
    engine.before_step = sim.advance_to
    return Assembly(engine, sim, sim_meter, api_meter)
