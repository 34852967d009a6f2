"""Threat models of gradient attacks on dict inputs, and the batched geometry they need.

A threat model (methods.md §1) states which modalities an attacker may change and by how much:

* ``modalities``: one name (single-source attack), a list, ``"all"`` of the model's modalities, or
  ``"each"``: every modality attacked alone in turn, with the per-sample worst case over them;
* ``norm``: ``linf``, ``l2`` or ``l0`` (number of changed coordinates), per sample over all
  coordinates of a modality;
* ``eps``: one radius for every attacked modality or ``{modality: radius}``, each in that
  modality's **input units** (embedding units for token modalities attacked through embeddings);
* ``budget``: ``per_modality`` (each attacked modality has its own ball) or ``joint`` (one ℓ2 ball
  over the concatenation of all attacked modalities, ‖δ‖₂ = (Σ_m ‖δ_m‖₂²)^{1/2} ≤ ε, the threat
  model of CRMT, Yang et al., ICLR 2024, arXiv 2402.06244).

Every adversarial input stays inside the ball *and* inside the modality's valid range
``[spec.low, spec.high]`` (clipping after the ball projection only moves coordinates towards the clean
value, so it never leaves the ball). Token ids cannot be perturbed by gradients; with
``token_surface="embedding"`` a token modality is attacked through its token embeddings (N, L, D),
pad positions excluded.

:class:`ThreatModel` holds the hyper-parameters; :meth:`ThreatModel.resolve` checks them against a
model and returns a :class:`ResolvedThreat`, whose methods (projection, steepest-ascent direction,
random start, achieved norms) are batched over samples and modalities without Python loops over
samples. All tensors are ``{modality: (N, *shape)}`` dicts; masks are boolean and broadcastable to
their modality's tensor.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmrobust.errors import InputError, UnsupportedError

NORMS: tuple[str, ...] = ("linf", "l2", "l0")
BUDGETS: tuple[str, ...] = ("per_modality", "joint")
TOKEN_SURFACES: tuple[str, ...] = ("embedding",)

_TINY = 1e-12  # guards divisions by a zero norm (a zero gradient or a zero perturbation)


# --------------------------------------------------------------------------------------- geometry
def _per_sample(v: float | Tensor, like: Tensor) -> float | Tensor:
    """A scalar as is; an (N,) tensor reshaped to broadcast against ``like`` (N, ...)."""
    if isinstance(v, Tensor):
        return v.to(like).reshape(-1, *([1] * (like.dim() - 1)))
    return v


def sample_norms(t: Tensor, norm: str) -> Tensor:
    """Per-sample norm of a batch.

    Args:
        t: Tensor of shape (N, ...).
        norm: ``linf`` or ``l2``, taken over all non-batch coordinates.

    Returns:
        Tensor of shape (N,).
    """
    flat = t.reshape(t.shape[0], -1)
    if flat.shape[1] == 0:
        return flat.new_zeros(flat.shape[0])
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return torch.linalg.vector_norm(flat, ord=2, dim=1)
    if norm == "l0":
        return (flat != 0).sum(dim=1).to(t.dtype if t.dtype.is_floating_point else torch.float32)
    raise InputError(f"unsupported norm {norm!r}; choose one of {', '.join(NORMS)}")


def joint_l2_norms(deltas: Mapping[str, Tensor]) -> Tensor:
    """Per-sample ℓ2 norm of the concatenation of several modalities' tensors: (Σ_m ‖δ_m‖₂²)^{1/2}, (N,)."""
    sq = [sample_norms(d, "l2").square() for d in deltas.values()]
    return torch.stack(sq, 0).sum(0).sqrt()


