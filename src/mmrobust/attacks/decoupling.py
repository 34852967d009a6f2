"""MUROAN's decoupling attack: a sparse (ℓ0-budgeted) attack on the fused representation.

Vishwamitra, Hu, Zhao, Cheng, Luo. *Understanding and Measuring Robustness of Multimodal Learning*.
arXiv 2112.12792 (2021). MUROAN views a multimodal model as a fusion-embedding generator Φ(x)
followed by a task predictor; its decoupling attack changes a small fraction of input coordinates so
that the fused representation stops agreeing with the modalities, and reports 100 % success while
touching about 1.16 % of the input in the worst case. The paper does not publish the exact
objective or search, so this module implements **our operationalisation** (methods.md §1.1):

* Threat model: x' = (1 − M) ⊙ x + M ⊙ v with a binary mask M over the coordinates of the attacked
  (continuous) modalities and values v inside each modality's valid range; the unattacked
  modalities are bit-identical. The budget is ρ = ‖M‖₀ / D_total with D_total the number of
  coordinates of all attacked modalities; it is also logged per modality as ‖M_m‖₀ / D_m.
* Objectives (maximised): ``ce`` (cross-entropy of the fused output), ``embedding``
  (‖Φ(x') − Φ(x)‖₂ or 1 − cos(Φ(x'), Φ(x)) with Φ(x) = ``model.fuse(z)[0]``), ``cross_modal``
  (move the fused prediction away from the reference prediction r that the model makes with the
  attacked modalities replaced by a neutral fill, i.e. make the fusion follow the corrupted stream).
* Greedy saliency search, batched over samples: score every coordinate not yet in M by
  |∇_x L ⊙ (v₀ − x)|, add the top ones to M, optimise v on M with a few projected sign-gradient
  steps, check success; the mask grows geometrically until success or ρ_max. ``search="random"``
  is the baseline that adds uniformly random coordinates on the same schedule with the same v
  optimisation, so the two can be compared at equal ρ.

Success is misclassification of the fused output for every objective (so attack success rates are
comparable across objectives). :func:`asr_curve` turns per-sample minimal ρ into the ASR-vs-ρ curve
and the median minimal ρ.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmrobust.attacks._checks import check_batch
from mmrobust.attacks.base import Condition, ConditionOutput, EvalContext
from mmrobust.attacks.gradient import attack_mode
from mmrobust.attacks.missing import fill_modality
from mmrobust.attacks.registry import ATTACKS
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.base import require_hook
from mmrobust.utils.checks import check_int, check_positive

OBJECTIVES: tuple[str, ...] = ("ce", "embedding", "cross_modal")
SEARCHES: tuple[str, ...] = ("saliency", "random")
V0_RULES: tuple[str, ...] = ("gradient", "far")
DISTANCES: tuple[str, ...] = ("l2", "cos")
REFERENCE_FILLS: tuple[str, ...] = ("mean", "zeros", "drop")

#: Half-width, in training standard deviations around the training mean, of the range used for a
#: modality whose spec leaves a side of its valid range unbounded (the attack needs end points).
UNBOUNDED_STDS = 3.0
#: The ``embedding`` objective is minimal (zero gradient) at x' = x; the first saliency round takes
#: its gradient at x + EMBEDDING_PROBE · (far end − x) instead.
EMBEDDING_PROBE = 1e-2


def mask_schedule(d_total: int, rho_max: float, s0: int, growth: float) -> list[int]:
    """Cumulative mask sizes ‖M‖₀ of the search rounds.

    k₀ = min(s0, K_max) and k_{t+1} = min(K_max, max(k_t + 1, ⌈growth · k_t⌉)) until K_max =
    ⌊ρ_max · D_total⌋ is reached, so ρ at the rounds grows geometrically and never exceeds ρ_max.

    Args:
        d_total: Number of attackable coordinates per sample.
        rho_max: Largest fraction of them the attack may change.
        s0: Mask size of the first round.
        growth: Geometric growth factor (> 1).

    Returns:
        Strictly increasing sizes; empty when ρ_max · D_total < 1.

    Example:
        >>> mask_schedule(1000, 0.02, 2, 2.0)
        [2, 4, 8, 16, 20]
    """
    cap = math.floor(rho_max * d_total + 1e-9)
    if cap < 1:
        return []
    ks = [min(s0, cap)]
    while ks[-1] < cap:
        ks.append(min(cap, max(ks[-1] + 1, math.ceil(growth * ks[-1] - 1e-9))))
    return ks


def asr_curve(
    min_rho: Any,
    success: Any,
    grid: Sequence[float] | Any,
    clean_correct: Any | None = None,
) -> tuple[np.ndarray, float]:
    """Attack success rate as a function of the ℓ0 budget ρ, and the median minimal ρ.

    The denominator is the **originally correct** samples (the project's ASR convention, as in
    :func:`mmrobust.evaluate`). Pass ``clean_correct``; without it, the samples misclassified before
    any change (``success`` with ρ = 0, which is what :class:`Decoupling` records for them) are the
    originally wrong ones.

    Args:
        min_rho: (N,) per-sample ρ of the first success (``info["rho"]``), numpy or torch.
        success: (N,) bool per-sample success (``info["success"]``).
        grid: ρ values at which to evaluate the curve.
        clean_correct: Optional (N,) bool, correctly classified on the clean input.

    Returns:
        ``(asr, median)``: ``asr[j]`` = fraction of originally correct samples with success and
        minimal ρ ≤ ``grid[j]`` (NaN where none is correct); ``median`` = median minimal ρ over the
        originally correct samples, failures counting as +∞ (so it is ∞ when fewer than half
        succeed; NaN when none is correct).

    Example:
        >>> asr, med = asr_curve([0.0, 0.01, 0.03, 0.05], [True, True, True, False], [0.01, 0.02, 0.05])
        >>> asr.tolist(), med
        ([0.3333333333333333, 0.3333333333333333, 0.6666666666666666], 0.03)
    """
    rho = _as_numpy(min_rho, "min_rho").astype(np.float64)
    ok = _as_numpy(success, "success").astype(bool)
    g = _as_numpy(grid, "grid").astype(np.float64)
    if rho.ndim != 1 or ok.shape != rho.shape:
        raise InputError(
            f"asr_curve: min_rho and success must be (N,) arrays of one length, got {rho.shape}, {ok.shape}"
        )
    if g.ndim != 1:
        raise InputError(f"asr_curve: grid must be a 1-d sequence of ρ values, got shape {g.shape}")
    if clean_correct is None:
        correct = ~(ok & (rho == 0))
    else:
        correct = _as_numpy(clean_correct, "clean_correct").astype(bool)
        if correct.shape != rho.shape:
            raise InputError(f"asr_curve: clean_correct must have shape {rho.shape}, got {correct.shape}")
    n = int(correct.sum())
    if n == 0:
        return np.full(g.shape, np.nan), math.nan
    hit = ok[correct]
    r = rho[correct]
    asr = ((hit[None, :]) & (r[None, :] <= g[:, None])).sum(1) / n
    median = float(np.median(np.where(hit, r, np.inf)))
    return asr.astype(np.float64), median


def _as_numpy(v: Any, what: str) -> np.ndarray:
    if isinstance(v, Tensor):
        return v.detach().cpu().numpy()
    try:
        return np.asarray(v)
    except Exception as e:  # pragma: no cover - defensive
        raise InputError(f"asr_curve: {what} must be array-like, got {type(v).__name__}") from e


@ATTACKS.register()
class Decoupling(Condition):
    """MUROAN's sparse decoupling attack (Vishwamitra et al., arXiv 2112.12792), our operationalisation.

    Threat model (ℓ0): at most ⌊ρ_max · D_total⌋ coordinates of the attacked modalities change, each
    to any value inside its modality's valid range [spec.low, spec.high]; D_total counts the
    coordinates of all attacked modalities, which share one budget (the search decides where to
    spend it). Other modalities are bit-identical. Token-id modalities are refused (their ids are not
    continuous coordinates; attack them with ``pgd`` and ``token_surface="embedding"``).
    ``modalities="all"`` means every continuous modality of the model. A side of a valid range that
    the spec leaves unbounded is replaced by the training mean ± 3 standard deviations
    (``ctx.stats``), per coordinate.

    Search, batched over samples (no Python loop over samples): the cumulative mask size follows
    :func:`mask_schedule` (s0, then ×``growth`` per round, capped at ρ_max). In each round, for the
    samples not yet successful, (1) the gradient g = ∇_x L at the current x' scores every coordinate
    outside M by |g ⊙ (v₀ − x)| (``search="saliency"``) or by a uniform random number from
    ``ctx.generator`` (``search="random"``), and the top ones join M with v = v₀; (2) ``steps``
    projected steps v ← clip(v + α·sign(∇_v L)) on M, α = ``step_size`` × the range width. Success
    is checked before every step and after the last one; a successful sample is frozen at that
    point (so its ρ is the minimal ρ the search found). v₀ (``v0``): ``"gradient"`` (default) — the
    range end the gradient points to (high where g > 0, low where g < 0), the end that maximises the
    first-order gain g·(v₀ − x) over the range; ``"far"`` — the range end farther from x, the most
    extreme change available.

    Objectives L (maximised; ``objective``):
        * ``ce``: cross-entropy of the fused logits.
        * ``embedding``: ‖Φ(x') − Φ(x)‖₂ (``distance="l2"``) or 1 − cos(Φ(x'), Φ(x)) (``"cos"``),
          Φ = ``model.fuse(z)[0]`` (the fused logits for late fusion). Its gradient vanishes at
          x' = x, so the first saliency round takes it at x + 10⁻²·(far end − x).
        * ``cross_modal``: let r be the prediction with the attacked modalities replaced by a
          neutral ``fill`` (``mean``: training mean, ``zeros``, or ``drop`` for fusions that accept
          absent modalities) — the vote of the clean streams. L = −log(p_y + p_r) for r ≠ y and
          −log p_y for r = y (the cross-entropy against the set {y, r}): it equals ``ce`` where the
          clean streams are right, and where they are wrong it pushes the fused output away from
          both the label and their vote. (The sum CE(s, y) + CE(s, r) would not do: it grows without
          bound as p_y → 1.) Needs at least one unattacked modality.

    Per-sample ``info`` (each (N,)): ``success`` (bool: the returned batch is misclassified — the
    same for every objective), ``rho`` (fraction of the D_total attacked coordinates that differ
    from x: the minimal ρ found for successes, the ρ spent for failures), ``rho/<m>`` (fraction of
    modality m's coordinates that changed), ``loss`` (objective at the returned point) and, for
    ``cross_modal``, ``decoupled`` (bool: the fused prediction differs from the clean streams'
    reference prediction r). Samples misclassified before any change have success and ρ = 0.

    Args:
        modalities: Attacked modality name, list of names, or ``"all"`` (continuous ones).
        objective: ``ce``, ``embedding`` or ``cross_modal``.
        rho_max: Largest fraction of the attacked coordinates that may change, in (0, 1].
        s0: Mask size (coordinates) of the first round, >= 1.
        growth: Geometric growth factor of the mask size per round, > 1.
        steps: Projected steps on v per round (>= 0; 0 keeps v = v₀).
        step_size: Step α as a fraction of each coordinate's range width, > 0.
        search: ``saliency`` or ``random`` (the baseline).
        v0: ``gradient`` or ``far`` (initial value of newly masked coordinates).
        distance: ``l2`` or ``cos`` (``embedding`` objective only).
        fill: ``mean``, ``zeros`` or ``drop`` (``cross_modal`` objective only).

    Shapes:
        ``apply(model, x, y, ctx)``: ``x[m]`` (N, *spec[m].shape), ``y`` (N,) ->
        :class:`~mmrobust.attacks.base.ConditionOutput` with ``x`` of the same shapes.

    Example:
        >>> import mmrobust as mr
        >>> atk = mr.attacks.create("decoupling", modalities="audio", rho_max=0.02)
        >>> atk.id
        'decoupling[audio|objective=ce,rho_max=0.02,s0=1,growth=1.5,steps=5,step_size=0.25,search=saliency,v0=gradient]'
    """

    name: ClassVar[str] = "decoupling"
    family: ClassVar[str] = "attack"

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        objective: str = "ce",
        rho_max: float = 0.05,
        s0: int = 1,
        growth: float = 1.5,
        steps: int = 5,
        step_size: float = 0.25,
        search: str = "saliency",
        v0: str = "gradient",
        distance: str = "l2",
        fill: str = "mean",
    ) -> None:
        if isinstance(modalities, str):
            modalities = [modalities]
        if not isinstance(modalities, (list, tuple)):
            raise InputError(f"decoupling: modalities must be a name, a list of names or 'all', got {modalities!r}")
        if "all" in modalities and len(modalities) > 1:
            raise InputError(f"decoupling: 'all' cannot appear inside a list of modalities, got {list(modalities)}")
        super().__init__(list(modalities))
        _choice(objective, OBJECTIVES, "objective")
        _choice(search, SEARCHES, "search")
        _choice(v0, V0_RULES, "v0")
        _choice(distance, DISTANCES, "distance")
        _choice(fill, REFERENCE_FILLS, "fill")
        if isinstance(rho_max, bool) or not isinstance(rho_max, numbers.Real) or not 0 < float(rho_max) <= 1:
            raise InputError(f"decoupling: rho_max must be a fraction in (0, 1], got {rho_max!r}")
        self.s0 = check_int(s0, "decoupling", "s0", note=" (coordinates in the first round)")
        self.growth = check_positive(growth, "decoupling", "growth", above=1.0)
        self.steps = check_int(steps, "decoupling", "steps", minimum=0)
        self.step_size = check_positive(step_size, "decoupling", "step_size", note=" (a fraction of the range)")
        self.objective = objective
        self.rho_max = float(rho_max)
        self.search = search
        self.v0 = v0
        self.distance = distance
        self.fill = fill

    def params(self) -> dict[str, Any]:
        """Hyper-parameters (``distance`` only for ``embedding``, ``fill`` only for ``cross_modal``)."""
        out: dict[str, Any] = {
            "modalities": list(self.modalities),
            "objective": self.objective,
            "rho_max": self.rho_max,
            "s0": self.s0,
            "growth": self.growth,
            "steps": self.steps,
            "step_size": self.step_size,
            "search": self.search,
            "v0": self.v0,
        }
        if self.objective == "embedding":
            out["distance"] = self.distance
        if self.objective == "cross_modal":
            out["fill"] = self.fill
        return out

    # ------------------------------------------------------------------------------------ checks
    def resolve(self, model: Any) -> list[str]:
        """The attacked modalities of ``model``, in the model's order.

        Raises:
            InputError: unknown modality, token ids or a non-perturbable modality, no continuous
                modality for ``"all"``, ``cross_modal`` without an unattacked modality.
            UnsupportedError: ``fill="drop"`` on a fusion that needs every modality.
        """
        spec = model.spec
        if self.modalities == ["all"]:
            mods = [m for m in model.modalities if not spec[m].is_tokens and spec[m].perturbable]
            if not mods:
                raise InputError(f"decoupling: the model has no continuous modality to attack ({model.modalities})")
        else:
            for m in self.modalities:
                if m not in model.modalities:
                    raise InputError(f"decoupling: unknown modality {m!r}; the model has {model.modalities}")
                if spec[m].is_tokens:
                    raise InputError(
                        f"decoupling: modality {m!r} holds token ids; the decoupling attack changes continuous "
                        "coordinates only — attack text with 'pgd' and token_surface='embedding' instead"
                    )
                if not spec[m].perturbable:
                    raise InputError(f"decoupling: modality {m!r} is marked not perturbable in its spec")
            mods = [m for m in model.modalities if m in self.modalities]
        if self.objective == "cross_modal":
            if len(mods) >= len(model.modalities):
                raise InputError(
                    "decoupling: objective='cross_modal' compares with the prediction of the unattacked modalities; "
                    f"it needs at least one modality left unattacked (attacked: {mods})"
                )
            if self.fill == "drop" and not model.supports_drop:
                raise UnsupportedError(
                    f"decoupling: fusion {model.fusion_name!r} cannot drop modalities; use fill='mean' or 'zeros'"
                )
        return mods

    def check(self, model: Any) -> None:
        """Raise a clear error if this attack cannot run on ``model`` (it needs the fused embedding Φ)."""
        require_hook(model, "decoupling", "fuse")
        self.resolve(model)

    # ------------------------------------------------------------------------------------ attack
    def apply(self, model: Any, x: dict[str, Tensor], y: Tensor, ctx: EvalContext) -> ConditionOutput:
        """Attack the clean batch ``x`` with labels ``y``.

        Args:
            model: The model under attack (eval mode with frozen parameters during the attack; its
                modes and flags are restored afterwards).
            x: Clean batch ``{m: (N, *shape)}``; attacked modalities must lie in their valid range.
            y: Labels (N,).
            ctx: Evaluation context: ``ctx.generator`` drives ``search="random"``; ``ctx.stats``
                gives the neutral fill of ``cross_modal`` and the range of unbounded modalities.

        Returns:
            A :class:`~mmrobust.attacks.base.ConditionOutput` whose ``x`` is the adversarial batch
            and whose ``info`` holds the per-sample results listed in the class docstring.
        """
        mods = self.resolve(model)
        with attack_mode(model):
            problem = _Problem(self, model, x, y, mods, ctx)
            adv = self._search(problem, ctx)
            return problem.output(adv)

    @torch.no_grad()
    def objective_value(
        self, model: Any, x: dict[str, Tensor], x_adv: Mapping[str, Tensor], y: Tensor, ctx: EvalContext
    ) -> Tensor:
        """The attack objective L (N,) at ``x_adv`` for the clean batch ``x`` (what ``info["loss"]`` holds)."""
        mods = self.resolve(model)
        with attack_mode(model):
            problem = _Problem(self, model, x, y, mods, ctx)
            loss, _, _ = problem.evaluate({m: x_adv[m] for m in mods}, None, grad=False)
            return loss

    def _search(self, p: _Problem, ctx: EvalContext) -> dict[str, Tensor]:
        """The greedy mask search; returns the adversarial values of the attacked modalities."""
        x, y, mods = p.x, p.y, p.mods
        adv = {m: x[m].clone() for m in mods}
        val = {m: x[m].clone() for m in mods}
        mask = {m: torch.zeros_like(x[m], dtype=torch.bool) for m in mods}
        done = torch.zeros_like(y, dtype=torch.bool)
        schedule = mask_schedule(p.d_total, self.rho_max, self.s0, self.growth)

        def check(grad: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
            """Evaluate the still-active samples, freeze the successful ones; (active idx, their grads)."""
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                return idx, {}
            _, logits, grads = p.evaluate({m: adv[m][idx] for m in mods}, idx, grad=grad)
            hit = logits.argmax(1) != y[idx]
            done[idx[hit]] = True
            keep = ~hit
            return idx[keep], {m: g[keep] for m, g in grads.items()}

        previous = 0
        for t, k in enumerate(schedule):
            idx, grads = check()
            if idx.numel() == 0:
                break
            if t == 0 and self.objective == "embedding":  # zero gradient at x' = x: probe nearby
                probe = {m: x[m][idx] + EMBEDDING_PROBE * (p.far(m, idx) - x[m][idx]) for m in mods}
                _, _, grads = p.evaluate(probe, idx, grad=True)
            self._grow(p, idx, grads, k - previous, adv, val, mask, ctx)
            previous = k
            for _ in range(self.steps):
                idx, grads = check()
                if idx.numel() == 0:
                    break
                for m in mods:
                    lo, hi = p.bounds(m)
                    step = self.step_size * (hi - lo) * grads[m].sign()
                    v = torch.minimum(torch.maximum(val[m][idx] + step, lo), hi)
                    v = torch.where(mask[m][idx], v, val[m][idx])
                    val[m][idx] = v
                    adv[m][idx] = torch.where(mask[m][idx], v, x[m][idx])
        check(grad=False)  # the last iterate's success
        return adv

    def _grow(
        self,
        p: _Problem,
        idx: Tensor,
        grads: Mapping[str, Tensor],
        add: int,
        adv: dict[str, Tensor],
        val: dict[str, Tensor],
        mask: dict[str, Tensor],
        ctx: EvalContext,
    ) -> None:
        """Add ``add`` coordinates to the masks of the samples ``idx`` (in place), with v = v₀."""
        mods = p.mods
        starts, scores = {}, []
        for m in mods:
            xs = p.x[m][idx]
            far = p.far(m, idx)
            if self.v0 == "gradient":
                lo, hi = p.bounds(m)
                g = grads[m]
                v0 = torch.where(g > 0, hi, torch.where(g < 0, lo, far))
            else:
                v0 = far
            starts[m] = v0
            if self.search == "saliency":
                s = (grads[m] * (v0 - xs)).abs()
            else:
                s = torch.rand(xs.shape, generator=ctx.generator, dtype=torch.float32).to(xs.device)
            scores.append(s.masked_fill(mask[m][idx], float("-inf")).reshape(len(idx), -1))
        flat = torch.cat(scores, 1)
        top = flat.topk(add, dim=1).indices
        new = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, top, True)
        offset = 0
        for m in mods:
            d = p.dims[m]
            new_m = new[:, offset : offset + d].reshape(p.x[m][idx].shape)
            offset += d
            val[m][idx] = torch.where(new_m, starts[m], val[m][idx])
            mask[m][idx] = mask[m][idx] | new_m
            adv[m][idx] = torch.where(mask[m][idx], val[m][idx], p.x[m][idx])


class _Problem:
    """One batch under attack: clean data, cached clean embeddings, ranges and the objective."""

    def __init__(
        self, atk: Decoupling, model: Any, x: Mapping[str, Tensor], y: Tensor, mods: list[str], ctx: EvalContext
    ) -> None:
        n = _validate(model, x, y, mods)
        self.atk, self.model, self.mods, self.n = atk, model, mods, n
        self.x = {m: x[m] for m in model.modalities}
        self.y = y.long()
        self.dims = {m: model.spec[m].numel for m in mods}
        self.d_total = sum(self.dims.values())
        self.low: dict[str, Tensor] = {}
        self.high: dict[str, Tensor] = {}
        for m in mods:
            self.low[m], self.high[m] = _range(model.spec[m], x[m], ctx)
        with torch.no_grad():
            self.clean_z = {m: model.encode_one(m, x[m]) for m in model.modalities if m not in mods}
            self.phi0: Tensor | None = None
            self.ref: Tensor | None = None
            if atk.objective == "embedding":
                z = {**self.clean_z, **{m: model.encode_one(m, x[m]) for m in mods}}
                self.phi0 = model.fuse(z)[0]
            if atk.objective == "cross_modal":
                z = dict(self.clean_z)
                if atk.fill != "drop":
                    for m in mods:
                        if atk.fill == "mean" and (ctx.stats.get(m) is None or ctx.stats[m].mean is None):
                            raise InputError(
                                f"decoupling: fill='mean' needs training statistics for {m!r} in ctx.stats"
                            )
                        z[m] = model.encode_one(m, fill_modality(model.spec[m], x[m], atk.fill, ctx))
                self.ref = model.logits_from_embeddings(z).argmax(1)

    def bounds(self, m: str) -> tuple[Tensor, Tensor]:
        """Per-coordinate (low, high) of modality ``m``, each (1, *shape)."""
        return self.low[m], self.high[m]

    def far(self, m: str, idx: Tensor) -> Tensor:
        """The range end farther from x for the samples ``idx``, (n, *shape)."""
        lo, hi = self.bounds(m)
        xs = self.x[m][idx]
        return torch.where(xs - lo >= hi - xs, lo, hi).expand_as(xs)

    def evaluate(
        self, adv: Mapping[str, Tensor], idx: Tensor | None, grad: bool
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Objective (n,), logits (n, K) and ``{m: ∇ Σ L}`` (if ``grad``) at ``adv`` for samples ``idx`` (None: all)."""
        leaves = {m: adv[m].detach().requires_grad_(grad) for m in self.mods}
        with torch.set_grad_enabled(grad):
            z = {m: (v if idx is None else v[idx]) for m, v in self.clean_z.items()}
            z.update({m: self.model.encode_one(m, leaves[m]) for m in self.mods})
            z = {m: z[m] for m in self.model.modalities}
            fused = self.model.fuse(z)[0]
            logits = self.model.head_from_fused(fused)
            loss = self.loss(fused, logits, idx)
            grads = {}
            if grad:
                grads = dict(zip(self.mods, torch.autograd.grad(loss.sum(), list(leaves.values())), strict=True))
        return loss.detach(), logits.detach(), grads

    def loss(self, fused: Tensor, logits: Tensor, idx: Tensor | None) -> Tensor:
        """Per-sample objective (n,) from the fused embedding and logits."""
        pick = (lambda t: t) if idx is None else (lambda t: t[idx])
        y = pick(self.y)
        objective = self.atk.objective
        if objective == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        if objective == "embedding":
            assert self.phi0 is not None
            phi0 = pick(self.phi0)
            if self.atk.distance == "l2":
                return torch.linalg.vector_norm(fused - phi0, ord=2, dim=1)
            return 1 - F.cosine_similarity(fused, phi0, dim=1, eps=1e-8)
        assert self.ref is not None
        # −log(p_y + p_r) (−log p_y where r = y): cross-entropy against the set {y, r}
        ref = pick(self.ref)
        s_y = logits.gather(1, y[:, None]).squeeze(1)
        s_r = logits.gather(1, ref[:, None]).squeeze(1)
        both = torch.where(ref == y, s_y, torch.logaddexp(s_y, s_r))
        return logits.logsumexp(1) - both

    @torch.no_grad()
    def output(self, adv: Mapping[str, Tensor]) -> ConditionOutput:
        """The result: adversarial batch, success re-evaluated on it, ρ counted on it, objective."""
        x_out = dict(self.x)
        x_out.update({m: adv[m].detach() for m in self.mods})
        # The same computation as model(x_out): every encoder on the returned batch, then fusion.
        z = {m: self.model.encode_one(m, x_out[m]) for m in self.model.modalities}
        fused = self.model.fuse(z)[0]
        logits = self.model.head_from_fused(fused)
        pred = logits.argmax(1)
        changed = {m: (x_out[m] != self.x[m]).reshape(self.n, -1).sum(1) for m in self.mods}
        total = torch.stack(list(changed.values()), 0).sum(0)
        info = {
            "success": pred != self.y,
            "rho": total.double() / self.d_total,
            **{f"rho/{m}": c.double() / self.dims[m] for m, c in changed.items()},
            "loss": self.loss(fused, logits, None),
        }
        if self.ref is not None:
            info["decoupled"] = pred != self.ref
        return ConditionOutput(x=x_out, info=info)


def _range(spec: Any, like: Tensor, ctx: EvalContext) -> tuple[Tensor, Tensor]:
    """(low, high) of a modality as tensors broadcastable to (N, *shape); unbounded sides from the stats."""
    shape = (1, *spec.shape)
    st = ctx.stats.get(spec.name) if ctx.stats is not None else None
    sides = []
    for bound, sign in ((spec.low, -1.0), (spec.high, 1.0)):
        if bound is not None:
            sides.append(torch.full(shape, float(bound), dtype=like.dtype, device=like.device))
            continue
        if st is None or st.mean is None or st.std is None:
            raise InputError(
                f"decoupling: modality {spec.name!r} has an unbounded valid range; the attack then needs training "
                "statistics (ctx.stats mean/std) to pick its end points"
            )
        sides.append((st.mean + sign * UNBOUNDED_STDS * st.std).to(like).reshape(shape))
    lo, hi = sides
    return torch.minimum(lo, hi), torch.maximum(lo, hi)


def _validate(model: Any, x: Mapping[str, Tensor], y: object, mods: Sequence[str]) -> int:
    """Validate the clean batch and labels once; the batch size."""
    bounds = {m: (model.spec[m].low, model.spec[m].high) for m in mods}
    return check_batch(model, x, y, bounds, prefix="decoupling: ")


def _choice(value: object, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise InputError(f"decoupling: unknown {what} {value!r}; choose one of {', '.join(allowed)}")
