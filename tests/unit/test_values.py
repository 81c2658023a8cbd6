"""`core.values.positional`: the fast constructors build the same values as the classes."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest

from evpilot.core.charger import ChargerConfig, PilotOutput, PilotReading
from evpilot.core.site import ChargerInput
from evpilot.core.values import positional

CASES: list[tuple[type, tuple[object, ...]]] = [
    (
        PilotReading,
        (12.5, "C", (6.1, 6.0, 5.9), (229.9, 230.1, 231.0), 3.25, 31.5, False, True, 20.0, 11.0, 12.0, None),
    ),
    (PilotOutput, (16.7, 10.0, True, 1, 17.0, 6.0)),
    (
        ChargerInput,
        (
            ChargerConfig("cp1"),
            "smart",
            2,
            16.0,
            "user",
            (1.0, 2.0, 3.0),
            1.5,
            "auto",
            1,
            True,
            9.0,
            True,
            10.0,
            4.5,
            12.0,
        ),
    ),
]


@pytest.mark.parametrize(("cls", "values"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_positional_builds_the_same_value(cls: type, values: tuple[object, ...]) -> None:
    """Equal, same hash and repr, every field in its place, still frozen."""
    made = positional(cls)(*values)
    plain = cls(*values)
    assert type(made) is cls
    assert made == plain
    assert hash(made) == hash(plain)
    assert repr(made) == repr(plain)
    assert tuple(getattr(made, f.name) for f in fields(cls)) == values
    with pytest.raises(AttributeError):
        made.__setattr__(fields(cls)[0].name, None)


def test_positional_takes_every_field() -> None:
    """A call missing a field (a default) is refused, not filled in silently."""
    make = positional(PilotOutput)
    with pytest.raises(TypeError):
        make(16.7, 10.0, True, 1, 17.0)


def test_positional_refuses_classes_it_cannot_build() -> None:
    """Unslotted dataclasses and dataclasses with `__post_init__` are refused."""

    @dataclass(frozen=True)
    class Unslotted:
        x: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            assert self.x >= 0

    for cls in (Unslotted, Checked, int):
        with pytest.raises(TypeError):
            positional(cls)
