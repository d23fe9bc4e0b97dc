"""Parameter constraints: a small declarative table per estimator, checked in one place.

An estimator lists what each parameter may be, e.g.::

    CONSTRAINTS = {
        "epochs": Interval(int, 1, None),
        "augment": Options("default", "none"),
        "unfreeze": Pattern(r"head|half|all|last:\\d+", "head, last:N, half or all"),
        "time_budget": Optional(Interval(float, 0, None, low_open=True)),
    }
    validate_params(estimator.get_params(), CONSTRAINTS)

and ``validate_params`` raises :class:`ParameterError` naming the first parameter whose value
does not fit, in the Python parameter's own name (the CLI maps it to its flag).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Protocol, TypeGuard, cast

from headstart.core.errors import ParameterError


class Constraint(Protocol):
    """What a parameter may be: ``accepts(value)`` and a ``description`` for the error message."""

    @property
    def description(self) -> str: ...

    def accepts(self, value: object) -> bool: ...


def _is_int(value: object) -> TypeGuard[Integral]:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: object) -> TypeGuard[Real]:
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(float(value))


@dataclass(frozen=True)
class Interval:
    """An int (``kind=int``) or a number (``kind=float``, ints accepted) within bounds (None: open)."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def accepts(self, value: object) -> bool:
        if not (_is_int(value) if self.kind is int else _is_real(value)):
            return False
        number = cast(Real, value)  # checked just above (Integral is a Real)
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        return self.high is None or number <= self.high

    @property
    def description(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            bounds.append(f"<= {self.high}")
        return noun + (f" {' and '.join(bounds)}" if bounds else "")


class Options:
    """One of a fixed set of values (compared with ==)."""

    def __init__(self, *values: object) -> None:
        self.values = values

    def accepts(self, value: object) -> bool:
        return any(isinstance(value, type(v)) and value == v for v in self.values)

    @property
    def description(self) -> str:
        names = [repr(v) if isinstance(v, str) else str(v) for v in self.values]
        return "one of " + ", ".join(names) if len(names) > 1 else names[0]


@dataclass(frozen=True)
class Pattern:
    """A string matching ``regex`` in full (case-insensitive)."""

    regex: str
    description: str

    def accepts(self, value: object) -> bool:
        return isinstance(value, str) and re.fullmatch(self.regex, value, re.IGNORECASE) is not None


@dataclass(frozen=True)
class InstanceOf:
    """An instance of one of ``types``."""

    types: tuple[type, ...]
    description: str

    def accepts(self, value: object) -> bool:
        if bool not in self.types and isinstance(value, bool):
            return False
        return isinstance(value, self.types)


@dataclass(frozen=True)
class Check:
    """Anything ``test`` returns True for (for shapes no other constraint expresses)."""

    test: Callable[[Any], bool]
    description: str

    def accepts(self, value: object) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


class AnyOf:
    """Accepted when any of ``constraints`` accepts the value."""

    def __init__(self, *constraints: Constraint) -> None:
        self.constraints = constraints

    def accepts(self, value: object) -> bool:
        return any(c.accepts(value) for c in self.constraints)

    @property
    def description(self) -> str:
        return " or ".join(c.description for c in self.constraints)


def Optional(constraint: Constraint) -> AnyOf:  # noqa: N802 - reads like typing.Optional in a table
    """``None`` or what ``constraint`` accepts."""
    return AnyOf(Options(None), constraint)


def validate_params(values: Mapping[str, object], constraints: Mapping[str, Constraint]) -> None:
    """Raise :class:`ParameterError` for the first value its constraint does not accept.

    Args:
        values: parameter name -> value (e.g. ``estimator.get_params()``).
        constraints: parameter name -> constraint; names missing from ``values`` are skipped.
    """
    for name, constraint in constraints.items():
        if name in values and not constraint.accepts(values[name]):
            raise ParameterError(name, f"must be {constraint.description} (got {values[name]!r})")
