"""Minimal adversarial ε per sample, by bisection over ε (methods.md §7).

For each originally correct sample the search brackets the smallest radius at which a given attack
finds an adversarial example: the attack **failed** at ``lower`` and **succeeded** at ``upper``,
with ``upper − lower <= tol`` after enough iterations. Samples misclassified clean get
``lower = upper = 0``; samples the attack cannot break even at ``eps_max`` get
``lower = eps_max, upper = +inf``. ``upper`` is always a radius at which an adversarial example was
actually found, so it is a valid upper bound on the true minimal ε whatever the attack; the bracket
is only tight if the attack's success is monotone in ε (true for FGSM / PGD without random start on
a linear model; approximately true for strong attacks).

Two ways to run the attack at per-sample radii (``mode``):

* ``batched`` (default for the ℓ∞/ℓ2 gradient attacks of :mod:`mmrobust.attacks`): all samples
  still bisecting run **one** attack call per bisection step, each with its own radius: the
  attack's resolved threat model gets (N,) radii (projection, random start and step sizes are
  per-sample). Cost: ``1 + iterations`` attack calls per batch (fewer as samples converge).
* ``grouped`` (any condition built by a callable ``eps -> Condition``, and attacks whose
  perturbation is not per-sample, e.g. universal ones): one attack call per **distinct** radius
  among the samples still bisecting, on that sub-batch. Samples start from the same bracket, so at
  iteration k at most 2^(k−1) radii are distinct: cheap for small batches or few iterations, up to
  N calls per iteration otherwise. The attack sees smaller batches, so random starts differ from ``batched``.

Both modes give the same brackets for deterministic attacks (tested). With ``weights`` the radius
of modality m is ε·w_m (the search runs over the common scale ε).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmrobust.attacks import ATTACKS
from mmrobust.attacks.base import Condition, EvalContext
from mmrobust.attacks.gradient import GradientAttack, Objective, _validate, attack_mode
from mmrobust.attacks.threat import ThreatModel
from mmrobust.errors import InputError
from mmrobust.metrics.minimal_eps import MinimalEpsResult
from mmrobust.utils.checks import check_positive

AttackSpec = str | GradientAttack | Callable[[float], Condition]
MODES: tuple[str, ...] = ("auto", "batched", "grouped")
_BATCHED_NORMS = ("linf", "l2")
_MAX_ITERATIONS = 64


class MinimalEpsSearch:
    """Per-sample minimal adversarial ε by bisection, batched over samples.

    Threat model: the attack's own (modalities, norm, budget); only its radius varies. Per sample,
    starting from the bracket [0, ``eps_max``]: run the attack at ``eps_max`` (failure: +inf), then
    ``iterations`` times at the midpoint of the bracket, keeping the half where success changes, until
    the bracket is narrower than ``tol``. Samples misclassified clean get minimal ε = 0 and are
    never attacked. See the module docstring for the ``batched`` / ``grouped`` trade-off.

    Args:
        attack: A gradient attack name (``"fgsm"``, ``"pgd"``, ``"apgd"`` ...; built with
            ``attack_kwargs``), a :class:`~mmrobust.attacks.GradientAttack` instance used as a
            template (its radius is ignored), or a callable ``eps -> Condition`` (``grouped`` mode).
        eps_max: Upper end of the search (input units of the attacked modalities, scaled by
            ``weights``).
        iterations: Maximal number of bisection iterations (1..64); the bracket width is at most
            ``eps_max / 2**iterations``.
        tol: Stop a sample once ``upper − lower <= tol`` (default: run all ``iterations``).
        weights: ``{modality: w_m}``: modality m gets radius ε·w_m (per-modality budgets; one entry
            per attacked modality). Default: the same radius ε for every attacked modality.
        mode: ``auto`` (``batched`` for ℓ∞/ℓ2 gradient attacks with per-sample perturbations,
            else ``grouped``), ``batched`` or ``grouped``.
        **attack_kwargs: Hyper-parameters of the named attack (not ``eps``: that is searched).

    Shapes:
        ``search(model, x, y)``: ``x[m]`` (N, *shape), ``y`` (N,) -> :class:`MinimalEpsResult`
        of (N,) tensors.

    Example:
        >>> search = MinimalEpsSearch("pgd", modalities="audio", eps_max=0.5, iterations=8, steps=20)
        >>> search.mode
        'batched'
    """

    def __init__(
        self,
        attack: AttackSpec,
        *,
        eps_max: float,
        iterations: int = 10,
        tol: float | None = None,
        weights: Mapping[str, float] | None = None,
        mode: str = "auto",
        **attack_kwargs: Any,
    ) -> None:
        self.eps_max = check_positive(eps_max, "minimal_eps", "eps_max")
        if (
            isinstance(iterations, bool)
            or not isinstance(iterations, numbers.Integral)
            or not 1 <= iterations <= _MAX_ITERATIONS
        ):
            raise InputError(
                f"minimal_eps: iterations must be an integer in [1, {_MAX_ITERATIONS}], got {iterations!r}"
            )
        self.iterations = int(iterations)
        self.tol = None if tol is None else check_positive(tol, "minimal_eps", "tol")
        if mode not in MODES:
            raise InputError(f"minimal_eps: mode must be one of {MODES}, got {mode!r}")
        if "eps" in attack_kwargs:
            raise InputError("minimal_eps: do not pass eps; the search varies it from 0 to eps_max")
        self.weights = self._check_weights(weights)
        self.template: GradientAttack | None = None
        self.factory: Callable[[float], Condition] | None = None
        if isinstance(attack, str):
            cls = ATTACKS.get(attack)
            if not (isinstance(cls, type) and issubclass(cls, GradientAttack)):
                raise InputError(
                    f"minimal_eps: {attack!r} is not a gradient attack with a radius; pass a callable eps -> condition"
                )
            self.template = ATTACKS.create(attack, eps=self._eps_arg(self.eps_max), **attack_kwargs)
        elif isinstance(attack, GradientAttack):
            if attack_kwargs:
                raise InputError(f"minimal_eps: attack_kwargs {sorted(attack_kwargs)} only apply to an attack name")
            self.template = attack
        elif callable(attack):
            if attack_kwargs:
                raise InputError(f"minimal_eps: attack_kwargs {sorted(attack_kwargs)} only apply to an attack name")
            if weights is not None:
                raise InputError("minimal_eps: weights apply to gradient attacks; build them into your factory")
            self.factory = attack
        else:
            raise InputError(
                "minimal_eps: attack must be an attack name, a GradientAttack, or a callable eps -> condition; "
                f"got {type(attack).__name__}"
            )
        if self.template is not None:
            if self.template.budget == "joint" and weights is not None:
                raise InputError("minimal_eps: a joint budget has one radius; weights do not apply")
            batchable = self.template.per_sample_threat and self.template.norm in _BATCHED_NORMS
        else:
            batchable = False
        if mode == "batched" and not batchable:
            raise InputError(
                "minimal_eps: mode='batched' needs an ℓ∞/ℓ2 gradient attack with per-sample perturbations; "
                "use mode='grouped'"
            )
        self.mode = ("batched" if batchable else "grouped") if mode == "auto" else mode

    @staticmethod
    def _check_weights(weights: Mapping[str, float] | None) -> dict[str, float] | None:
        if weights is None:
            return None
        if not isinstance(weights, Mapping) or not weights:
            raise InputError(f"minimal_eps: weights must be a non-empty {{modality: weight}} dict, got {weights!r}")
        return {str(m): check_positive(w, "minimal_eps", f"weight of {m!r}") for m, w in weights.items()}

    def _eps_arg(self, eps: float) -> float | dict[str, float]:
        return eps if self.weights is None else {m: eps * w for m, w in self.weights.items()}

    def params(self) -> dict[str, Any]:
        """JSON-friendly description of the search."""
        attack = self.template.id if self.template is not None else getattr(self.factory, "__name__", "callable")
        return {
            "attack": attack,
            "eps_max": self.eps_max,
            "iterations": self.iterations,
            "tol": self.tol,
            "weights": self.weights,
            "mode": self.mode,
        }

    def __repr__(self) -> str:
        return f"MinimalEpsSearch({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    # ---------------------------------------------------------------------------------- running
    def search(
        self,
        model: Any,
        x: Mapping[str, Tensor],
        y: Tensor,
        *,
        generator: torch.Generator | None = None,
        stats: Mapping[str, Any] | None = None,
    ) -> MinimalEpsResult:
        """Bracket the minimal ε of every sample of one batch.

        Args:
            model: A :class:`~mmrobust.models.MultimodalModel` (evaluated in eval mode; its mode is
                restored afterwards).
            x: Clean batch ``{m: (N, *shape)}``.
            y: Labels (N,).
            generator: Seeded CPU generator driving the attack's randomness (default: seed 0).
            stats: Training statistics per modality, for conditions that need them (fills).

        Returns:
            A :class:`MinimalEpsResult`.
        """
        if not isinstance(y, Tensor) or y.dim() != 1:
            raise InputError(f"minimal_eps: labels must be a (N,) tensor, got {getattr(y, 'shape', type(y))}")
        ctx = EvalContext(
            stats=stats or {}, generator=generator if generator is not None else torch.Generator().manual_seed(0)
        )
        if self.template is not None:
            self.template.check(model)
        was_training = model.training
        model.eval()
        try:
            return self._bisect(model, dict(x), y, ctx)
        finally:
            model.train(was_training)

    __call__ = search

    def run(
        self, model: Any, dataset: Any, *, batch_size: int = 256, seed: int = 0, progress: bool = False
    ) -> MinimalEpsResult:
        """Search over a whole split, batch by batch (batch generators seeded as in :func:`mmrobust.evaluate`)."""
        data = dataset.select(model.modalities)
        parts = []
        total = (len(data) + batch_size - 1) // batch_size
        for x, y, idx in tqdm(data.batches(batch_size), total=total, disable=not progress, desc="minimal eps"):
            g = torch.Generator().manual_seed(seed * 1_000_003 + int(idx[0]))
            r = self.search(model, x, y, generator=g, stats=data.stats)
            r.index = idx.clone()
            parts.append(r)
        return MinimalEpsResult.concat(parts)

    def _bisect(self, model: Any, x: dict[str, Tensor], y: Tensor, ctx: EvalContext) -> MinimalEpsResult:
        n = y.shape[0]
        with torch.no_grad():
            clean_ok = (model(x).argmax(1) == y).cpu()
        lower = torch.zeros(n, dtype=torch.float64)
        upper = torch.zeros(n, dtype=torch.float64)
        calls = 0
        active = clean_ok.clone()
        idx = active.nonzero().squeeze(1)
        if idx.numel():
            ok, c = self._success(model, x, y, idx, torch.full((idx.numel(),), self.eps_max, dtype=torch.float64), ctx)
            calls += c
            top = torch.full((idx.numel(),), self.eps_max, dtype=torch.float64)
            upper[idx] = torch.where(ok, top, torch.full_like(top, math.inf))
            lower[idx] = torch.where(ok, torch.zeros_like(top), top)
            active[idx] = ok
        for _ in range(self.iterations):
            width = upper - lower
            open_ = active & (width > (self.tol if self.tol is not None else 0.0))
            idx = open_.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            mid = (lower[idx] + upper[idx]) / 2
            ok, c = self._success(model, x, y, idx, mid, ctx)
            calls += c
            upper[idx] = torch.where(ok, mid, upper[idx])
            lower[idx] = torch.where(ok, lower[idx], mid)
        return MinimalEpsResult(lower=lower, upper=upper, clean_correct=clean_ok, calls=calls)

    def _success(
        self, model: Any, x: dict[str, Tensor], y: Tensor, idx: Tensor, eps: Tensor, ctx: EvalContext
    ) -> tuple[Tensor, int]:
        """Attack success (misclassified) of samples ``idx`` at radii ``eps`` (both (n,)); and the call count."""
        dev = y.device
        sub_x = {m: t[idx.to(t.device)] for m, t in x.items()}
        sub_y = y[idx.to(dev)]
        if self.mode == "batched":
            assert self.template is not None
            return self._batched(self.template, model, sub_x, sub_y, eps, ctx).cpu(), 1
        ok = torch.zeros(idx.numel(), dtype=torch.bool)
        levels = torch.unique(eps)
        for v in levels:  # one call per distinct radius (a loop over ε levels, not over samples)
            sel = (eps == v).nonzero().squeeze(1)
            cond = self._condition(float(v))
            cond.check(model)
            xs = {m: t[sel.to(t.device)] for m, t in sub_x.items()}
            ys = sub_y[sel.to(dev)]
            out = cond.apply(model, xs, ys, ctx)
            with torch.no_grad():
                pred = model(out.x, drop=out.drop, embeddings=out.embeddings or None).argmax(1)
            ok[sel] = (pred != ys).cpu()
        return ok, int(levels.numel())

    def _condition(self, eps: float) -> Condition:
        if self.factory is not None:
            cond = self.factory(eps)
            if not isinstance(cond, Condition):
                raise InputError(f"minimal_eps: the factory must return a Condition, got {type(cond).__name__}")
            return cond
        assert self.template is not None
        clone = copy.copy(self.template)
        t = self.template.threat
        clone.threat = ThreatModel(
            t.modalities, eps=self._eps_arg(eps), norm=t.norm, budget=t.budget, token_surface=t.token_surface
        )
        clone._singles = {}  # type: ignore[attr-defined]
        reset = getattr(clone, "reset", None)
        if callable(reset):  # stateful attacks (a fitted universal δ) refit at every radius
            reset()
        return clone

    def _batched(
        self,
        attack: GradientAttack,
        model: Any,
        x: dict[str, Tensor],
        y: Tensor,
        eps: Tensor,
        ctx: EvalContext,
        each: bool = False,
    ) -> Tensor:
        """One call of ``attack`` with per-sample radii ``eps`` (n,); success flags (n,)."""
        if attack.threat.each:  # every modality alone; broken if any single-modality attack succeeds
            ok = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
            for m in attack.threat.expand(model):
                ok |= self._batched(attack.single(m), model, x, y, eps, ctx, each=True)
            return ok
        base = attack.resolve(model)
        if self.weights is not None:
            missing = [m for m in base.modalities if m not in self.weights]
            extra = [m for m in self.weights if m not in base.modalities]
            if missing or (extra and not each):
                raise InputError(
                    f"minimal_eps: weights cover {sorted(self.weights)}, but the attacked modalities are "
                    f"{list(base.modalities)}"
                )
        dtype = torch.float32 if all(t.dtype != torch.float64 for t in x.values()) else torch.float64
        radii = {
            m: (eps * (1.0 if self.weights is None else self.weights[m])).to(device=y.device, dtype=dtype)
            for m in base.modalities
        }
        threat = replace(base, eps=radii)  # (N,) radii: the threat's geometry works per sample
        with attack_mode(model):
            _validate(model, x, y, threat)
            obj = Objective(model, x, y, threat, attack.loss_function())
            adv, loss, success = attack._perturb(obj, ctx)
            out = obj.output(adv, loss, success)
        with torch.no_grad():
            pred = model(out.x, embeddings=out.embeddings or None).argmax(1)
        return pred != y


def minimal_eps(
    model: Any,
    x: Mapping[str, Tensor],
    y: Tensor,
    attack: AttackSpec,
    *,
    eps_max: float,
    iterations: int = 10,
    tol: float | None = None,
    weights: Mapping[str, float] | None = None,
    mode: str = "auto",
    generator: torch.Generator | None = None,
    **attack_kwargs: Any,
) -> MinimalEpsResult:
    """Functional form of :class:`MinimalEpsSearch` on one batch (same arguments).

    Example:
        >>> import mmrobust as mr                                                       # doctest: +SKIP
        >>> r = minimal_eps(model, x, y, "fgsm", modalities="audio", eps_max=0.5)      # doctest: +SKIP
        >>> r.upper.shape, r.median()                                                  # doctest: +SKIP
    """
    search = MinimalEpsSearch(
        attack, eps_max=eps_max, iterations=iterations, tol=tol, weights=weights, mode=mode, **attack_kwargs
    )
    return search.search(model, x, y, generator=generator)


__all__ = ["MODES", "AttackSpec", "MinimalEpsSearch", "minimal_eps"]
