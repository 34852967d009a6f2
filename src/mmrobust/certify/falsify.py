"""Try to break certificates: attack every sample with PGD-ℓ2 inside its own certified radius.

A ``sound`` certificate (Yang et al., CRMT, ICLR 2024, arXiv 2402.06244; ``methods.md`` §3) must
survive every attack; an ``empirical`` one may not, and how often it fails is a finding.

Threat model: ℓ2, one joint ball over the concatenation of the listed modalities (or the ball of
one modality), of radius ``scale`` × the sample's certified radius, intersected with each
modality's valid range (clipping only makes the attack weaker than the certificate's threat, so a
flip is still a violation). The attack tries to change the model's clean **prediction**
(labels = predictions; CW margin loss by default), with random starts, restarts and early stop.
Two methods:

* ``per_sample`` (default): the toolkit's PGD (:class:`~mmrobust.attacks.pgd.PGD`: same random start,
  steps α = 2.5 ε/T, projection, restarts and early stop) run once on the whole batch with a
  per-sample radius tensor in its resolved threat model (the threat geometry of
  :mod:`mmrobust.attacks.threat` is batched over per-sample radii).
* ``bins``: the registered ``pgd`` attack unchanged, which takes one ε per run: samples are grouped
  into geometric bins of radii (each bin spans a factor ``bin_ratio``) and every bin is attacked at
  ``scale`` × its smallest radius, i.e. each sample at [scale / bin_ratio, scale] × its own radius.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmrobust.attacks.base import EvalContext
from mmrobust.attacks.gradient import LOSSES, Objective, _validate, attack_mode
from mmrobust.attacks.pgd import PGD
from mmrobust.attacks.threat import ResolvedThreat
from mmrobust.errors import InputError

METHODS: tuple[str, ...] = ("per_sample", "bins")


@dataclass
class FalsificationResult:
    """Per-sample outcome of attacking inside certified radii (CPU tensors of shape (N,)).

    Attributes:
        attacked: The sample had a finite radius > 0 and was attacked.
        eps: ℓ2 radius of the sample's attack (0 where not attacked).
        flipped: The attack changed the model's prediction.
        norm: Achieved ℓ2 norm of the perturbation (joint over the attacked modalities).
        runs: Number of PGD runs (1 for ``per_sample``, the number of radius bins for ``bins``).
    """

    attacked: Tensor
    eps: Tensor
    flipped: Tensor
    norm: Tensor
    runs: int

    @property
    def violations(self) -> int:
        """Number of samples whose prediction changed inside their radius."""
        return int(self.flipped.sum())


class _PerSamplePGD(PGD):
    """PGD whose resolved threat carries an (N,) radius tensor; step sizes 2.5·ε_i/T per sample."""

    ndims: dict[str, int]

    def step_sizes(self, threat: ResolvedThreat) -> dict[str, Any]:
        return {
            m: (2.5 * threat.eps[m] / self.steps).reshape(-1, *([1] * (self.ndims[m] - 1)))
            for m in threat.modalities
        }


def _bins(r: Tensor, ratio: float) -> list[Tensor]:
    order = torch.argsort(r, stable=True)
    groups: list[list[int]] = []
    lo = None
    for i in order.tolist():  # one pass over the sorted radii, to form the bins
        if lo is None or float(r[i]) > lo * ratio:
            groups.append([])
            lo = float(r[i])
        groups[-1].append(i)
    return [torch.tensor(g, dtype=torch.long) for g in groups]


def attack_within_radius(
    model: Any,
    x: Mapping[str, Tensor],
    radius: Tensor,
    *,
    modalities: str | Sequence[str],
    scale: float = 0.999,
    steps: int = 50,
    restarts: int = 3,
    loss: str = "cw",
    method: str = "per_sample",
    bin_ratio: float = 1.02,
    seed: int = 0,
) -> FalsificationResult:
    """Attack each sample with PGD-ℓ2 at (just under) its certified radius and report prediction changes.

    Args:
        model: The certified model.
        x: Dict batch ``{m: (N, *shape)}`` (attacked modalities inside their valid ranges).
        radius: (N,) certified radii for this threat: the joint radius when ``modalities`` lists several
            modalities (one ℓ2 ball over their concatenation), the single-modality radius otherwise.
            Samples with radius 0 or ∞ are not attacked.
        modalities: One modality name (single-modality ℓ2 ball) or a list (joint ℓ2 ball).
        scale: Fraction of the radius to attack at (0 < scale <= 1).
        steps: PGD steps per run.
        restarts: PGD restarts (random starts).
        loss: PGD loss: ``cw`` (default; the margin max_{k≠y} s_k − s_y, which drives the iterate across the
            nearest decision boundary) or ``ce``/``dlr``. On a linear model with radii overstated by 5 %,
            PGD-CW finds every violation while PGD-CE, which climbs towards all wrong classes at once,
            misses about a quarter (tests/test_certify.py).
        method: ``per_sample`` (one run, exact per-sample radii) or ``bins`` (the registered ``pgd``
            attack per radius bin).
        bin_ratio: Radii within this factor share one run (``bins`` only; > 1).
        seed: Seed of the random starts.

    Returns:
        A :class:`FalsificationResult`.

    Raises:
        InputError: bad hyper-parameters, a radius of the wrong length, a malformed batch.
    """
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < float(scale) <= 1:
        raise InputError(f"scale must lie in (0, 1], got {scale!r}")
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(bin_ratio, bool) or not isinstance(bin_ratio, numbers.Real) or not (
        math.isfinite(float(bin_ratio)) and float(bin_ratio) > 1
    ):
        raise InputError(f"bin_ratio must be a finite number > 1, got {bin_ratio!r}")
    mods = [modalities] if isinstance(modalities, str) else list(modalities)
    if not mods:
        raise InputError("modalities must name at least one modality")
    n = model.spec.validate_batch(x)
    r = torch.as_tensor(radius, dtype=torch.float64).reshape(-1).cpu()
    if r.shape[0] != n:
        raise InputError(f"radius must have one entry per sample ({n}), got {tuple(r.shape)}")
    hp = {"steps": steps, "restarts": restarts, "random_start": True, "early_stop": True, "loss": loss}
    with attack_mode(model):
        with torch.no_grad():
            pred = model(x).argmax(1)
        todo = (r > 0) & torch.isfinite(r)
        idx_all = torch.nonzero(todo).flatten()
        eps_used = torch.zeros(n, dtype=torch.float64)
        flipped = torch.zeros(n, dtype=torch.bool)
        norm = torch.zeros(n, dtype=torch.float64)
        if method == "per_sample":
            groups = [idx_all] if idx_all.numel() else []
        else:
            groups = [idx_all[g] for g in _bins(r[idx_all], float(bin_ratio))] if idx_all.numel() else []
        for b, idx in enumerate(groups):  # one PGD run per radius bin (a single run for per_sample)
            dev = idx.to(pred.device)
            xb = {m: t[dev] for m, t in x.items()}
            yb = pred[dev]
            ctx = EvalContext(stats={}, generator=torch.Generator().manual_seed(seed * 100003 + b))
            if method == "per_sample":
                eps = float(scale) * r[idx]
                out = _per_sample_pgd(model, xb, yb, eps, mods, hp, ctx)
            else:
                eps = torch.full((idx.numel(),), float(scale) * float(r[idx].min()), dtype=torch.float64)
                budget = {"budget": "joint"} if len(mods) > 1 else {}
                atk = PGD(mods if len(mods) > 1 else mods[0], eps=float(eps[0]), norm="l2", **budget, **hp)
                out = atk.apply(model, xb, yb, ctx)
            with torch.no_grad():
                new = model(out.x).argmax(1)
            flipped[idx] = (new != yb).cpu()
            key = "norm/joint" if len(mods) > 1 else f"norm/{mods[0]}"
            norm[idx] = out.info[key].double().cpu()
            eps_used[idx] = eps
    return FalsificationResult(attacked=todo, eps=eps_used, flipped=flipped, norm=norm, runs=len(groups))


def _per_sample_pgd(
    model: Any, x: dict[str, Tensor], y: Tensor, eps: Tensor, mods: list[str], hp: dict[str, Any], ctx: EvalContext
) -> Any:
    """The toolkit's PGD with an (N,) radius: one joint ℓ2 ball over ``mods`` (or one modality's ball)."""
    budget = "joint" if len(mods) > 1 else "per_modality"
    atk = _PerSamplePGD(mods if len(mods) > 1 else mods[0], eps=1.0, norm="l2", budget=budget, **hp)
    threat = atk.resolve(model)
    e = eps.to(device=y.device, dtype=x[mods[0]].dtype)
    threat = dataclasses.replace(threat, eps=dict.fromkeys(threat.modalities, e))
    _validate(model, x, y, threat)
    obj = Objective(model, x, y, threat, LOSSES[atk.loss])
    atk.ndims = {m: obj.origin[m].dim() for m in threat.modalities}
    adv, loss, success = atk._perturb(obj, ctx)
    return obj.output(adv, loss, success)
