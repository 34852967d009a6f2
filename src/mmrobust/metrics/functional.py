"""Functional twins of the robustness metrics: one call on whole tensors, no state.

Each function computes on one set of per-sample results what the matching
:class:`~mmrobust.metrics.base.Metric` computes after ``update`` calls over its batches (tested).
Inputs are torch tensors (numpy arrays and lists are accepted); predictions are class ids (N,) or
scores (N, K), of which the argmax is taken; labels are (N,) class ids. Scalars come back as 0-dim
float64 tensors, NaN when the denominator is empty.

Conventions (methods.md §7):

* clean accuracy: fraction of samples classified correctly without perturbation;
* accuracy under a condition: fraction correct on the perturbed inputs;
* robust accuracy: fraction correct **both** clean and under the condition (RobustBench's
  convention, where only clean-correct points are attacked); it differs from the accuracy under
  the condition only for samples that the perturbation happens to fix;
* attack success rate (ASR): over the *originally correct* samples, the fraction the condition
  turns wrong — #(clean correct ∧ perturbed wrong) / #(clean correct);
* worst case over conditions (modalities or attacks), per sample: correct under every one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmrobust.errors import InputError
from mmrobust.metrics.baseline import BaselineCurve
from mmrobust.metrics.matrix import modality_perturbation_matrix
from mmrobust.utils.checks import check_flag

Baseline = BaselineCurve | Callable[[Tensor], Any] | tuple[Sequence[float], Sequence[float]]


# ------------------------------------------------------------------------------------- helpers
def _tensor(v: Any, what: str) -> Tensor:
    if isinstance(v, Tensor):
        return v.detach()
    try:
        return torch.as_tensor(np.asarray(v))
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be a tensor or array, got {type(v).__name__}") from e


def as_labels(preds: Any, what: str = "preds") -> Tensor:
    """Class ids (N,) from class ids (N,) or scores (N, K) (argmax)."""
    p = _tensor(preds, what)
    if p.dim() == 2:
        return p.argmax(1)
    if p.dim() != 1:
        raise InputError(f"{what} must be class ids (N,) or scores (N, K), got shape {tuple(p.shape)}")
    if p.dtype.is_floating_point or p.dtype.is_complex or p.dtype == torch.bool:
        raise InputError(f"{what} given as (N,) must be integer class ids, got dtype {p.dtype}")
    return p.long()


def correct(preds: Any, target: Any) -> Tensor:
    """Per-sample correctness (N,) bool of predictions against labels."""
    p = as_labels(preds)
    t = as_labels(target, "target")
    if p.shape != t.shape:
        raise InputError(f"preds and target must hold one entry per sample: {p.shape[0]} vs {t.shape[0]}")
    return p.cpu() == t.cpu()


def _clean_adv(clean_preds: Any, adv_preds: Any, target: Any) -> tuple[Tensor, Tensor]:
    c, a = correct(clean_preds, target), correct(adv_preds, target)
    return c, a


def _ratio(num: Tensor | int, den: Tensor | int) -> Tensor:
    d = float(den)
    return torch.tensor(float(num) / d if d else math.nan, dtype=torch.float64)


def as_correct_matrix(correct_: Any) -> tuple[Tensor, list[str] | None]:
    """Per-sample correctness under A conditions as (N, A) bool, from (N, A) or ``{name: (N,)}``.

    Returns:
        The (N, A) matrix and the condition names (``None`` when given a matrix).
    """
    if isinstance(correct_, Mapping):
        if not correct_:
            raise InputError("no conditions given: the mapping of per-sample correctness is empty")
        names = [str(k) for k in correct_]
        cols = [_tensor(v, f"correctness of {k!r}") for k, v in correct_.items()]
        shapes = {tuple(c.shape) for c in cols}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise InputError(f"every condition needs one (N,) correctness vector, got shapes {sorted(shapes)}")
        return torch.stack([c.bool().cpu() for c in cols], 1), names
    m = _tensor(correct_, "correct")
    if m.dim() != 2:
        raise InputError(f"per-sample correctness must be (N, A) with one column per condition, got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        raise InputError(f"per-sample correctness must be boolean, got dtype {m.dtype}")
    return m.cpu(), None


# ------------------------------------------------------------------------------------- accuracy
def accuracy(preds: Any, target: Any) -> Tensor:
    """Fraction of samples whose prediction equals the label (clean accuracy on clean predictions)."""
    ok = correct(preds, target)
    return _ratio(ok.sum(), ok.numel())


def robust_accuracy(clean_preds: Any, adv_preds: Any, target: Any) -> Tensor:
    """Fraction of samples correct both clean and under the condition."""
    c, a = _clean_adv(clean_preds, adv_preds, target)
    return _ratio((c & a).sum(), c.numel())


def attack_success_rate(clean_preds: Any, adv_preds: Any, target: Any) -> Tensor:
    """#(clean correct ∧ perturbed wrong) / #(clean correct); NaN when no sample was correct."""
    c, a = _clean_adv(clean_preds, adv_preds, target)
    return _ratio((c & ~a).sum(), c.sum())


def worst_case(correct_: Any) -> Tensor:
    """Per-sample worst case (N,) bool: correct under every condition (columns of (N, A) or a mapping)."""
    m, _ = as_correct_matrix(correct_)
    return m.all(1)


