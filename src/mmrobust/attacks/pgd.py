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
    The result of a run is, per sample, the first misclassified iterate, or else the iterate with
    the highest loss among x^(0), ..., x^(T) (not the last one: the loss of a fixed-step ascent
    oscillates); with ``early_stop`` a sample is frozen at that first misclassified iterate and the
    run ends once every sample is. Over ``restarts`` runs each sample keeps the first successful
    result, or else the one with the highest loss.

    With ``random_start=False`` and ``restarts=1`` the iterates are exactly those of torchattacks'
    ``PGD`` (ℓ∞) and ``PGDL2`` (ℓ2) on inputs in [0, 1] (tested; torchattacks returns the last
    one); torchattacks' ℓ2 random start draws the radius uniformly in [0, ε] instead of uniformly
    in the ball's volume.

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

    def _run(
        self, obj: Objective, ctx: EvalContext, alpha: dict[str, float]
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """One PGD run: per sample the first misclassified iterate, else the highest-loss one.

        Every iterate x^(0) (the start), ..., x^(T) is scored (the gradient pass of each step gives
        its loss; x^(T) costs one forward pass). With ``early_stop`` a sample is frozen at its first
        misclassified iterate and the run ends once every sample is; without it every sample takes
        all T steps, and the returned point is the same rule's choice among them.

        Returns:
            ``(adv, loss, success)``: ``{m: (N, ...)}``, (N,) loss at ``adv`` and (N,) bool.
        """
        threat = obj.threat
        adv = obj.start(self.random_start, ctx.generator)
        best = found_x = adv
        best_loss = found_loss = None
        found = torch.zeros_like(obj.y, dtype=torch.bool)
        for t in range(self.steps + 1):
            if t < self.steps:
                loss, logits, grads = obj.loss_and_grad(adv)
                wrong = logits.argmax(1) != obj.y
            else:  # the last iterate needs no gradient
                loss, wrong = obj.score(adv)
            if best_loss is None:
                best_loss, found_loss = loss, loss
            else:
                better = loss > best_loss
                best, best_loss = _pick(better, adv, best), torch.where(better, loss, best_loss)
            first = wrong & ~found
            found_x, found_loss = _pick(first, adv, found_x), torch.where(first, loss, found_loss)
            found = found | wrong
            if t == self.steps or (self.early_stop and bool(found.all())):
                break
            new = threat.step(adv, obj.origin, grads, alpha, obj.masks)
            adv = _pick(found, adv, new) if self.early_stop else new
        return _pick(found, found_x, best), torch.where(found, found_loss, best_loss), found

    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        alpha = self.step_sizes(obj.threat)
        return best_of_runs(self.restarts, lambda: self._run(obj, ctx, alpha))