def project_ball(
    deltas: Mapping[str, Tensor],
    eps: Mapping[str, float | Tensor],
    norm: str,
    budget: str = "per_modality",
) -> dict[str, Tensor]:
    """Project perturbations onto the threat model's ball, per sample.

    ℓ∞: clamp every coordinate to [−ε_m, ε_m]. ℓ2: rescale δ_m by min(1, ε_m/‖δ_m‖₂) (per modality),
    or every δ_m by min(1, ε/‖δ‖₂) with ‖δ‖₂ over the concatenation (``joint``). ℓ0: keep the ⌊ε_m⌋
    coordinates of largest magnitude (ties broken by position), zero the rest — the exact Euclidean
    projection onto the ℓ0 ball.

    Args:
        deltas: ``{m: δ_m of shape (N, ...)}``.
        eps: ``{m: ε_m}``, each a float or an (N,) tensor of per-sample radii; for ``joint`` every
            entry is the joint radius.
        norm: ``linf`` or ``l2``.
        budget: ``per_modality`` or ``joint`` (ℓ2 only).

    Returns:
        The projected ``{m: δ_m}`` (new tensors).
    """
    if budget == "joint":
        if norm != "l2":
            raise InputError(f"a joint budget needs norm 'l2', got {norm!r}")
        if not deltas:
            return {}
        first = next(iter(deltas))
        total = joint_l2_norms(deltas)
        factor = (_as_tensor(eps[first], total) / total.clamp_min(_TINY)).clamp(max=1.0)
        return {m: d * factor.reshape(-1, *([1] * (d.dim() - 1))) for m, d in deltas.items()}
    out: dict[str, Tensor] = {}
    for m, d in deltas.items():
        if norm == "linf":
            e = _per_sample(eps[m], d)
            out[m] = torch.clamp(d, -e, e) if isinstance(e, Tensor) else d.clamp(-e, e)
        elif norm == "l2":
            n = sample_norms(d, "l2")
            factor = (_as_tensor(eps[m], n) / n.clamp_min(_TINY)).clamp(max=1.0)
            out[m] = d * factor.reshape(-1, *([1] * (d.dim() - 1)))
        elif norm == "l0":
            out[m] = d * _top_k_mask(d.abs(), eps[m])
        else:
            raise InputError(f"unsupported norm {norm!r}; choose one of {', '.join(NORMS)}")
    return out


def _top_k_mask(scores: Tensor, k: float | Tensor) -> Tensor:
    """Boolean mask (same shape as ``scores``) of the ⌊k⌋ largest entries per sample (N, ...).

    ``k`` is a number or an (N,) tensor of per-sample counts; sorting is stable, so ties go to the
    lower flat position and the mask is deterministic.
    """
    n = scores.shape[0]
    flat = scores.reshape(n, -1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(n, -1).contiguous())
    kk = k.to(flat.device).floor().reshape(-1, 1) if isinstance(k, Tensor) else math.floor(k)
    return (ranks < kk).reshape(scores.shape)


def _nonzero(norms: Tensor) -> Tensor:
    """Norms with exact zeros replaced by 1 (a zero gradient then gives a zero direction)."""
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def _as_tensor(v: float | Tensor, like: Tensor) -> Tensor:
    return v.to(like) if isinstance(v, Tensor) else torch.full_like(like, float(v))


def clip_to_range(x: Tensor, low: float | None, high: float | None) -> Tensor:
    """Clamp ``x`` into the valid range [low, high] of its modality (``None``: unbounded side)."""
    if low is None and high is None:
        return x
    return x.clamp(low, high)


def _masked(t: Tensor, mask: Tensor | None) -> Tensor:
    return t if mask is None else torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device))


