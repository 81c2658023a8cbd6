"""The simulated site: chargers' pilot hardware with cars, house, PV, battery and meters."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from evpilot.core.charger import ZERO3, ChargerConfig, Phases, PilotOutput, PilotReading, mains_draw
from evpilot.core.iec61851 import NO_PWM_DUTY, current_for_duty, duty_for_current
from evpilot.core.site import Reading
from evpilot.core.values import positional
from evpilot.sim.ev import CarSpec, SimCar
from evpilot.sim.house import PV, HomeBattery, House, Spike

NOMINAL_V = 230.0
# Source impedance seen by each phase: the voltage sags this many volts per ampere drawn.
SAG_V_PER_A = 0.05
# Thermal model of the charger: steady-state rise per A² and the time constant.
HEAT_K_PER_A2 = 0.01
HEAT_TAU_S = 600.0
# Exactly equivalent shortcuts (a socket drawing nothing); tests switch them off to compare.
FAST_PATHS = True
# Built for every charger on every tick: filled slot by slot (`core.values.positional`).
_pilot_reading = positional(PilotReading)


@dataclass(frozen=True, slots=True)
class MainsMeterReading:
    """What a mains meter reports: per-phase V, A, W, energy counters and frequency."""

    taken_at: float
    voltages: Phases
    currents: Phases
    powers: Phases
    import_kwh: float
    export_kwh: float
    frequency: float

    def as_reading(self) -> Reading:
        """The per-phase currents the balancer needs."""
        return Reading(self.currents, self.taken_at)


@dataclass(frozen=True, slots=True)
class PlannedCar:
    """A car that plugs into `charger` at `at` seconds after the start."""

    charger: str
    at: float
    spec: CarSpec
    unplug_at: float | None = None


@dataclass(slots=True)
class SimParams:
    """Parameters of a simulated site."""

    seed: int = 1
    pv_kwp: float = 6.0
    house_base: Phases = (1.5, 1.0, 1.2)
    spike_rate_h: float = 0.5
    first_spike_at: float | None = 300.0
    battery_kwh: float = 0.0
    battery_power_w: float = 0.0
    ambient_c: float = 25.0
    start_tod_s: float | None = None
    cars: list[PlannedCar] = field(default_factory=list)


class SimPilot:
    """Pilot hardware of one charger in the simulator: relays, PWM, EV meter, thermals."""

    __slots__ = (
        "car",
        "config",
        "contactor",
        "currents",
        "diode_fault",
        "duty",
        "energy_kwh",
        "fallback_at",
        "phases",
        "pm",
        "rcm_fault",
        "rng",
        "rotated",
        "safe_current",
        "site",
        "slept_at",
        "temperature",
        "voltages",
    )

    def __init__(self, site: SimSite, config: ChargerConfig, rng: random.Random) -> None:
        self.site = site
        self.config = config
        self.rng = rng
        self.car: SimCar | None = None
        self.duty = 100.0
        self.contactor = False
        self.phases = config.phases
        self.energy_kwh = 0.0
        self.currents: Phases = (0.0, 0.0, 0.0)
        self.voltages: Phases = (NOMINAL_V, NOMINAL_V, NOMINAL_V)
        self.temperature = site.params.ambient_c
        self.rcm_fault = False
        self.diode_fault = False
        self.fallback_at = math.inf
        self.safe_current = config.safe_current
        # The wiring never changes for a pilot: its phase map is looked up once.
        self.pm = config.phase_map
        self.rotated = self.pm.order[0] != 0
        # The site's step count when it stopped stepping this pilot (`SimSite.sleep`), else None.
        self.slept_at: int | None = None

    def plug(self, spec: CarSpec) -> None:
        """Connect a car."""
        self.car = SimCar(spec, random.Random(self.rng.random()))

    def unplug(self) -> None:
        """Disconnect the car."""
        self.car = None
        self.currents = (0.0, 0.0, 0.0)

    def read(self) -> PilotReading:
        """The pilot letter, EV meter and sensors as the controller sees them."""
        car = self.car
        # Positional: taken_at, letter, currents, voltages, energy_kwh, temperature, rcm_fault,
        # diode_fault, cable_limit, measured_at, held, transactions (this runs for every charger on
        # every tick).
        return _pilot_reading(
            self.site.now,
            "A" if car is None else car.letter,
            self.currents,
            self.voltages,
            self.energy_kwh,
            self.temperature,
            self.rcm_fault,
            self.diode_fault,
            None if car is None else 32.0,
            None,
            0.0,
            None,
        )

    def write(self, output: PilotOutput) -> None:
        """Apply the controller's PWM, contactor and phase count."""
        self.duty = output.duty
        self.contactor = output.contactor
        self.phases = output.phases
        self.fallback_at = output.fallback_at
        self.safe_current = output.safe_current

    def may_sleep(self) -> bool:
        """A step would only move the voltages and cool the charger: no PWM offered, contactor open,
        nothing drawn, below MAX temperature (so is ambient), and a car that has followed the duty."""
        car = self.car
        max_temp = self.config.max_temp
        return (
            FAST_PATHS
            and not self.contactor
            and self.duty == NO_PWM_DUTY
            and self.currents is ZERO3
            and self.temperature < max_temp
            and self.site.params.ambient_c < max_temp
            and (car is None or car.settled(NO_PWM_DUTY))
        )

    def _voltages(self, phase_v: Phases) -> Phases:
        """The voltages on this charger's L1..L3 for the mains phases' `phase_v`."""
        if self.config.phases == 1:
            return (phase_v[self.pm.order[0]], 0.0, 0.0)
        if self.rotated:
            return self.pm.from_mains(phase_v)
        return phase_v

    def _cool(self, dt: float, steps: int) -> None:
        """`steps` steps of `dt` with nothing drawn: the temperature approaches ambient."""
        ambient = self.site.params.ambient_c
        temperature = self.temperature
        factor = min(1.0, dt / HEAT_TAU_S)
        for _ in range(steps):
            if temperature == ambient:
                break
            # The same expression as a step's (`_step`).
            t = temperature + (ambient + 0.0 - temperature) * factor
            if t == temperature:
                # A fixed point: the rest of these steps change nothing either.
                break
            temperature = t
        self.temperature = temperature

    def _step(self, now: float, dt: float, phase_v: Phases) -> Phases:
        car = self.car
        config = self.config
        one_phase = config.phases == 1
        if car is None:
            currents: Phases = ZERO3
        else:
            duty = self.duty
            if now >= self.fallback_at and duty < 100.0:
                # The controller stopped renewing its setpoint: the hardware drops to safe current.
                safe = self.safe_current
                if current_for_duty(duty) > safe:
                    duty = duty_for_current(safe) if safe >= 6 else 100.0
            car.see_duty(now, duty)
            currents = car.draw(self.contactor and not self.rcm_fault, self.phases)
            if one_phase and currents is not ZERO3:
                currents = (currents[0], 0.0, 0.0)
        self.currents = currents
        pm = self.pm
        rotated = self.rotated
        if one_phase:
            v = phase_v[pm.order[0]]
            voltages: Phases = (v, 0.0, 0.0)
        elif rotated:
            voltages = pm.from_mains(phase_v)
        else:
            voltages = phase_v
        self.voltages = voltages
        if currents is ZERO3 and FAST_PATHS and (car is None or car.soc <= 100.0):
            # Nothing drawn: no energy to account (each sum would add 0, the car's state of charge
            # stays where it is) and the charger only cools towards ambient.
            ambient = self.site.params.ambient_c
            temperature = self.temperature
            if temperature != ambient:
                self.temperature = temperature + (ambient + 0.0 - temperature) * min(1.0, dt / HEAT_TAU_S)
            return ZERO3
        # Same order of operations as sum() over the three products.
        power = currents[0] * voltages[0] + currents[1] * voltages[1] + currents[2] * voltages[2]
        kwh = power * dt / 3.6e6
        self.energy_kwh += kwh
        if car is not None:
            car.absorb(kwh)
        amps = max(currents)
        target = self.site.params.ambient_c + HEAT_K_PER_A2 * amps * amps
        self.temperature += (target - self.temperature) * min(1.0, dt / HEAT_TAU_S)
        if one_phase or rotated:
            return pm.to_mains(currents)
        return currents

    def mains_draw(self) -> Phases:
        """This charger's current on the mains phases."""
        return mains_draw(self.config, self.currents)


