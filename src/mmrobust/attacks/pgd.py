"""PGD: projected gradient ascent on the attacked modalities, with restarts and early stop.

Madry, Makelov, Schmidt, Tsipras, Vladu. *Towards Deep Learning Models Resistant to Adversarial
Attacks*. ICLR 2018, arXiv 1706.06083. Per-sample losses ``ce``, ``cw`` (Carlini & Wagner,
arXiv 1608.04644) and ``dlr`` (Croce & Hein, arXiv 2003.01690); see
:mod:`mmrobust.attacks.gradient`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks._checks import alpha_param, check_alpha, check_restarts, given_step_sizes
from mmrobust.attacks.base import EvalContext
from mmrobust.attacks.gradient import GradientAttack, Objective, _pick, best_of_runs
from mmrobust.attacks.registry import ATTACKS
from mmrobust.attacks.threat import ResolvedThreat
from mmrobust.errors import InputError
from mmrobust.utils.checks import check_int


@ATTACKS.register()
class PGD(GradientAttack):
    """Projected gradient descent (ascent on the loss) on a dict of modalities.

    Threat model: the listed modalities move within their ε-ball (ℓ∞ or ℓ2, per modality or one
    joint ℓ2 ball over their concatenation) intersected with each valid range [spec.low,
    spec.high]; the other modalities are bit-identical.

    Algorithm, batched over samples: start at x (or, with ``random_start``, at a point drawn
    uniformly from the ball, clipped to the valid range); ``steps`` times move by α_m along sign(∇)
    (ℓ∞) or the normalised gradient (ℓ2: ∇_m/‖∇_m‖₂ per modality, or ∇_m/‖∇‖₂ over the
    concatenation for a joint budget), then project onto the ball and clip to the valid range.
    The result of a run is its last iterate; with ``early_stop`` a sample is frozen at the first
    iterate that is misclassified (so that iterate is returned). Over ``restarts`` runs each sample
    keeps the first successful result, or else the one with the highest loss.

    With ``random_start=False`` and ``restarts=1`` this is exactly torchattacks' ``PGD`` (ℓ∞) and
    ``PGDL2`` (ℓ2) on inputs in [0, 1] (tested); torchattacks' ℓ2 random start draws the radius
    uniformly in [0, ε] instead of uniformly in the ball's volume.

    Args:
        modalities: Attacked modality name, list of names, or ``"all"``.
        eps: Radius (float or ``{modality: radius}``), in each modality's input units.
        norm: ``linf``, ``l2`` or ``l0`` (ε = number of coordinates that may change per modality;
            dense steps along ∇/‖∇‖∞, then the exact projection onto box ∩ ℓ0 ball keeps the
            largest changes — a sparse PGD in the spirit of Croce & Hein, ICCV 2019).
        budget: ``per_modality`` or ``joint`` (ℓ2 only).
        steps: Number of steps T >= 1.
        alpha: Step size in input units: a float, ``{modality: step}`` (per-modality budgets), or
            ``None`` for 2.5·ε_m/T (ℓ0: a quarter of the valid range, 0.25 when unbounded).
        random_start: Start from a uniform random point of the ball.
        restarts: Number of runs (>= 1; more than one needs ``random_start``).
        loss: ``ce`` (default), ``cw`` or ``dlr`` (>= 3 classes).
        early_stop: Freeze each sample once it is misclassified (and stop when all are).
        token_surface: ``"embedding"`` to attack token-id modalities through their embeddings.

    Shapes:
        ``x[m]``: (N, *spec[m].shape); ``y``: (N,); ``info`` entries: (N,).

    Example:
        >>> import mmrobust as mr
        >>> atk = mr.attacks.create("pgd", modalities=["audio"], norm="linf", eps=0.1, steps=20)
        >>> atk.params()["alpha"]
        'auto'
    """

    name: ClassVar[str] = "pgd"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l0")

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        norm: str = "linf",
        budget: str = "per_modality",
        steps: int = 10,
        alpha: float | Mapping[str, float] | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        early_stop: bool = False,
        token_surface: str | None = None,
    ) -> None:
        super().__init__(modalities, eps=eps, norm=norm, budget=budget, loss=loss, token_surface=token_surface)
        self.steps = check_int(steps, "pgd", "steps")
        self.restarts = check_int(restarts, "pgd", "restarts")
        if not isinstance(random_start, bool) or not isinstance(early_stop, bool):
            raise InputError("pgd: random_start and early_stop must be True or False")
        check_restarts(self.restarts, random_start, "pgd")
        self.random_start = random_start
        self.early_stop = early_stop
        self.alpha = check_alpha(alpha, "pgd", self.budget, self.threat.modalities)

    def params(self) -> dict[str, Any]:
        """Threat model, loss and the PGD schedule (``alpha="auto"`` means 2.5·ε/T)."""
        return {
            **super().params(),
            "steps": self.steps,
            "alpha": alpha_param(self.alpha),
            "random_start": self.random_start,
            "restarts": self.restarts,
            "early_stop": self.early_stop,
        }

    def step_sizes(self, threat: ResolvedThreat) -> dict[str, float]:
        """Step size α_m per attacked modality (2.5·ε_m/T unless given; ℓ0: a quarter of the valid range)."""
        if self.alpha is None:
            if threat.norm == "l0":
                return {
                    m: 0.25 * (threat.high[m] - threat.low[m])
                    if threat.low[m] is not None and threat.high[m] is not None
                    else 0.25
                    for m in threat.modalities
                }
            return {m: 2.5 * threat.eps[m] / self.steps for m in threat.modalities}
        return given_step_sizes(self.alpha, threat.modalities, "pgd")

    def _run(self, obj: Objective, ctx: EvalContext, alpha: dict[str, float]) -> dict[str, Tensor]:
        """One PGD run; returns the last iterate (with early stop: per sample, the first misclassified)."""
        threat = obj.threat
        adv = obj.start(self.random_start, ctx.generator)
        frozen = torch.zeros_like(obj.y, dtype=torch.bool)
        for _ in range(self.steps):
            _, logits, grads = obj.loss_and_grad(adv)
            if self.early_stop:
                frozen |= logits.argmax(1) != obj.y
                if bool(frozen.all()):
                    break
            new = threat.step(adv, obj.origin, grads, alpha, obj.masks)
            if self.early_stop:
                new = _pick(frozen, adv, new)
            adv = new
        return adv

    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        alpha = self.step_sizes(obj.threat)

        def run() -> tuple[dict[str, Tensor], Tensor, Tensor]:
            adv = self._run(obj, ctx, alpha)
            loss, success = obj.score(adv)
            return adv, loss, success

        return best_of_runs(self.restarts, run)
