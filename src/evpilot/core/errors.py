"""Errors the core raises for commands it refuses."""

from __future__ import annotations


class CommandError(ValueError):
    """A command was refused; `field` names the input and `message` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_range(field: str, value: float, low: float, high: float, unit: str = "") -> float:
    """Return `value` as float if `low <= value <= high`, else raise CommandError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(field, f"must be a number between {low} and {high}{unit}")
    if value != value or not low <= value <= high:
        raise CommandError(field, f"{value} is out of range {low}-{high}{unit}")
    return float(value)