# --------------------------------------------------------------------------------------- threat model
@dataclass(frozen=True)
class ResolvedThreat:
    """A :class:`ThreatModel` checked against one model: what the attacks need, batched.

    Attributes:
        modalities: Attacked modality names, in the model's order.
        norm: ``linf`` or ``l2``.
        budget: ``per_modality`` or ``joint``.
        eps: ``{m: ε_m}``; for a joint budget every entry is the joint radius ε. An entry may be an
            (N,) tensor of per-sample radii (e.g. :mod:`mmrobust.metrics.minimal_eps`): projection,
            steps and random starts then work per sample.
        surface: ``{m: "input" | "embedding"}``: what is perturbed (raw values or token embeddings).
        low: ``{m: lower bound}`` of the valid range (``None`` for unbounded and for embeddings).
        high: ``{m: upper bound}`` of the valid range.
    """

    modalities: tuple[str, ...]
    norm: str
    budget: str
    eps: dict[str, float]
    surface: dict[str, str]
    low: dict[str, float | None]
    high: dict[str, float | None]

    @property
    def joint(self) -> bool:
        """True for one ℓ2 ball over the concatenation of the attacked modalities."""
        return self.budget == "joint"

    def norms(self, deltas: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Achieved per-sample norms ``{m: (N,)}`` in the threat's norm, plus ``"joint"`` for joint budgets."""
        out = {m: sample_norms(d, self.norm) for m, d in deltas.items()}
        if self.joint:
            out["joint"] = joint_l2_norms(deltas)
        return out

    def project(
        self,
        adv: Mapping[str, Tensor],
        origin: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Project adversarial variables onto the ball around ``origin``, then into the valid range.

        Args:
            adv: ``{m: x'_m (N, ...)}``, the current adversarial variables.
            origin: ``{m: x_m (N, ...)}``, the clean variables (inside the valid range).
            masks: ``{m: bool mask}`` of perturbable positions (e.g. non-pad tokens); absent: all.

        Returns:
            ``{m: clip(x_m + Π_ball(x'_m − x_m), low_m, high_m)}`` (new tensors).
        """
        masks = masks or {}
        if self.norm == "l0":
            # Exact Euclidean projection onto box ∩ ℓ0 ball: changing coordinate i to its clipped value c_i
            # instead of leaving it at o_i saves (o_i − a_i)² − (c_i − a_i)²; keep the k largest savings.
            out = {}
            for m in self.modalities:
                a, o = adv[m], origin[m]
                c = clip_to_range(a, self.low[m], self.high[m])
                gain = _masked((o - a).square() - (c - a).square(), masks.get(m))
                keep = _top_k_mask(gain, self.eps[m]) & (gain > 0)
                out[m] = torch.where(keep, c, o)
            return out
        deltas = project_ball({m: adv[m] - origin[m] for m in self.modalities}, self.eps, self.norm, self.budget)
        return {
            m: clip_to_range(origin[m] + _masked(deltas[m], masks.get(m)), self.low[m], self.high[m])
            for m in self.modalities
        }

    def direction(
        self, grads: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Steepest-ascent direction of unit norm for a gradient.

        ℓ∞: sign(∇). ℓ2: ∇_m/‖∇_m‖₂ per modality, or ∇_m/‖∇‖₂ over the concatenation (``joint``).
        ℓ0: ∇_m/‖∇_m‖∞ (a dense step; the ℓ0 projection then keeps the k largest changes). A zero
        gradient gives a zero direction.

        Args:
            grads: ``{m: ∇_m L (N, ...)}``.
            masks: Perturbable positions per modality (masked coordinates get no step).

        Returns:
            ``{m: direction (N, ...)}``.
        """
        masks = masks or {}
        g = {m: _masked(grads[m], masks.get(m)) for m in self.modalities}
        if self.norm == "linf":
            return {m: t.sign() for m, t in g.items()}
        if self.norm == "l0":  # the steepest coordinate moves by the full step, the others in proportion
            return {
                m: t / _nonzero(sample_norms(t, "linf")).reshape(-1, *([1] * (t.dim() - 1))) for m, t in g.items()
            }
        # Exact normalisation whenever the norm is non-zero: very confident samples have gradients
        # of norm ~1e-15 and still deserve a full-length step (an additive guard would shrink it).
        if self.joint:
            total = _nonzero(joint_l2_norms(g))
            return {m: t / total.reshape(-1, *([1] * (t.dim() - 1))) for m, t in g.items()}
        return {m: t / _nonzero(sample_norms(t, "l2")).reshape(-1, *([1] * (t.dim() - 1))) for m, t in g.items()}

    def step(
        self,
        adv: Mapping[str, Tensor],
        origin: Mapping[str, Tensor],
        grads: Mapping[str, Tensor],
        step_size: Mapping[str, float | Tensor],
        masks: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """One projected ascent step: ``project(x' + α_m · direction(∇))``; α_m a float or (N,) per sample."""
        d = self.direction(grads, masks)
        return self.project(
            {m: adv[m] + _per_sample(step_size[m], adv[m]) * d[m] for m in self.modalities}, origin, masks
        )

    def random_start(
        self,
        origin: Mapping[str, Tensor],
        generator: torch.Generator | None = None,
        masks: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """A point drawn uniformly from the ball around ``origin``, then clipped to the valid range.

        ℓ∞: every coordinate uniform in [−ε_m, ε_m]. ℓ2: uniform in the volume of the ball (a
        Gaussian direction and radius ε·u^{1/d}, d the number of perturbable coordinates; over the
        concatenation for ``joint``). Random numbers are drawn on the CPU from ``generator``, so
        the start is reproducible on any device. Radii ``eps[m]`` may be (N,) tensors (one per sample).

        Args:
            origin: Clean variables ``{m: (N, ...)}``.
            generator: Seeded CPU generator (e.g. ``EvalContext.generator``).
            masks: Perturbable positions per modality.

        Returns:
            ``{m: x'_m}`` inside the ball and the valid range.
        """
        masks = masks or {}

        def draw(shape: torch.Size, uniform: bool, like: Tensor) -> Tensor:
            fn = torch.rand if uniform else torch.randn
            return fn(shape, generator=generator, dtype=torch.float32).to(like)

        n = next(iter(origin.values())).shape[0]
        if self.norm == "l0":  # ⌊ε⌋ random perturbable coordinates set to uniform values of the valid range
            adv = {}
            for m in self.modalities:
                o = origin[m]
                scores = draw(o.shape, True, o)
                if masks.get(m) is not None:
                    scores = torch.where(masks[m], scores, torch.full_like(scores, -1.0))
                pick = _top_k_mask(scores, self.eps[m])
                if masks.get(m) is not None:
                    pick &= masks[m].expand_as(pick)
                lo, hi = self.low[m], self.high[m]
                u = draw(o.shape, True, o)
                value = lo + (hi - lo) * u if lo is not None and hi is not None else o + (2 * u - 1)
                adv[m] = torch.where(pick, value, o)
            return adv
        if self.norm == "linf":
            deltas = {}
            for m in self.modalities:
                o = origin[m]
                deltas[m] = _masked((2 * draw(o.shape, True, o) - 1) * _per_sample(self.eps[m], o), masks.get(m))
            return self.project({m: origin[m] + deltas[m] for m in self.modalities}, origin, masks)
        dirs = {m: _masked(draw(origin[m].shape, False, origin[m]), masks.get(m)) for m in self.modalities}
        dims = {m: _free_coordinates(origin[m], masks.get(m)) for m in self.modalities}
        groups = [list(self.modalities)] if self.joint else [[m] for m in self.modalities]
        deltas = {}
        for group in groups:  # one group per ball: a loop over modalities, never over samples
            ref = origin[group[0]]
            g = {m: dirs[m] for m in group}
            d_total = torch.stack([dims[m] for m in group], 0).sum(0).clamp_min(1).to(ref)
            u = draw(torch.Size([n]), True, ref)
            radius = self.eps[group[0]] * u.pow(1.0 / d_total)
            scale = radius / joint_l2_norms(g).clamp_min(_TINY)
            for m in group:
                deltas[m] = g[m] * scale.reshape(-1, *([1] * (g[m].dim() - 1)))
        return self.project({m: origin[m] + deltas[m] for m in self.modalities}, origin, masks)


def _free_coordinates(t: Tensor, mask: Tensor | None) -> Tensor:
    """Number of perturbable coordinates per sample, (N,)."""
    n = t.shape[0]
    per = t[0].numel()
    if mask is None:
        return torch.full((n,), per, dtype=torch.float32, device=t.device)
    return mask.expand_as(t).reshape(n, -1).sum(1).float()


class ThreatModel:
    """Which modalities an attacker may change, in which norm, by how much (methods.md §1).

    Constructor arguments are hyper-parameters only and are validated here; names are checked
    against a model by :meth:`resolve`.

    Args:
        modalities: A modality name (single-source attack), a list of names, ``"all"``, or
            ``"each"`` (every modality attacked alone in turn; attacks report the per-sample worst
            case over them and each modality's own outcome).
        eps: Radius for every attacked modality, or ``{modality: radius}`` with one entry per
            attacked modality, in that modality's input units (embedding units for token
            modalities attacked through embeddings). Must be finite and >= 0; ε = 0 leaves the
            batch unchanged. A joint budget takes one radius.
        norm: ``linf``, ``l2`` or ``l0`` (ε is then a whole number of coordinates per modality).
        budget: ``per_modality`` (one ball per attacked modality) or ``joint`` (one ℓ2 ball over
            the concatenation of the attacked modalities, ‖δ‖₂ = (Σ_m ‖δ_m‖₂²)^{1/2} ≤ ε, as in
            CRMT, arXiv 2402.06244; needs ``norm="l2"``).
        token_surface: ``None`` (token-id modalities are refused) or ``"embedding"``: attack
            token-id modalities through their token embeddings (N, L, D), pad positions excluded.
            Continuous modalities are always perturbed in input space.

    Raises:
        InputError: on an unknown norm or budget, a negative or non-finite ε (naming the
            modality), a joint budget with ``linf`` or per-modality radii, or ``eps`` entries that do
            not match the attacked modalities.

    Example:
        >>> tm = ThreatModel(["image", "audio"], eps=1.0, norm="l2", budget="joint")
        >>> tm.params()["budget"]
        'joint'
    """

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        norm: str = "linf",
        budget: str = "per_modality",
        token_surface: str | None = None,
    ) -> None:
        self.modalities: str | list[str] = _check_modalities(modalities)
        if norm not in NORMS:
            raise InputError(f"unsupported norm {norm!r}; choose one of {', '.join(NORMS)}")
        if budget not in BUDGETS:
            raise InputError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
        if budget == "joint" and norm != "l2":
            raise InputError(
                f"budget='joint' is one ℓ2 ball over the concatenation of the attacked modalities; it "
                f"needs norm='l2', got norm={norm!r}"
            )
        if token_surface is not None and token_surface not in TOKEN_SURFACES:
            raise InputError(
                f"unknown token_surface {token_surface!r}; use None or {', '.join(map(repr, TOKEN_SURFACES))}"
            )
        self.norm = norm
        self.budget = budget
        self.token_surface = token_surface
        self.eps: float | dict[str, float] = self._check_eps(eps)
        if norm == "l0":
            for v in self.eps.values() if isinstance(self.eps, dict) else [self.eps]:
                if v != math.floor(v):
                    raise InputError(f"for norm 'l0' eps is a number of coordinates (a whole number), got {v:g}")

    @property
    def each(self) -> bool:
        """True for ``modalities="each"``: every modality attacked alone, worst case per sample."""
        return self.modalities == "each"

    def single(self, modality: str) -> ThreatModel:
        """The single-source threat model on ``modality`` (what ``"each"`` runs for every modality)."""
        eps = self.eps[modality] if isinstance(self.eps, dict) else self.eps
        return ThreatModel(modality, eps=eps, norm=self.norm, budget=self.budget, token_surface=self.token_surface)

    def expand(self, model: Any) -> list[str]:
        """The modality groups this threat stands for on ``model``: ``"each"`` → every modality."""
        if not self.each:
            raise InputError("expand() is only defined for modalities='each'")
        names = list(model.modalities)
        if isinstance(self.eps, dict):
            _check_keys(self.eps, names)
        return names

    def _check_eps(self, eps: object) -> float | dict[str, float]:
        who = f"{self.modalities} modalities" if isinstance(self.modalities, str) else ", ".join(self.modalities)
        if isinstance(eps, Mapping):
            if self.budget == "joint":
                raise InputError(
                    "a joint budget is one ball over the concatenation: give one eps (a float), not a "
                    f"dict {dict(eps)!r}"
                )
            if not eps:
                raise InputError("eps dict is empty; give one radius per attacked modality")
            out = {}
            for m, v in eps.items():
                if not isinstance(m, str):
                    raise InputError(f"eps keys must be modality names, got {m!r}")
                out[m] = _check_radius(v, f"eps for modality {m!r}")
            if not isinstance(self.modalities, str):
                _check_keys(out, list(self.modalities))
            return out
        return _check_radius(eps, f"eps (attacked modalities: {who})")

    def params(self) -> dict[str, Any]:
        """JSON-friendly hyper-parameters (``eps`` dicts rendered as ``"m1:e1/m2:e2"``)."""
        eps = self.eps if not isinstance(self.eps, dict) else "/".join(f"{k}:{v:g}" for k, v in self.eps.items())
        out: dict[str, Any] = {
            "modalities": self.modalities if isinstance(self.modalities, str) else list(self.modalities),
            "norm": self.norm,
            "eps": eps,
            "budget": self.budget,
        }
        if self.token_surface is not None:
            out["token_surface"] = self.token_surface
        return out

    def resolve(self, model: Any) -> ResolvedThreat:
        """Check the threat model against ``model`` and return what the attacks need.

        Args:
            model: A :class:`~mmrobust.models.MultimodalModel` (uses ``modalities``, ``spec`` and,
                for token modalities attacked through embeddings, ``hook_error("embeddings", m)``).

        Returns:
            A :class:`ResolvedThreat` (modalities in the model's order).

        Raises:
            InputError: unknown modality (listing the model's modalities), a token-id modality
                without ``token_surface="embedding"``, a modality whose spec is not perturbable,
                or ``eps`` entries that do not match the attacked modalities.
            UnsupportedError: a token modality without a token-embedding surface (the model's
                ``hook_error`` names what to declare for an adapter).
        """
        names = list(model.modalities)
        if self.each:
            raise InputError(
                "modalities='each' stands for one single-source threat per modality; resolve "
                "threat.single(m) for each m in threat.expand(model)"
            )
        wanted = names if self.modalities == "all" else list(self.modalities)
        for m in wanted:
            if m not in names:
                raise InputError(f"unknown modality {m!r}; the model has {names}")
        attacked = tuple(m for m in names if m in wanted)
        if isinstance(self.eps, dict):
            _check_keys(self.eps, list(attacked))
            eps = {m: self.eps[m] for m in attacked}
        else:
            eps = dict.fromkeys(attacked, self.eps)
        surface: dict[str, str] = {}
        low: dict[str, float | None] = {}
        high: dict[str, float | None] = {}
        for m in attacked:
            spec = model.spec[m]
            if spec.is_tokens:
                if self.token_surface != "embedding":
                    raise InputError(
                        f"modality {m!r} holds token ids, which gradient attacks cannot perturb directly; "
                        "attack its token embeddings with token_surface='embedding' (eps is then in "
                        "embedding units), use the discrete text corruptions, or leave it out of "
                        "modalities"
                    )
                why = model.hook_error("embeddings", m)
                if why is not None:
                    raise UnsupportedError(why)
                surface[m], low[m], high[m] = "embedding", None, None
            else:
                if not spec.perturbable:
                    raise InputError(f"modality {m!r} is marked not perturbable in its spec")
                surface[m], low[m], high[m] = "input", spec.low, spec.high
        return ResolvedThreat(
            modalities=attacked, norm=self.norm, budget=self.budget, eps=eps, surface=surface, low=low, high=high
        )

    def __repr__(self) -> str:
        return f"ThreatModel({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


def _check_modalities(modalities: object) -> str | list[str]:
    if isinstance(modalities, str):
        if modalities == "all":
            return "all"
        if modalities == "each":
            return "each"
        if not modalities:
            raise InputError("modalities must be a modality name, a list of names, 'all' or 'each', got ''")
        return [modalities]
    if not isinstance(modalities, Sequence) or not modalities:
        raise InputError(
            f"modalities must be a modality name, a non-empty list of names, 'all' or 'each', got {modalities!r}"
        )
    out = list(modalities)
    for m in out:
        if not isinstance(m, str) or not m:
            raise InputError(f"modalities must be names (strings), got {m!r} in {out!r}")
        if m in ("all", "each"):
            raise InputError(f"{m!r} cannot appear inside a list of modalities; pass modalities={m!r}")
    if len(set(out)) != len(out):
        raise InputError(f"duplicate modalities in {out}")
    return out


def _check_radius(v: object, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise InputError(f"{what} must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise InputError(f"{what} must be finite, got {f}")
    if f < 0:
        raise InputError(f"{what} must be >= 0, got {f:g}")
    return f


def _check_keys(eps: Mapping[str, float], attacked: list[str]) -> None:
    missing = [m for m in attacked if m not in eps]
    if missing:
        raise InputError(f"eps has no radius for attacked modality {', '.join(map(repr, missing))} (eps: {dict(eps)})")
    extra = [m for m in eps if m not in attacked]
    if extra:
        raise InputError(
            f"eps gives a radius for {', '.join(map(repr, extra))}, which is not attacked (attacked: {attacked})"
        )
