"""Assemble a site (config → chargers, drivers, simulator when enabled, engine)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from evpilot.config import AppConfig, MeterSpec
from evpilot.control.engine import Engine
from evpilot.core.charger import Charger
from evpilot.devices.apifed import ApiFedMeter
from evpilot.devices.base import ChargerLink, MeterSource, PilotHardware
from evpilot.devices.linked import DriverMeteredPilot, LinkedPilot
from evpilot.devices.meter import Clock, MeterDriver
from evpilot.devices.registry import LinkContext, build_link, build_meter

if TYPE_CHECKING:
    # Imported at run time only when `sim.enabled` is true: a site without it never loads the simulator.
    from evpilot.devices.ocpp_backend import OcppBackend
    from evpilot.devices.sim import SimMainsMeter
    from evpilot.sim.site import SimSite


@dataclass(slots=True)
class Assembly:
    """The parts of a running site."""

    engine: Engine
    sim: SimSite | None
    sim_meter: SimMainsMeter | None
    api_meter: ApiFedMeter
    # Meter drivers by meter name (`mains`, `circuit:<name>`, `ev:<charger>`), each polled by its task.
    meters: dict[str, MeterDriver] = field(default_factory=dict)
    # Setpoint-level charger links by charger id.
    links: dict[str, ChargerLink] = field(default_factory=dict)
    # The OCPP backend the `type: ocpp` chargers' wallboxes connect to (with `ocpp_server`).
    ocpp: OcppBackend | None = None


def assemble(
    config: AppConfig,
    start: float,
    lifetime: Callable[[str], float] | None = None,
    clock: Clock | None = None,
) -> Assembly:
    """Build the engine with the configured charger drivers and meters (and the simulator if enabled)."""
    cfgs = [c.core() for c in config.chargers]
    sim: SimSite | None = None
    if config.sim.enabled:
        from evpilot.sim.site import SimSite

        sim = SimSite(config.sim.params([c.id for c in cfgs]), cfgs, start)
    if clock is None:
        clock = (lambda: sim.now) if sim is not None else time.time
    ocpp: OcppBackend | None = None
    if config.ocpp_server is not None:
        from evpilot.devices.ocpp_backend import OcppBackend

        ocpp = OcppBackend(config.ocpp_server, clock)
    ctx = LinkContext(clock, sim, config.mqtt, ocpp)
    meters: dict[str, MeterDriver] = {}
    for _, name, spec in config.meters():
        if isinstance(spec, MeterSpec):
            meters[name] = build_meter(name, spec, clock)
    links: dict[str, ChargerLink] = {}
    pilots: dict[str, PilotHardware] = {}
    for model, cfg in zip(config.chargers, cfgs, strict=True):
        pilot: PilotHardware
        if isinstance(model.driver, str):
            # `sim`: the config refuses it without the simulator.
            assert sim is not None
            pilot = sim.pilots[cfg.id]
        else:
            link = links[cfg.id] = build_link(cfg, model.driver, ctx)
            pilot = LinkedPilot(link, clock)
        ev_meter = meters.get(f"ev:{cfg.id}")
        pilots[cfg.id] = pilot if ev_meter is None else DriverMeteredPilot(pilot, ev_meter)
    chargers = {c.id: Charger.create(c, lifetime(c.id) if lifetime else 0.0) for c in cfgs}
    api_meter = ApiFedMeter("mains")
    sim_meter: SimMainsMeter | None = None
    mains: MeterSource | None
    setting = config.site.mains_meter
    if setting == "api":
        mains = api_meter
    elif setting == "none":
        mains = None
    elif setting == "sim":
        from evpilot.devices.sim import SimMainsMeter

        assert sim is not None
        sim_meter = SimMainsMeter(sim)
        mains = sim_meter
    else:
        mains = meters["mains"]
    engine = Engine(
        config.site_core(),
        chargers,
        pilots,
        mains,
        lease_s=config.control.tick_s * config.control.lease_ticks,
    )
    for circuit in config.site.circuits:
        if circuit.meter == "api":
            engine.circuit_meters[circuit.name] = ApiFedMeter(circuit.name)
        elif circuit.meter != "none":
            engine.circuit_meters[circuit.name] = meters[f"circuit:{circuit.name}"]
    if sim is not None:
        # `Engine.run` may leave the simulator's own pilots of settled chargers unstepped.
        engine.pilot_sleep = sim
        sampled = [link.sample for link in links.values() if hasattr(link, "sample")]
        advance = sim.advance_to
        if sampled:

            def step(now: float) -> None:
                advance(now)
                for sample in sampled:
                    sample()

            engine.before_step = step
        else:
            engine.before_step = advance
        # Steady stretches may be leapt over (`Engine.leap`) when the simulator is all the engine reads.
        if not links and not meters and not engine.circuit_meters:
            engine.sim_events = sim.next_event

            def mains_within(lo: float, hi: float) -> bool:
                m = engine.mains
                if m is None or m is api_meter:
                    # Pushed readings change only through a request, never inside a leap.
                    return True
                return sim_meter is not None and m is sim_meter and sim_meter.within(lo, hi)

            engine.mains_within = mains_within
    return Assembly(engine, sim, sim_meter, api_meter, meters, links, ocpp)
