"""APGD: step-size-free projected gradient ascent with momentum and step halving at checkpoints.

Croce, Hein. *Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks*. ICML 2020, arXiv 2003.01690 (Algorithm 1, "Auto-PGD"). Here it runs on a
dict of modalities through the shared :class:`~mmrobust.attacks.gradient.Objective` and
:class:`~mmrobust.attacks.threat.ResolvedThreat` (ℓ∞ or ℓ2 per modality, one joint ℓ2 ball, token
embeddings with their pad masks); every decision is taken per sample on the batch at once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks._checks import check_restarts
from mmrobust.attacks.base import EvalContext
from mmrobust.attacks.gradient import GradientAttack, Objective, RunFn, _pick, on_survivors
from mmrobust.attacks.registry import ATTACKS
from mmrobust.attacks.threat import _per_sample
from mmrobust.errors import InputError
from mmrobust.utils.checks import check_flag, check_int

MOMENTUM = 0.75  # α of the paper (weight of the new step; 1 − α goes to the previous move)


def checkpoints(steps: int) -> tuple[int, ...]:
    """The iterations at which APGD may halve its step size.

    w_j = ⌈p_j · T⌉ for p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), kept
    while w_j ≤ T (Croce & Hein 2020, §3.2). The intervals shrink from 22 % of the budget to 6 %;
    repeated values (small T) are listed once.

    Args:
        steps: The iteration budget T >= 1.

    Returns:
        Increasing iteration indices, starting with 0 (e.g. T = 100: 0, 22, 41, 57, 70, 80, 87, 93, 99).

    Raises:
        InputError: if ``steps`` is not an integer >= 1.
    """
    check_int(steps, "apgd", "steps")
    out = [0]
    p_prev, p = 0.0, 0.22
    while True:
        # Round before ⌈·⌉: 0.22 + 0.19 is 0.41000000000000003 in floating point, not 0.41.
        w = math.ceil(round(p * steps, 9))
        if w > steps:
            return tuple(out)
        if w > out[-1]:
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)


@dataclass
class APGDRun:
    """One APGD run on a batch (one start point), per sample.

    Attributes:
        x: The returned variables ``{m: (N, ...)}``: per sample the first misclassified iterate,
            or else the iterate with the highest loss.
        loss: (N,) attack loss at ``x``.
        success: (N,) bool, ``x`` is misclassified.
        losses: (T' + 1, N) loss f(x^(t)) of every iterate t = 0..T' (before any restart from the
            best point); T' < T when every sample was misclassified before the budget ran out.
        halved: (C, N) bool, whether each sample's step size was halved at each checkpoint reached
            (``checkpoints``).
        checkpoints: The C checkpoint iterations reached (0 < w < T).
        step_scale: (N,) final step size relative to its start: η_m = 2·ε_m · step_scale.
    """

    x: dict[str, Tensor]
    loss: Tensor
    success: Tensor
    losses: Tensor
    halved: Tensor
    checkpoints: tuple[int, ...]
    step_scale: Tensor


@ATTACKS.register()
class APGD(GradientAttack):
    """Auto-PGD (APGD; Croce & Hein, ICML 2020, arXiv 2003.01690) on a dict of modalities.

    Threat model: the listed modalities move within their ε-ball (ℓ∞ or ℓ2, per modality or one
    joint ℓ2 ball over their concatenation) intersected with each valid range [spec.low,
    spec.high]; the other modalities are bit-identical. Token-id modalities are attacked through
    their token embeddings with ``token_surface="embedding"`` (pad positions never move).

    Algorithm (per sample, batched), with P the projection onto the ball and the valid range and
    d(∇) the steepest-ascent direction (sign(∇) for ℓ∞, ∇_m/‖∇_m‖₂ for ℓ2, ∇_m/‖∇‖₂ over the
    concatenation for a joint budget):

    * start at x^(0) (the clean input or, with ``random_start``, a uniform point of the ball);
      step size η_m = 2·ε_m per modality (2ε for a joint budget);
    * x^(1) = P(x^(0) + η·d(∇f(x^(0)))); then z^(k+1) = P(x^(k) + η·d(∇f(x^(k)))) and
      x^(k+1) = P(x^(k) + α(z^(k+1) − x^(k)) + (1 − α)(x^(k) − x^(k−1))) with α = 0.75;
    * at each checkpoint w_j (see :func:`checkpoints`) η is halved for the samples where
      (1) at most ρ·(w_j − w_{j−1}) of the steps since the last checkpoint increased the loss, or
      (2) η was not halved at the previous checkpoint and the best loss has not improved since;
      those samples restart from their best point (with its gradient). The loss is shared by the
      modalities, so one decision per sample scales every modality's η.

    The result of a run is, per sample, the first misclassified iterate, or else the highest-loss
    one; a run stops once every sample has been misclassified (the result cannot change any
    more). Restarts run, as in AutoAttack, only on the samples that every earlier run left
    correctly classified, each from a new random start drawn from ``ctx.generator``; a sample
    keeps its first successful result, or else the one with the highest loss (as in PGD).
    ``steps`` counts gradient evaluations, as for PGD (plus one forward pass on the last iterate).

    Checked against the paper and AutoAttack's code (``autopgd_base.py``): initial step η = 2ε,
    momentum 0.75 from the second step on, the ℓ2 step ∇/‖∇‖₂ with the projection after both the
    step and the momentum, the checkpoint schedule (the code's integer schedule, 22 % of T then
    intervals shrinking by 3 % of T down to 6 % of T, gives the same checkpoints as the paper's
    formula at T = 100), the restart from the best point with its gradient after a halving. Where
    the two differ we follow the code: condition (1) tests "at most ρ·h" (the paper: fewer than),
    and condition (2) is not tested at the first checkpoint (the code starts as if η had just been
    halved). Our choices where both are silent or the code's bookkeeping is an artefact:
    condition (1) compares each step with the point it started from, i.e. the best point after a
    restart (the paper's x^(k+1) ← x_max; the code compares with the replaced iterate, and the
    first step of the first interval with 0); the random start is uniform in the ball (the code
    starts on its surface); the first misclassified iterate is returned (the code keeps the last
    one). For T ≠ 100 the checkpoints follow the paper's formula (the code's integer rounding
    gives e.g. 11, 21, 30, 38, 45 at T = 50 instead of 11, 21, 29, 35, 40, 44, 47, 50).

    Args:
        modalities: Attacked modality name, list of names, ``"all"``, or ``"each"`` (every modality
            attacked alone, worst case per sample; handled by :class:`GradientAttack`).
        eps: Radius (float or ``{modality: radius}``), in each modality's input units.
        norm: ``linf`` or ``l2``.
        budget: ``per_modality`` or ``joint`` (ℓ2 only).
        steps: Iteration budget T >= 1 (the paper uses 100).
        restarts: Number of runs (>= 1; more than one needs ``random_start``).
        random_start: Start each run from a uniform random point of the ball (as the paper does).
        loss: ``ce`` (default), ``cw`` or ``dlr`` (>= 3 classes; APGD-DLR of the paper).
        rho: Fraction ρ in [0, 1] of loss-increasing steps below which η is halved (paper: 0.75).
        token_surface: ``"embedding"`` to attack token-id modalities through their embeddings.

    Shapes:
        ``x[m]``: (N, *spec[m].shape); ``y``: (N,); ``info`` entries: (N,).

    Example:
        >>> import mmrobust as mr
        >>> atk = mr.attacks.create("apgd", modalities="audio", eps=0.03, steps=100, loss="dlr")
        >>> atk.id
        'apgd[audio|norm=linf,eps=0.03,budget=per_modality,loss=dlr,steps=100,random_start=True,restarts=1,rho=0.75]'
    """

    name: ClassVar[str] = "apgd"

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        norm: str = "linf",
        budget: str = "per_modality",
        steps: int = 100,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        rho: float = 0.75,
        token_surface: str | None = None,
    ) -> None:
        super().__init__(modalities, eps=eps, norm=norm, budget=budget, loss=loss, token_surface=token_surface)
        self.steps = check_int(steps, "apgd", "steps")
        self.restarts = check_int(restarts, "apgd", "restarts")
        self.random_start = check_flag(random_start, "apgd", "random_start")
        check_restarts(self.restarts, random_start, "apgd")
        if (
            isinstance(rho, bool)
            or not isinstance(rho, numbers.Real)
            or not math.isfinite(float(rho))
            or not 0.0 <= float(rho) <= 1.0
        ):
            raise InputError(f"apgd: rho must be a number in [0, 1], got {rho!r}")
        self.rho = float(rho)

    def params(self) -> dict[str, Any]:
        """Threat model, loss and the APGD schedule."""
        return {
            **super().params(),
            "steps": self.steps,
            "random_start": self.random_start,
            "restarts": self.restarts,
            "rho": self.rho,
        }

    def run(self, obj: Objective, start: Mapping[str, Tensor]) -> APGDRun:
        """One APGD run from ``start`` (Algorithm 1 of the paper, batched over samples).

        Args:
            obj: The batch's objective (built by :meth:`apply`; tests may build one directly).
            start: Start point ``{m: x^(0)_m}`` inside the threat model (e.g. ``obj.origin``).

        Returns:
            An :class:`APGDRun` with the returned point, its loss and success, and the traces.
        """
        threat, y, masks = obj.threat, obj.y, obj.masks
        steps = self.steps
        marks = [w for w in checkpoints(steps) if 0 < w < steps]
        n = y.shape[0]
        scale = torch.ones(n, dtype=torch.float32, device=y.device)  # η_m = 2·ε_m · scale, per sample

        x = {m: start[m].detach() for m in threat.modalities}
        x_prev = x
        loss, logits, grad = obj.loss_and_grad(x)
        best, best_loss, best_grad = x, loss, grad
        found = logits.argmax(1) != y  # a misclassified iterate was met
        found_x, found_loss = x, loss

        increases = torch.zeros(n, dtype=torch.long, device=y.device)
        best_at_mark = best_loss
        # AutoAttack's code starts with "halved at the last checkpoint": no condition 2 at w_1
        halved_at_mark = torch.ones(n, dtype=torch.bool, device=y.device)
        last_mark = 0
        losses, halved, reached = [loss], [], []

        for t in range(1, steps + 1):
            if bool(found.all()):
                break
            d = threat.direction(grad, masks)
            z = threat.project(
                {m: x[m] + _per_sample(2.0 * threat.eps[m] * scale, x[m]) * d[m] for m in x}, obj.origin, masks
            )
            if t == 1:
                new = z
            else:
                new = threat.project(
                    {m: x[m] + MOMENTUM * (z[m] - x[m]) + (1.0 - MOMENTUM) * (x[m] - x_prev[m]) for m in x},
                    obj.origin,
                    masks,
                )
            if t < steps:
                new_loss, logits, new_grad = obj.loss_and_grad(new)
                wrong = logits.argmax(1) != y
            else:  # the last iterate needs no gradient
                new_loss, wrong = obj.score(new)
                new_grad = grad

            increases += (new_loss > loss).long()
            better = new_loss > best_loss
            best, best_grad = _pick(better, new, best), _pick(better, new_grad, best_grad)
            best_loss = torch.where(better, new_loss, best_loss)
            first = wrong & ~found
            found_x, found_loss = _pick(first, new, found_x), torch.where(first, new_loss, found_loss)
            found = found | wrong
            x_prev, x, loss, grad = x, new, new_loss, new_grad
            losses.append(new_loss)

            if t in marks:
                halve = halving(increases, t - last_mark, self.rho, best_loss, best_at_mark, halved_at_mark)
                scale = torch.where(halve, 0.5 * scale, scale)
                x, grad = _pick(halve, best, x), _pick(halve, best_grad, grad)
                loss = torch.where(halve, best_loss, loss)
                increases = torch.zeros_like(increases)
                best_at_mark, halved_at_mark, last_mark = best_loss, halve, t
                halved.append(halve)
                reached.append(t)

        return APGDRun(
            x=_pick(found, found_x, best),
            loss=torch.where(found, found_loss, best_loss),
            success=found,
            losses=torch.stack(losses),
            halved=torch.stack(halved) if halved else torch.zeros(0, n, dtype=torch.bool, device=y.device),
            checkpoints=tuple(reached),
            step_scale=scale,
        )

    def run_fn(self, ctx: EvalContext) -> RunFn:
        """One run from a fresh start point (drawn from ``ctx.generator``), as :func:`on_survivors` takes it."""

        def one(sub: Objective) -> tuple[dict[str, Tensor], Tensor, Tensor]:
            r = self.run(sub, sub.start(self.random_start, ctx.generator))
            return r.x, r.loss, r.success

        return one

    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        return on_survivors(obj, [self.run_fn(ctx)] * self.restarts)


def halving(
    increases: Tensor,
    interval: int,
    rho: float,
    best_loss: Tensor,
    best_at_last: Tensor,
    halved_at_last: Tensor,
) -> Tensor:
    """APGD's per-sample decision at a checkpoint: halve the step size or not.

    Condition 1: at most ρ·h of the h = w_j − w_{j−1} steps since the last checkpoint increased
    the loss (AutoAttack's code tests ≤; the paper writes <). Condition 2: η was not halved at the
    last checkpoint and the best loss has not improved since (Croce & Hein 2020, §3.2).

    Args:
        increases: (N,) number of loss-increasing steps since the last checkpoint.
        interval: h, the number of steps since the last checkpoint.
        rho: ρ in [0, 1].
        best_loss: (N,) best loss now.
        best_at_last: (N,) best loss at the last checkpoint.
        halved_at_last: (N,) bool, halved at the last checkpoint.

    Returns:
        (N,) bool, halve η (and restart from the best point).
    """
    return (increases.double() <= rho * interval) | (~halved_at_last & (best_loss <= best_at_last))
