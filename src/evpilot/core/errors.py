"""Errors the core raises for commands it refuses."""

from __future__ import annotations


class CommandError(ValueError):
    """A command was refused; `field` names the input, `message` says why, `allowed` is its (min, max)."""

    def __init__(self, field: str, message: str, allowed: tuple[float, float] | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.allowed = allowed


def check_range(field: str, value: float, low: float, high: float, unit: str = "") -> float:
    """Return `value` as float if `low <= value <= high`, else raise CommandError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(field, f"must be a number between {low:g} and {high:g}{unit}", (low, high))
    if value != value or not low <= value <= high:
        raise CommandError(
            field, f"{value:g}{unit} is out of range (allowed {low:g} to {high:g}{unit})", (low, high)
        )
    return float(value)