def worst_case_accuracy(correct_: Any, clean: Any | None = None) -> Tensor:
    """Fraction of samples correct under every condition (and clean, if ``clean`` (N,) bool is given)."""
    m, _ = as_correct_matrix(correct_)
    w = m.all(1)
    if clean is not None:
        w = w & _check_clean(clean, m.shape[0])
    return _ratio(w.sum(), w.numel())


def first_failure(correct_: Any) -> Tensor:
    """Per sample, the index of the first condition under which it is wrong, or -1 (N,) long."""
    m, _ = as_correct_matrix(correct_)
    wrong = ~m
    idx = wrong.long().argmax(1)
    return torch.where(wrong.any(1), idx, torch.full_like(idx, -1))


def _check_clean(clean: Any, n: int) -> Tensor:
    c = _tensor(clean, "clean").cpu()
    if c.dtype != torch.bool or c.shape != (n,):
        raise InputError(f"clean must be a boolean (N,) = ({n},) correctness vector, got {c.dtype} {tuple(c.shape)}")
    return c


# ------------------------------------------------------------------------------------- curves
def _check_curve_x(x: Any) -> Tensor:
    xs = _tensor(x, "x").to(torch.float64)
    if xs.dim() != 1 or xs.numel() < 2:
        raise InputError(f"x must be a 1-D sequence of at least 2 values, got shape {tuple(xs.shape)}")
    if not bool(torch.isfinite(xs).all()):
        raise InputError(f"x values must be finite, got {xs.tolist()}")
    if not bool((xs[1:] > xs[:-1]).all()):
        raise InputError(f"x values must be strictly increasing, got {xs.tolist()}")
    return xs


def auc(x: Any, y: Any, *, normalize: bool = True) -> Tensor:
    """Area under a curve y(x) by the trapezoid rule, with explicit x values.

    Area = Σ_i (x_{i+1} − x_i)·(y_i + y_{i+1})/2. With ``normalize`` it is divided by the x range
    x_last − x_first, i.e. the mean of y over [x_first, x_last] (an accuracy, in [0, 1], for an
    accuracy curve). Include x = 0 (clean accuracy) yourself if the area should start at ε = 0.

    Args:
        x: (P,) strictly increasing, finite (e.g. ε values or severities).
        y: (..., P) values at x (e.g. accuracies); NaN propagates.
        normalize: Divide by the x range.

    Returns:
        (...) float64 tensor.
    """
    check_flag(normalize, "", "normalize")
    xs = _check_curve_x(x)
    ys = _tensor(y, "y").to(torch.float64)
    if ys.dim() == 0 or ys.shape[-1] != xs.numel():
        raise InputError(f"y must have {xs.numel()} values along its last axis (one per x), got {tuple(ys.shape)}")
    dx = xs[1:] - xs[:-1]
    area = (dx * (ys[..., 1:] + ys[..., :-1]) / 2).sum(-1)
    return area / (xs[-1] - xs[0]) if normalize else area


def accuracy_curve(correct_: Any) -> Tensor:
    """Accuracy at each x of a sweep from per-sample correctness (N, P) bool -> (P,) float64."""
    m, _ = as_correct_matrix(correct_)
    n = m.shape[0]
    return m.sum(0).double() / n if n else torch.full((m.shape[1],), math.nan, dtype=torch.float64)


def as_baseline(baseline: Baseline) -> Callable[[Tensor], Any]:
    """A :class:`BaselineCurve`, a callable, or ``(clean_points, robust_points)`` (interpolated) as a callable."""
    if isinstance(baseline, BaselineCurve) or (callable(baseline) and not isinstance(baseline, tuple)):
        return baseline
    if isinstance(baseline, tuple) and len(baseline) == 2:
        return BaselineCurve(baseline[0], baseline[1])
    raise InputError(
        "baseline must be a BaselineCurve, a callable clean_accuracy -> robust_accuracy, or a pair "
        f"(clean_points, robust_points); got {type(baseline).__name__}"
    )


def effective_robustness(clean_acc: Any, robust_acc: Any, baseline: Baseline) -> Tensor:
    """Effective robustness ER = acc_robust − β(acc_clean) (Taori et al., NeurIPS 2020, arXiv 2007.00644).

    Args:
        clean_acc: Clean accuracy (scalar or any shape).
        robust_acc: Robust accuracy, same shape (accuracy under the shift or attack).
        baseline: β, the robust accuracy the user's reference models reach at a clean accuracy:
            a :class:`BaselineCurve`, a callable, or ``(clean_points, robust_points)`` linearly
            interpolated (NaN outside their clean range).

    Returns:
        float64 tensor of the broadcast shape; > 0 means more robust than the baseline predicts.
    """
    beta = as_baseline(baseline)
    c = _tensor(clean_acc, "clean_acc").to(torch.float64)
    r = _tensor(robust_acc, "robust_acc").to(torch.float64)
    b = beta(c)
    b = b.to(torch.float64) if isinstance(b, Tensor) else torch.as_tensor(b, dtype=torch.float64)
    return r - b


__all__ = [
    "accuracy",
    "accuracy_curve",
    "as_baseline",
    "as_correct_matrix",
    "as_labels",
    "attack_success_rate",
    "auc",
    "correct",
    "effective_robustness",
    "first_failure",
    "modality_perturbation_matrix",
    "robust_accuracy",
    "worst_case",
    "worst_case_accuracy",
]
