"""Checks that only attacks need: restarts, step sizes, and the clean batch an attack starts from.

Number validators live in :mod:`mmrobust.utils.checks` (one message shape for the whole package).
The step-size helpers serve the attacks whose ``alpha`` is a float, a ``{modality: step}`` dict or
``None`` (a default derived from ε).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mmrobust.errors import InputError
from mmrobust.utils.checks import check_positive


# ------------------------------------------------------------------------------------------ runs
def check_restarts(restarts: int, random_start: bool, who: str) -> None:
    """More than one run only makes sense from random starts (the runs would be identical otherwise)."""
    if restarts > 1 and not random_start:
        raise InputError(f"{who}: restarts > 1 without random_start would repeat the same run; set random_start=True")


# ------------------------------------------------------------------------------------------ step sizes
def check_alpha(
    alpha: object, who: str, budget: str, modalities: str | Sequence[str]
) -> float | dict[str, float] | None:
    """A step size: ``None`` (the attack's default), a float > 0, or ``{modality: step > 0}``.

    Args:
        alpha: The value given by the user.
        who: Attack name for the messages.
        budget: The threat's budget; a ``joint`` ball takes one step size.
        modalities: The threat's attacked modalities (a list must match the dict's keys; ``"all"``
            and ``"each"`` are checked against the model later).
    """
    if alpha is None:
        return None
    if isinstance(alpha, Mapping):
        if budget == "joint":
            raise InputError(f"{who}: a joint budget takes one step size alpha (a float), not a dict")
        out = {str(m): check_positive(v, who, f"alpha for modality {m!r}") for m, v in alpha.items()}
        if not isinstance(modalities, str) and set(out) != set(modalities):
            raise InputError(f"{who}: alpha must give one step per attacked modality {modalities}, got {out}")
        return out
    return check_positive(alpha, who, "alpha")


def alpha_param(alpha: float | Mapping[str, float] | None) -> Any:
    """``alpha`` as shown in ``params()``: ``"auto"``, the float, or ``"m1:a1/m2:a2"``."""
    if alpha is None:
        return "auto"
    if isinstance(alpha, Mapping):
        return "/".join(f"{k}:{v:g}" for k, v in alpha.items())
    return alpha


def given_step_sizes(alpha: float | Mapping[str, float], modalities: Sequence[str], who: str) -> dict[str, float]:
    """``{m: α_m}`` for the attacked ``modalities`` from a user-given float or dict ``alpha``."""
    if isinstance(alpha, Mapping):
        missing = [m for m in modalities if m not in alpha]
        if missing:
            raise InputError(f"{who}: alpha has no step for attacked modality {missing}")
        return {m: alpha[m] for m in modalities}
    return dict.fromkeys(modalities, alpha)


# ------------------------------------------------------------------------------------------ batches
def check_batch(
    model: Any,
    x: Mapping[str, Tensor],
    y: object,
    bounds: Mapping[str, tuple[float | None, float | None]],
    *,
    prefix: str = "",
    range_note: str = "",
) -> int:
    """Validate a clean batch, its labels, and the attacked modalities' values once; the batch size N.

    Args:
        model: The model (its ``spec`` validates ``x``; ``num_classes`` bounds the labels).
        x: Clean batch ``{m: (N, *shape)}``.
        y: Labels, an integer tensor of shape (N,) in [0, K).
        bounds: ``{m: (low, high)}`` valid range of each attacked modality (``None``: unbounded).
        prefix: Put before every message (e.g. ``"decoupling: "``).
        range_note: Appended to the out-of-range message.
    """
    n = model.spec.validate_batch(x)
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != n:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise InputError(f"{prefix}labels must be a tensor of shape ({n},) matching the batch, got {shape}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        raise InputError(f"{prefix}labels must be integer class ids, got dtype {y.dtype}")
    if n and (int(y.min()) < 0 or int(y.max()) >= model.num_classes):
        raise InputError(f"{prefix}labels must lie in [0, {model.num_classes}), got [{int(y.min())}, {int(y.max())}]")
    for m, (lo, hi) in bounds.items():
        t = x[m]
        if n and ((lo is not None and float(t.min()) < lo) or (hi is not None and float(t.max()) > hi)):
            raise InputError(
                f"{prefix}modality {m!r}: clean inputs lie in [{float(t.min()):g}, {float(t.max()):g}], outside the "
                f"valid range [{lo}, {hi}] of its spec{range_note}"
            )
    return n
