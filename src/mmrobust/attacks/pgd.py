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
from mmrobust.attacks.gradient import GradientAttack, Objective, best_of_runs
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
    oscillates). A sample is not stepped further once it is misclassified (its result is fixed),
    so each step computes gradients for the samples still correctly classified only, and the run
    ends once every sample is misclassified. Over ``restarts`` runs each sample keeps the first
    successful result, or else the one with the highest loss.

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
        early_stop: Kept for configs that set it: a misclassified sample is always frozen at its
            first misclassified iterate (the result does not depend on this flag).
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
        self, obj: Objective, ctx: EvalContext, alpha: dict[str, Any]
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """One PGD run: per sample the first misclassified iterate, else the highest-loss one.

        Every iterate x^(0) (the start), ..., x^(T) is scored (the gradient pass of each step gives
        its loss; x^(T) costs one forward pass). A sample's result is fixed at its first
        misclassified iterate, so from there on it is not stepped any more: each step computes
        gradients for the samples still correctly classified only (the same result as stepping
        every sample T times, at a fraction of the cost once most are broken), and the run ends
        once every sample is misclassified. ``early_stop`` names this behaviour; it is always on.

        Returns:
            ``(adv, loss, success)``: ``{m: (N, ...)}``, (N,) loss at ``adv`` and (N,) bool.
        """
        adv = obj.start(self.random_start, ctx.generator)
        n = obj.y.shape[0]
        out = {m: v.clone() for m, v in adv.items()}  # per sample: first misclassified, else best so far
        out_loss: Tensor | None = None
        found = torch.zeros(n, dtype=torch.bool, device=obj.y.device)
        active = torch.arange(n, device=obj.y.device)  # rows still correctly classified
        sub, cur, step = obj, adv, alpha
        for t in range(self.steps + 1):
            if t < self.steps:
                loss, logits, grads = sub.loss_and_grad(cur)
                wrong = logits.argmax(1) != sub.y
            else:  # the last iterate needs no gradient
                loss, wrong = sub.score(cur)
            if out_loss is None:
                out_loss = loss.clone()
                take = torch.ones_like(wrong)
            else:
                take = wrong | (loss > out_loss[active])
            rows = active[take]
            for m in out:
                out[m][rows] = cur[m][take]
            out_loss[rows] = loss[take]
            found[active[wrong]] = True
            if t == self.steps or bool(wrong.all()):
                break
            if bool(wrong.any()):  # drop the broken rows from the rest of the run
                keep = ~wrong
                active = active[keep]
                cur = {m: v[keep] for m, v in cur.items()}
                grads = {m: g[keep] for m, g in grads.items()}
                sub = obj.subset(active)
                step = {m: _rows_of(a, active, n) for m, a in alpha.items()}
            cur = sub.threat.step(cur, sub.origin, grads, step, sub.masks)
        assert out_loss is not None
        return out, out_loss, found

    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        alpha = self.step_sizes(obj.threat)
        return best_of_runs(self.restarts, lambda: self._run(obj, ctx, alpha))


def _rows_of(value: Any, rows: Tensor, n: int) -> Any:
    """A step size restricted to ``rows``: per-sample tensors (N, ...) are indexed, scalars kept."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[rows]
    return value