class SimSite:
    """Deterministic physics of a whole site; time advances only through `advance_to`."""

    def __init__(self, params: SimParams, chargers: list[ChargerConfig], start: float) -> None:
        self.params = params
        self.rng = random.Random(params.seed)
        self.start = start
        self.now = start
        self.tod0 = params.start_tod_s if params.start_tod_s is not None else start % 86400.0
        first = None
        if params.first_spike_at is not None:
            first = Spike(start + params.first_spike_at, 1200.0, (10.0, 10.0, 10.0), "oven")
        self.house = House(
            random.Random(self.rng.random()),
            params.house_base,
            params.spike_rate_h,
            first,
            start,
        )
        self.pv = PV(random.Random(self.rng.random()), params.pv_kwp)
        self.battery = (
            HomeBattery(params.battery_kwh, params.battery_power_w) if params.battery_kwh > 0 else None
        )
        self.pilots: dict[str, SimPilot] = {
            c.id: SimPilot(self, c, random.Random(self.rng.random())) for c in chargers
        }
        self.planned = sorted(params.cars, key=lambda p: p.at)
        self.unplugs: list[tuple[float, str]] = []
        self._unplug_due = math.inf
        self.import_kwh = 0.0
        self.export_kwh = 0.0
        self.mains_currents: Phases = (0.0, 0.0, 0.0)
        self.house_currents: Phases = (0.0, 0.0, 0.0)
        self.phase_v: Phases = (NOMINAL_V, NOMINAL_V, NOMINAL_V)
        self.pv_w = 0.0
        self.battery_w = 0.0
        self._stepped = False
        self.step_s = 1.0
        # Pilots stepped at each step: all but the sleeping ones (`sleep`), in the order of `pilots`.
        self._awake: list[SimPilot] = list(self.pilots.values())
        self._asleep = 0
        self._steps = 0
        # While any pilot sleeps: the steps' lengths as runs [dt, first step, count], and the mains
        # voltages the last step gave the pilots (what a sleeping pilot catches up with).
        self._dt_runs: list[list[float]] = []
        self._pilot_v: Phases = self.phase_v
        self._woken: list[str] = []

    @property
    def frequency(self) -> float:
        """The grid frequency (Hz) at the last step (a function of its time alone, found when asked)."""
        return 50.0 + 0.02 * math.sin(self.now / 37.0) if self._stepped else 50.0

    def next_event(self) -> float:
        """When a planned car plugs in or leaves next (inf: never); `now` when a pilot at 0 A may still
        change by itself (a charger whose ambient is at or above its MAX temperature could heat up)."""
        ambient = self.params.ambient_c
        if any(p.config.max_temp <= ambient for p in self.pilots.values()):
            return self.now
        planned = self.planned
        first = planned[0].at + self.start if planned else math.inf
        return min(first, self._unplug_due)

    def sleep(self, pilot: object) -> bool:
        """Stop stepping `pilot` while its steps would only move its voltages and cool it
        (`SimPilot.may_sleep`); False if it may not sleep or is not one of this site's pilots.

        Its voltages and temperature catch up when it is woken (`wake`): by itself when a car
        plugs into it or leaves (`woken`), or by the one that put it to sleep. Meanwhile nothing
        else may change it (its duty, contactor, faults, temperature, car).
        """
        if not isinstance(pilot, SimPilot) or self.pilots.get(pilot.config.id) is not pilot:
            return False
        if pilot.slept_at is not None:
            return True
        if not pilot.may_sleep():
            return False
        pilot.slept_at = self._steps
        self._asleep += 1
        self._awake.remove(pilot)
        return True

    def wake(self, pilot: object) -> None:
        """Step `pilot` again, its voltages and temperature first brought to what the steps it slept
        through would have made them."""
        if not isinstance(pilot, SimPilot) or pilot.slept_at is None:
            return
        since, pilot.slept_at = pilot.slept_at, None
        if self._steps > since:
            for dt, first, count in self._dt_runs:
                skip = max(0, since - int(first))
                if skip < count:
                    pilot._cool(dt, int(count) - skip)
            pilot.voltages = pilot._voltages(self._pilot_v)
        self._asleep -= 1
        if not self._asleep:
            self._dt_runs.clear()
        self._awake = [p for p in self.pilots.values() if p.slept_at is None]

    def woken(self) -> list[str]:
        """The chargers whose sleeping pilot woke by itself since the last call (a car came or left)."""
        woken, self._woken = self._woken, []
        return woken

    def reading_time(self) -> float:
        """The time a pilot's reading taken now carries (`SimPilot.read`)."""
        return self.now

    def _wake_for_car(self, pilot: SimPilot) -> None:
        if pilot.slept_at is not None:
            self.wake(pilot)
            self._woken.append(pilot.config.id)

    def tod(self, now: float) -> float:
        """Seconds into the simulated local day."""
        return (self.tod0 + (now - self.start)) % 86400.0

    def advance_to(self, target: float) -> None:
        """Run the physics up to `target` in steps of at most `step_s`."""
        while self.now < target - 1e-9:
            dt = min(self.step_s, target - self.now)
            self._step(self.now + dt, dt)

    def _step(self, now: float, dt: float) -> None:
        self.now = now
        planned = self.planned
        while planned and planned[0].at + self.start <= now:
            plan = planned.pop(0)
            pilot = self.pilots.get(plan.charger)
            if pilot is not None:
                self._wake_for_car(pilot)
                pilot.plug(plan.spec)
                if plan.unplug_at is not None:
                    due = self.start + plan.unplug_at
                    self.unplugs.append((due, plan.charger))
                    self._unplug_due = min(self._unplug_due, due)
        if self.unplugs and self._unplug_due <= now:
            for at, cid in list(self.unplugs):
                if at <= now:
                    self._wake_for_car(self.pilots[cid])
                    self.pilots[cid].unplug()
                    self.unplugs.remove((at, cid))
            self._unplug_due = min((at for at, _ in self.unplugs), default=math.inf)
        tod = self.tod(now)
        house = self.house.currents(now, tod)
        self.house_currents = house
        pv_w = self.pv.power_w(now, tod)
        self.pv_w = pv_w
        pv_a = pv_w / (3 * NOMINAL_V)
        ev0 = ev1 = ev2 = 0.0
        phase_v = self.phase_v
        self._steps += 1
        if self._asleep:
            # A sleeping pilot draws nothing: the sums below are the same without its zeros.
            runs = self._dt_runs
            if runs and runs[-1][0] == dt:
                runs[-1][2] += 1
            else:
                runs.append([dt, self._steps - 1, 1])
            self._pilot_v = phase_v
        for pilot in self._awake:
            d = pilot._step(now, dt, phase_v)
            ev0 += d[0]
            ev1 += d[1]
            ev2 += d[2]
        net0 = house[0] + ev0 - pv_a
        net1 = house[1] + ev1 - pv_a
        net2 = house[2] + ev2 - pv_a
        if self.battery is not None:
            net_w = (net0 + net1 + net2) * NOMINAL_V
            self.battery_w = self.battery.respond(net_w)
            self.battery.step(dt)
            bat_a = self.battery_w / (3 * NOMINAL_V)
            mains = (net0 + bat_a, net1 + bat_a, net2 + bat_a)
        else:
            mains = (net0 + 0.0, net1 + 0.0, net2 + 0.0)
        self.mains_currents = mains
        v0 = NOMINAL_V + 2.0 - SAG_V_PER_A * mains[0]
        v1 = NOMINAL_V + 2.0 - SAG_V_PER_A * mains[1]
        v2 = NOMINAL_V + 2.0 - SAG_V_PER_A * mains[2]
        self.phase_v = (v0, v1, v2)
        self._stepped = True
        power = mains[0] * v0 + mains[1] * v1 + mains[2] * v2
        if power >= 0:
            self.import_kwh += power * dt / 3.6e6
        else:
            self.export_kwh += -power * dt / 3.6e6

    def mains_meter(self) -> MainsMeterReading:
        """The mains meter's reading at the simulator's present time."""
        m = self.mains_currents
        v = self.phase_v
        return MainsMeterReading(
            taken_at=self.now,
            voltages=v,
            currents=(round(m[0], 3), round(m[1], 3), round(m[2], 3)),
            powers=(round(m[0] * v[0], 1), round(m[1] * v[1], 1), round(m[2] * v[2], 1)),
            import_kwh=self.import_kwh,
            export_kwh=self.export_kwh,
            frequency=self.frequency,
        )

    def battery_current(self) -> float | None:
        """Home battery current (A, + charging), or None without a battery."""
        if self.battery is None:
            return None
        return self.battery_w / NOMINAL_V
