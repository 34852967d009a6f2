"""Baseline curves β(clean accuracy) → robust accuracy, for effective robustness.

Effective robustness (Taori, Dave, Shankar, Carlini, Recht, Schmidt. *Measuring Robustness to
Natural Distribution Shifts in Image Classification*. NeurIPS 2020, arXiv 2007.00644) is the robust
accuracy a model reaches **beyond** what a baseline family of models with the same clean accuracy
reaches: ER = acc_robust − β(acc_clean). The baseline β is always supplied by the user: a callable,
or (clean, robust) accuracy pairs of reference models, linearly interpolated or fitted by a line,
on a linear or a logit scale (Taori et al. fit a line on logit-scaled axes). No reference numbers
are stored in mmrobust.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mmrobust.errors import InputError
from mmrobust.utils.checks import check_flag

METHODS: tuple[str, ...] = ("interpolate", "fit")
SCALES: tuple[str, ...] = ("linear", "logit")
_CLAMP = 1e-6  # accuracies are clamped to [1e-6, 1 − 1e-6] before a logit


def _forward(a: Tensor, scale: str) -> Tensor:
    if scale == "linear":
        return a
    a = a.clamp(_CLAMP, 1 - _CLAMP)
    return torch.log(a) - torch.log1p(-a)


def _inverse(t: Tensor, scale: str) -> Tensor:
    return t if scale == "linear" else torch.sigmoid(t)


class BaselineCurve:
    """β: the robust accuracy expected from reference models at a given clean accuracy.

    Built from user-given points (c_i, r_i) of reference models:

    * ``method="interpolate"``: piecewise-linear interpolation through the points sorted by clean
      accuracy (in the chosen scale); outside [min c_i, max c_i] the value is NaN, or with
      ``extrapolate=True`` the end segments are extended.
    * ``method="fit"``: the least-squares line r = a·c + b through the points (in the chosen
      scale), defined everywhere; Taori et al. (NeurIPS 2020) fit it with ``scale="logit"``.

    With ``scale="logit"`` both axes go through logit(p) = log(p/(1−p)) (accuracies clamped to
    [1e-6, 1 − 1e-6]) and the result comes back through the sigmoid.

    Args:
        clean: Clean accuracies of the reference models, in [0, 1].
        robust: Their robust accuracies (same length), in [0, 1].
        method: ``interpolate`` (needs >= 2 distinct clean accuracies) or ``fit`` (needs >= 2 points
            with distinct clean accuracies).
        scale: ``linear`` or ``logit``.
        extrapolate: ``interpolate`` only: extend the end segments instead of returning NaN.

    Shapes:
        ``baseline(clean_acc)``: any shape -> the same shape (float64).

    Example:
        >>> beta = BaselineCurve([0.6, 0.8, 0.9], [0.2, 0.4, 0.5])
        >>> round(float(beta(0.7)), 6)
        0.3
    """

    def __init__(
        self,
        clean: Sequence[float] | Tensor,
        robust: Sequence[float] | Tensor,
        *,
        method: str = "interpolate",
        scale: str = "linear",
        extrapolate: bool = False,
    ) -> None:
        if method not in METHODS:
            raise InputError(f"baseline method must be one of {METHODS}, got {method!r}")
        if scale not in SCALES:
            raise InputError(f"baseline scale must be one of {SCALES}, got {scale!r}")
        check_flag(extrapolate, "", "extrapolate")
        c = torch.as_tensor(clean, dtype=torch.float64).reshape(-1)
        r = torch.as_tensor(robust, dtype=torch.float64).reshape(-1)
        if c.shape != r.shape:
            raise InputError(f"baseline needs as many robust as clean accuracies, got {c.numel()} and {r.numel()}")
        for name, v in (("clean", c), ("robust", r)):
            if not bool(torch.isfinite(v).all()) or bool(((v < 0) | (v > 1)).any()):
                raise InputError(f"baseline {name} accuracies must be finite numbers in [0, 1], got {v.tolist()}")
        if int(torch.unique(c).numel()) < 2:
            raise InputError(f"a baseline needs points with at least 2 distinct clean accuracies, got {c.tolist()}")
        if method == "interpolate" and int(torch.unique(c).numel()) != c.numel():
            raise InputError(
                f"interpolation needs distinct clean accuracies, got repeated values in {c.tolist()}; "
                "use method='fit' for a trend line through them"
            )
        self.method = method
        self.scale = scale
        self.extrapolate = extrapolate
        order = torch.argsort(c)
        self.clean = c[order]
        self.robust = r[order]
        tc, tr = _forward(self.clean, scale), _forward(self.robust, scale)
        if method == "fit":
            cm, rm = tc.mean(), tr.mean()
            slope = ((tc - cm) * (tr - rm)).sum() / (tc - cm).square().sum()
            self.slope, self.intercept = float(slope), float(rm - slope * cm)
        self._tc, self._tr = tc, tr

    def __call__(self, clean_acc: float | Sequence[float] | Tensor) -> Tensor:
        """β(clean_acc), elementwise (float64 tensor)."""
        a = torch.as_tensor(clean_acc, dtype=torch.float64)
        t = _forward(a, self.scale)
        if self.method == "fit":
            return _inverse(self.slope * t + self.intercept, self.scale)
        tc, tr = self._tc, self._tr
        seg = torch.searchsorted(tc, t.reshape(-1).contiguous(), right=True).clamp(1, tc.numel() - 1) - 1
        x0, x1, y0, y1 = tc[seg], tc[seg + 1], tr[seg], tr[seg + 1]
        out = y0 + (t.reshape(-1) - x0) * (y1 - y0) / (x1 - x0)
        if not self.extrapolate:
            inside = (t.reshape(-1) >= tc[0]) & (t.reshape(-1) <= tc[-1])
            out = torch.where(inside, out, torch.full_like(out, math.nan))
        return _inverse(out, self.scale).reshape(a.shape)

    def __repr__(self) -> str:
        return (
            f"BaselineCurve(points={self.clean.numel()}, method={self.method!r}, scale={self.scale!r}, "
            f"extrapolate={self.extrapolate})"
        )
