"""Accuracy curves over a perturbation sweep (ε or severity), their area, and effective robustness.

* :class:`AccuracyCurve` accumulates per-sample correctness at P explicit x values (ε radii,
  corruption severities ...) and reports the accuracy at each x and the area under the curve by
  the trapezoid rule, by default normalised by the x range (= mean accuracy over the range).
* :class:`EffectiveRobustness` reports ER = acc_robust − β(acc_clean) against a user-supplied
  baseline β (Taori et al., NeurIPS 2020, arXiv 2007.00644; see
  :class:`~mmrobust.metrics.baseline.BaselineCurve`). No baseline numbers are built in.
* :class:`Curve` is a plain (x, accuracy) record, e.g. from
  :func:`mmrobust.metrics.results.accuracy_curve`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmrobust.errors import InputError
from mmrobust.metrics import functional as F
from mmrobust.metrics.accuracy import RobustnessSummary
from mmrobust.metrics.base import Metric
from mmrobust.utils.checks import check_flag


@dataclass
class Curve:
    """Accuracy at explicit x values (ε radii, severities), in increasing x.

    Attributes:
        x: (P,) strictly increasing x values.
        accuracy: (P,) accuracy at each x.
        conditions: Condition id behind each point (``"clean"`` for an x = 0 point built from the
            clean predictions), when known.
    """

    x: np.ndarray
    accuracy: np.ndarray
    conditions: list[str] = field(default_factory=list)

    def auc(self, normalize: bool = True) -> float:
        """Trapezoid area under the curve (normalised by the x range unless ``normalize=False``)."""
        return float(F.auc(self.x, self.accuracy, normalize=normalize))


class AccuracyCurve(Metric):
    """Accuracy at each of P explicit x values (ε or severity) and the area under that curve.

    Args:
        x: The P strictly increasing x values the columns of ``update`` correspond to.
        normalize: Divide the area by the x range (the mean accuracy over [x_first, x_last]).
        **kwargs: :class:`~mmrobust.metrics.base.Metric` options.

    Shapes:
        ``update(correct)``: (N, P) bool, column p = correct at x_p.
        ``compute()``: ``{"x": (P,), "accuracy": (P,), "auc": 0-dim}`` (float64).

    Example:
        >>> import torch
        >>> curve = AccuracyCurve([0.0, 0.1, 0.3])
        >>> curve.update(torch.tensor([[True, True, False], [True, False, False]]))
        >>> out = curve.compute()
        >>> out["accuracy"].tolist(), round(float(out["auc"]), 6)
        ([1.0, 0.5, 0.0], 0.416667)
    """

    def __init__(self, x: Sequence[float] | Tensor, *, normalize: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.x = F._check_curve_x(x)
        check_flag(normalize, "", "normalize")
        self.normalize = normalize
        self.add_state("total", torch.zeros((), dtype=torch.long), "sum")
        self.add_state("correct", torch.zeros(self.x.numel(), dtype=torch.long), "sum")

    def update(self, correct: Any) -> None:
        """Add per-sample correctness (N, P) at the P x values."""
        m, _ = F.as_correct_matrix(correct)
        if m.shape[1] != self.x.numel():
            raise InputError(f"expected one column per x value ({self.x.numel()}), got {m.shape[1]}")
        self._add("total", torch.tensor(m.shape[0]))
        self._add("correct", m.sum(0))

    def _compute(self) -> dict[str, Tensor]:
        n = int(self.state("total"))
        acc = (
            self.state("correct").double() / n if n else torch.full((self.x.numel(),), math.nan, dtype=torch.float64)
        )
        return {"x": self.x.clone(), "accuracy": acc, "auc": F.auc(self.x, acc, normalize=self.normalize)}

    def __repr__(self) -> str:
        return f"AccuracyCurve(x={self.x.tolist()}, normalize={self.normalize})"


class EffectiveRobustness(RobustnessSummary):
    """Effective robustness ER = acc_robust − β(acc_clean) against a user-chosen baseline β.

    Taori et al. (NeurIPS 2020, arXiv 2007.00644): a model is effectively robust when, under the
    shift, it beats what reference models of the same clean accuracy achieve. β comes from the user
    (a :class:`~mmrobust.metrics.baseline.BaselineCurve`, a callable, or ``(clean_points,
    robust_points)`` interpolated linearly); it is never a table stored in mmrobust.

    Args:
        baseline: β: clean accuracy -> robust accuracy of the reference models.
        robust: Which measure plays acc_robust: ``"accuracy"`` (accuracy under the condition, as
            Taori et al. use for distribution shifts) or ``"robust_accuracy"`` (correct clean and
            under the condition, the adversarial convention).
        **kwargs: :class:`~mmrobust.metrics.base.Metric` options.

    Shapes:
        ``update(clean_preds, adv_preds, target)``: (N,) or (N, K), (N,) or (N, K), (N,).
        ``compute()``: ``{"effective_robustness", "clean_accuracy", "robust", "baseline"}``
        (0-dim float64; ``baseline`` = β(clean accuracy), ``robust`` the measure used).
    """

    def __init__(self, baseline: F.Baseline, *, robust: str = "accuracy", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.baseline = F.as_baseline(baseline)
        if robust not in ("accuracy", "robust_accuracy"):
            raise InputError(f"robust must be 'accuracy' or 'robust_accuracy', got {robust!r}")
        self.robust = robust

    def _compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        s = super()._compute()
        clean, rob = s["clean_accuracy"], s[self.robust]
        beta = torch.as_tensor(self.baseline(clean), dtype=torch.float64)
        return {
            "effective_robustness": F.effective_robustness(clean, rob, self.baseline),
            "clean_accuracy": clean,
            "robust": rob,
            "baseline": beta,
        }

    def __repr__(self) -> str:
        return f"EffectiveRobustness(baseline={self.baseline!r}, robust={self.robust!r})"
