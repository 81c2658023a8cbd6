"""A simulated electric vehicle: battery, onboard charger, phases and reaction delay."""

from __future__ import annotations

import random
from dataclasses import dataclass

from evpilot.core.charger import ZERO3, Phases
from evpilot.core.iec61851 import current_for_duty

# Above this state of charge the battery accepts less current (constant-voltage phase).
TAPER_START_SOC = 80.0
CHARGE_EFFICIENCY = 0.92


@dataclass(frozen=True, slots=True)
class CarSpec:
    """What a simulated car is: battery size, state of charge and onboard charger."""

    battery_kwh: float = 60.0
    soc: float = 30.0
    max_current: float = 32.0
    phases: int = 3
    target_soc: float = 100.0
    ventilation: bool = False


class SimCar:
    """A car plugged into a charger: follows the PWM after a 1–5 s delay."""

    __slots__ = ("_duty", "_offer", "_pending", "_pending_at", "_rng", "follow", "last_offer", "soc", "spec")

    def __init__(self, spec: CarSpec, rng: random.Random) -> None:
        self.spec = spec
        self.soc = spec.soc
        self._rng = rng
        self.follow = 0.0
        self.last_offer = 0.0
        self._pending = 0.0
        self._pending_at: float | None = None
        # The last duty seen and the current it offers (the conversion is pure, so it is cached).
        self._duty = -1.0
        self._offer = 0.0

    @property
    def wants_charge(self) -> bool:
        """The battery is below its target."""
        return self.soc < self.spec.target_soc - 1e-9

    @property
    def letter(self) -> str:
        """Pilot letter the car presents: B (not requesting), C or D (requesting)."""
        if not self.wants_charge:
            return "B"
        return "D" if self.spec.ventilation else "C"

    def taper_limit(self) -> float:
        """Current the battery accepts at its present state of charge."""
        if self.soc <= TAPER_START_SOC:
            return self.spec.max_current
        frac = max(0.0, (self.spec.target_soc - self.soc) / max(1e-6, 100.0 - TAPER_START_SOC))
        return max(2.0, self.spec.max_current * min(1.0, frac))

    def see_duty(self, now: float, duty: float) -> None:
        """Notice the pilot's duty cycle; the car adapts after a random 1–5 s."""
        if duty != self._duty:
            self._duty = duty
            self._offer = current_for_duty(duty)
        offer = self._offer
        if offer != self.last_offer:
            self.last_offer = offer
            delay = 1.0 + 4.0 * self._rng.random()
            at = now + delay
            self._pending = offer
            self._pending_at = at if self._pending_at is None else min(self._pending_at, at)
        if self._pending_at is not None and now >= self._pending_at:
            self.follow = self._pending
            self._pending_at = None

    def settled(self, duty: float) -> bool:
        """Seeing `duty` again changes nothing: it is the last duty seen, and the car follows it."""
        return duty == self._duty and self._pending_at is None and self.last_offer == self._offer

    def draw(self, contactor: bool, charger_phases: int) -> Phases:
        """Per-phase current on the charger's L1..L3."""
        if not contactor or self.follow <= 0 or not self.soc < self.spec.target_soc - 1e-9:
            return ZERO3
        amps = min(self.follow, self.spec.max_current, self.taper_limit())
        if self.spec.phases == 3 and charger_phases == 3:
            return (amps, amps, amps)
        return (amps, 0.0, 0.0)

    def absorb(self, energy_kwh: float) -> None:
        """Store energy delivered by the charger into the battery."""
        self.soc = min(100.0, self.soc + 100.0 * energy_kwh * CHARGE_EFFICIENCY / self.spec.battery_kwh)
