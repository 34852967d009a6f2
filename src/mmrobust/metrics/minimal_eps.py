"""Minimal adversarial ε per sample (methods.md §7): the brackets and the metric that accumulates them.

:class:`MinimalEpsResult` holds, per sample, a bracket ``lower < ε* <= upper`` of the smallest radius at
which an attack breaks it; :class:`MinimalEps` accumulates brackets over batches and ranks. The
search that produces them runs attacks, so it lives with the other procedures:
:class:`mmrobust.analysis.MinimalEpsSearch` (bisection over ε) and :func:`mmrobust.analysis.minimal_eps`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmrobust.errors import InputError
from mmrobust.metrics.base import Metric


# ------------------------------------------------------------------------------------------ result
@dataclass
class MinimalEpsResult:
    """Per-sample bracket of the minimal adversarial ε.

    Attributes:
        lower: (N,) float64, a radius at which the attack failed (0 for samples misclassified clean,
            ``eps_max`` where the attack never succeeded).
        upper: (N,) float64, the smallest radius at which the attack succeeded (0 for samples
            misclassified clean, +inf where it failed at ``eps_max``).
        clean_correct: (N,) bool, correctly classified without perturbation.
        calls: Number of attack calls made (batched calls, or one per distinct radius).
        index: (N,) dataset indices when computed over a dataset, else ``None``.
    """

    lower: Tensor
    upper: Tensor
    clean_correct: Tensor
    calls: int = 0
    index: Tensor | None = None

    @property
    def eps(self) -> Tensor:
        """The minimal ε estimate per sample: ``upper`` (an adversarial example exists there)."""
        return self.upper

    @property
    def found(self) -> Tensor:
        """(N,) bool: an adversarial example was found within ``eps_max`` (or the sample was wrong clean)."""
        return torch.isfinite(self.upper)

    def median(self) -> float:
        """Lower median of ``upper`` over the originally correct samples (+inf if most are never broken)."""
        v = self.upper[self.clean_correct]
        if v.numel() == 0:
            return math.nan
        return float(v.sort().values[(v.numel() - 1) // 2])

    def robust_accuracy(self, eps: float | Tensor, bound: str = "upper") -> Tensor:
        """Accuracy-vs-ε curve implied by the brackets.

        ``bound="upper"``: a sample counts as robust at ε when it is correct clean and
        ``upper > ε`` (the attack found nothing at or below ε, up to the bracket width);
        ``bound="lower"``: only when ``lower >= ε`` (the attack was seen to fail at a radius >= ε).
        For a monotone attack the accuracy of the attack at ε lies between the two.

        Args:
            eps: A radius or (P,) radii.
            bound: ``upper`` or ``lower``.

        Returns:
            float64 tensor of the shape of ``eps``.
        """
        e = torch.as_tensor(eps, dtype=torch.float64)
        if bound == "upper":
            ok = self.upper[:, None] > e.reshape(1, -1)
        elif bound == "lower":
            ok = self.lower[:, None] >= e.reshape(1, -1)
        else:
            raise InputError(f"bound must be 'upper' or 'lower', got {bound!r}")
        ok = ok & self.clean_correct[:, None]
        n = self.upper.numel()
        out = ok.double().sum(0) / n if n else torch.full((e.numel(),), math.nan, dtype=torch.float64)
        return out.reshape(e.shape)

    @staticmethod
    def concat(parts: list[MinimalEpsResult]) -> MinimalEpsResult:
        """Join per-batch results in order."""
        if not parts:
            z = torch.zeros(0, dtype=torch.float64)
            return MinimalEpsResult(z, z.clone(), torch.zeros(0, dtype=torch.bool))
        idx = [p.index for p in parts]
        return MinimalEpsResult(
            lower=torch.cat([p.lower for p in parts]),
            upper=torch.cat([p.upper for p in parts]),
            clean_correct=torch.cat([p.clean_correct for p in parts]),
            calls=sum(p.calls for p in parts),
            index=torch.cat(idx) if all(i is not None for i in idx) else None,  # type: ignore[arg-type]
        )


# ------------------------------------------------------------------------------------------ search


# ------------------------------------------------------------------------------------------ metric
class MinimalEps(Metric):
    """Accumulates per-sample minimal-ε brackets over batches (and ranks, concatenated in rank order).

    Shapes:
        ``update(result)``: a :class:`MinimalEpsResult`, or ``(lower, upper, clean_correct)`` (N,) each.
        ``compute()``: a :class:`MinimalEpsResult` over every sample seen (``median()``,
        ``robust_accuracy(eps)``).

    Example:
        >>> import torch
        >>> m = MinimalEps()
        >>> m.update((torch.tensor([0.0, 0.25]), torch.tensor([0.0, 0.5]), torch.tensor([False, True])))
        >>> m.compute().median()
        0.5
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("lower", torch.zeros(0, dtype=torch.float64), "cat")
        self.add_state("upper", torch.zeros(0, dtype=torch.float64), "cat")
        self.add_state("clean_correct", torch.zeros(0, dtype=torch.bool), "cat")

    def update(self, result: MinimalEpsResult | tuple[Tensor, Tensor, Tensor]) -> None:
        """Add one batch's brackets."""
        if isinstance(result, MinimalEpsResult):
            lower, upper, clean = result.lower, result.upper, result.clean_correct
        else:
            lower, upper, clean = (torch.as_tensor(v) for v in result)
        if not (lower.dim() == 1 and lower.shape == upper.shape == clean.shape):
            raise InputError(
                f"lower, upper and clean_correct must be (N,) each, got {tuple(lower.shape)}, "
                f"{tuple(upper.shape)}, {tuple(clean.shape)}"
            )
        if clean.dtype != torch.bool:
            raise InputError(f"clean_correct must be boolean, got {clean.dtype}")
        self._add("lower", lower)
        self._add("upper", upper)
        self._add("clean_correct", clean)

    def _compute(self) -> MinimalEpsResult:
        return MinimalEpsResult(
            lower=self.state("lower"), upper=self.state("upper"), clean_correct=self.state("clean_correct")
        )
