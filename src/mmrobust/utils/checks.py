"""Validators of hyper-parameters and options, shared by every part of mmrobust.

Each check raises :class:`~mmrobust.errors.InputError` with one message shape,
``"<who>: <what> must be ..., got <value>"`` (``who`` names the attack, defence, metric or loader;
empty for messages without a prefix), and returns the value converted to a plain Python number.
``bool`` is never accepted as a number; NumPy integers and floats are.
"""

from __future__ import annotations

import math
import numbers

from mmrobust.errors import InputError


def _prefix(who: str) -> str:
    return f"{who}: " if who else ""


def check_int(v: object, who: str, what: str, *, minimum: int | None = 1, note: str = "") -> int:
    """An integer >= ``minimum`` (``None``: any integer); ``note`` is appended to the requirement."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (minimum is not None and v < minimum):
        need = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise InputError(f"{_prefix(who)}{what} must be {need}{note}, got {v!r}")
    return int(v)


def check_number(
    v: object,
    who: str,
    what: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    note: str = "",
) -> float:
    """A finite real number within the given bounds (``above``/``below`` strict, ``at_least``/``at_most`` not)."""
    ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(float(v))
    if ok:
        f = float(v)
        ok = ((above is None or f > above) and (at_least is None or f >= at_least)
              and (below is None or f < below) and (at_most is None or f <= at_most))
    if not ok:
        bounds = [f"{op} {b:g}" for op, b in ((">", above), (">=", at_least), ("<", below), ("<=", at_most))
                  if b is not None]
        need = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
        raise InputError(f"{_prefix(who)}{what} must be {need}{note}, got {v!r}")
    return float(v)


def check_positive(v: object, who: str, what: str, *, above: float = 0.0, note: str = "") -> float:
    """A finite real number > ``above``; ``note`` is appended to the requirement."""
    return check_number(v, who, what, above=above, note=note)


def check_nonnegative(v: object, who: str, what: str, *, note: str = "") -> float:
    """A finite real number >= 0."""
    return check_number(v, who, what, at_least=0.0, note=note)


def check_fraction(v: object, who: str, what: str, *, closed: bool = False) -> float:
    """A number in [0, 1) (``closed``: [0, 1])."""
    return check_number(v, who, what, at_least=0.0, **({"at_most": 1.0} if closed else {"below": 1.0}))


def check_flag(v: object, who: str, what: str) -> bool:
    """``True`` or ``False`` exactly."""
    if not isinstance(v, bool):
        raise InputError(f"{_prefix(who)}{what} must be True or False, got {v!r}")
    return v


def check_seed(v: object, who: str = "") -> int:
    """A non-negative integer seed."""
    return check_int(v, who, "seed", minimum=0)


__all__ = ["check_flag", "check_fraction", "check_int", "check_nonnegative", "check_number", "check_positive",
           "check_seed"]
