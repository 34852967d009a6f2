"""Latent geometry of a multimodal model: class convexity and class density of its embedding spaces.

GEOM (Li, Qu, Li, Huang, Metze, *On Adversarial Robustness of Large-scale Audio Visual Learning*,
ICASSP 2022, arXiv 2203.12122) relates robustness to how classes sit in a model's latent spaces:
classes whose regions are *convex* (the segment between two members stays in the class) and *dense*
(a member's neighbourhood is made of its own class) are harder to leave with a small perturbation.
This module measures both, in the fused space and in each modality's embedding space
(methods.md §4):

* :func:`convexity` — for class c, uniformly random same-class pairs (a, b), drawn without
  replacement, and λ ~ U(0, 1): the point λ z_a + (1 − λ) z_b is fed through the part of the network
  downstream of the space; Conv_c is the fraction predicted c. Also the *conditional* version,
  restricted to the sampled pairs whose endpoints are both correctly classified. This is the
  corrected definition (the authors' notebook deviates from the paper).
* :func:`density` — **our operationalisation**: on L2-normalised embeddings with cosine distance,
  ρ(i) = (mean distance to the k nearest points of any class) / (mean distance to the k nearest
  points of i's class), the point itself excluded; class density = median ρ over the class.
  ρ ∈ [0, 1] (the k nearest points of any class are never farther than the k nearest of one class);
  1 means the k nearest neighbours all share i's class.
* :func:`geometry_report` — both metrics for a :class:`~mmrobust.models.base.MultimodalModel` on a
  dataset split, in the fused space and each modality's space.

These are *measurements* of a trained model, not attacks: no threat model applies. Everything here
is deterministic given the seed / generator (random numbers are drawn on CPU, then moved to the
embeddings' device).

Example:
    >>> import mmrobust as mr
    >>> data = mr.datasets.load("mmdigits")                          # doctest: +SKIP
    >>> model = mr.models.create("late", spec=data.spec)             # doctest: +SKIP
    >>> mr.train(model, data, epochs=3, quiet=True)                  # doctest: +SKIP
    >>> print(mr.metrics.geometry_report(model, data.test).table())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmrobust.datasets.dataset import MultimodalDataset
from mmrobust.errors import InputError
from mmrobust.models.base import MultimodalModel, require_hook
from mmrobust.utils.checks import check_int

__all__ = [
    "ConvexityResult",
    "DensityResult",
    "GeometryReport",
    "SpaceGeometry",
    "convexity",
    "density",
    "geometry_report",
    "sample_class_pairs",
]

Embeddings = Tensor | Mapping[str, Tensor]
Downstream = Callable[[Any], Tensor]
SmallClasses = Literal["error", "shrink"]

# Below this many candidate pairs (or 4x the request) a class's pairs are drawn with one randperm;
# above it, by rejection of repeats, which never materialises all n(n-1)/2 pair indices.
_RANDPERM_MAX = 1 << 16
# Elements of one (chunk x N) similarity block in density(): about 32 MB in float32.
_BLOCK_ELEMENTS = 1 << 23


# ------------------------------------------------------------------------------------------ helpers
def _check_matrix(name: str, z: Any, n: int | None = None) -> Tensor:
    if not isinstance(z, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (N, D), got {type(z).__name__}")
    if z.dim() != 2:
        raise InputError(f"{name} must have shape (N, D), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got {z.dtype}")
    if n is not None and z.shape[0] != n:
        raise InputError(f"{name} has {z.shape[0]} rows, expected {n} (one per sample)")
    if not bool(torch.isfinite(z).all()):
        raise InputError(f"{name} contains NaN or Inf values")
    return z


def _check_labels(labels: Any, n: int, num_classes: int | None) -> tuple[Tensor, int]:
    """CPU int64 labels (N,) and the number of classes K."""
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(np.asarray(labels))
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise InputError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise InputError(f"{labels.shape[0]} labels for {n} embeddings")
    labels = labels.detach().long().cpu()
    if n and int(labels.min()) < 0:
        raise InputError(f"labels must be >= 0, got {int(labels.min())}")
    top = int(labels.max()) + 1 if n else 0
    if num_classes is None:
        num_classes = max(top, 1)
    num_classes = check_int(num_classes, "", "num_classes")
    if top > num_classes:
        raise InputError(f"labels must lie in [0, {num_classes}), got {top - 1}")
    return labels, num_classes


def _as_space(z: Any, space: str | None) -> tuple[Tensor | dict[str, Tensor], int]:
    """Validate the embeddings of a space; returns them and N."""
    if isinstance(z, Mapping):
        if not z:
            raise InputError("z is an empty mapping; give {modality: (N, D_m) embeddings}")
        if space is None or space not in z:
            raise InputError(f"with per-modality embeddings, space= must name one of {list(z)}, got {space!r}")
        n = _check_matrix(f"z[{space!r}]", z[space]).shape[0]
        out = {}
        for m, t in z.items():
            if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[0] != n:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise InputError(f"z[{m!r}] must be a tensor with {n} rows (one per sample), got {got}")
            out[m] = t
        return out, n
    if space is not None:
        raise InputError(f"space={space!r} needs z to be a mapping {{modality: embeddings}}")
    return _check_matrix("z", z), int(z.shape[0])


def _gather(z: Tensor | dict[str, Tensor], idx: Tensor) -> Tensor | dict[str, Tensor]:
    return {m: t[idx] for m, t in z.items()} if isinstance(z, dict) else z[idx]


def _device(z: Tensor | dict[str, Tensor], space: str | None) -> torch.device:
    return (z[space] if isinstance(z, dict) and space is not None else z).device  # type: ignore[union-attr]


def _logits(downstream: Downstream, inp: Any, rows: int, num_classes: int) -> Tensor:
    out = downstream(inp)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != rows:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"downstream must return logits of shape ({rows}, K), got {got}")
    if out.shape[1] < num_classes:
        raise InputError(f"downstream returns {out.shape[1]} logits per sample, but labels use {num_classes} classes")
    return out


def _nanmean(a: np.ndarray) -> float:
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


def _jsonable(v: Any) -> Any:
    """Numpy arrays / scalars -> lists / Python numbers, NaN -> None (strict JSON)."""
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ------------------------------------------------------------------------------------------ pairs
def _distinct_draws(total: int, k: int, generator: torch.Generator) -> Tensor:
    """A uniformly random k-subset of ``range(total)`` (needs ``k < total``), in draw order."""
    if total <= max(4 * k, _RANDPERM_MAX):
        return torch.randperm(total, generator=generator)[:k]
    kept = torch.zeros(0, dtype=torch.long)
    while kept.numel() < k:
        stream = torch.cat([kept, torch.randint(total, (2 * (k - kept.numel()) + 16,), generator=generator)])
        uniq, inv = torch.unique(stream, return_inverse=True)
        first = torch.full((uniq.numel(),), stream.numel(), dtype=torch.long)
        first.scatter_reduce_(0, inv, torch.arange(stream.numel()), reduce="amin")
        kept = stream[first.sort().values[:k]]  # first occurrences, in stream order
    return kept


def _unrank_pairs(t: Tensor) -> tuple[Tensor, Tensor]:
    """Pair ranks t -> (i, j), i < j, in the order (0,1), (0,2), (1,2), (0,3), ..."""
    j = ((1.0 + torch.sqrt(1.0 + 8.0 * t.double())) / 2.0).floor().long()
    j = j - (j * (j - 1) // 2 > t).long()  # one correction each way absorbs float rounding
    j = j + ((j + 1) * j // 2 <= t).long()
    return t - j * (j - 1) // 2, j


def sample_class_pairs(
    labels: Tensor,
    pairs_per_class: int,
    generator: torch.Generator,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Uniformly random same-class pairs, without replacement, with mixing weights λ ~ U(0, 1).

    For each class c with n_c ≥ 2 members, min(``pairs_per_class``, n_c (n_c − 1) / 2) distinct
    unordered pairs {a, b} (a ≠ b) are drawn uniformly without replacement; each pair's orientation
    (which member is ``a``) is a fair coin. Classes with fewer than 2 members get no pairs.

    Args:
        labels: Integer labels, shape (N,).
        pairs_per_class: Most pairs per class.
        generator: CPU generator all random numbers come from (classes in order 0..K−1).
        num_classes: K (default: ``max(labels) + 1``).

    Returns:
        ``(a, b, lam, cls)``: CPU tensors of shape (P,): endpoint indices into ``labels`` (int64),
        λ (float32) and the pair's class (int64), grouped by class.
    """
    pairs_per_class = check_int(pairs_per_class, "", "pairs_per_class")
    if not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(np.asarray(labels))
    labels, num_classes = _check_labels(labels, int(labels.shape[0]) if labels.dim() else -1, num_classes)
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for c, n_c in enumerate(counts):  # a loop over classes, not samples
        total = n_c * (n_c - 1) // 2
        if total == 0:
            continue
        k = min(pairs_per_class, total)
        t = torch.arange(total) if k == total else _distinct_draws(total, k, generator)
        i, j = _unrank_pairs(t)
        swap = torch.rand(k, generator=generator) < 0.5
        i, j = torch.where(swap, j, i), torch.where(swap, i, j)
        lam = torch.rand(k, generator=generator)
        members = order[starts[c] : starts[c] + n_c]
        parts.append((members[i], members[j], lam, torch.full((k,), c, dtype=torch.long)))
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty.clone(), torch.zeros(0), empty.clone()
    a, b, lam, cls = (torch.cat(p) for p in zip(*parts, strict=True))
    return a, b, lam, cls


# ------------------------------------------------------------------------------------------ convexity
@dataclass
class ConvexityResult:
    """Class convexity of one embedding space (GEOM, methods.md §4).

    Per-class arrays have shape (K,) and hold NaN for classes without pairs (fewer than 2 samples,
    or, for the conditional version, no pair with both endpoints correct). Per-pair arrays have
    shape (P,), grouped by class.

    Attributes:
        per_class: Conv_c, fraction of interpolants predicted c.
        per_class_conditional: Conv_c over the pairs whose endpoints are both correctly classified.
        pairs: Pairs drawn per class.
        pairs_conditional: Of those, pairs with both endpoints correct.
        a: Endpoint a of each pair (index into the embeddings; the endpoint other modalities are
            held at in a modality space).
        b: Endpoint b.
        lam: λ of each pair; the interpolant is λ z_a + (1 − λ) z_b.
        cls: Class of each pair.
        pred: Prediction at the interpolant.
        both_correct: Whether both endpoints are correctly classified.
        pairs_per_class: The requested pairs per class.
    """

    per_class: np.ndarray
    per_class_conditional: np.ndarray
    pairs: np.ndarray
    pairs_conditional: np.ndarray
    a: np.ndarray
    b: np.ndarray
    lam: np.ndarray
    cls: np.ndarray
    pred: np.ndarray
    both_correct: np.ndarray
    pairs_per_class: int

    @property
    def macro(self) -> float:
        """Macro average of Conv_c over classes that have pairs (NaN if none)."""
        return _nanmean(self.per_class)

    @property
    def macro_conditional(self) -> float:
        """Macro average of the conditional Conv_c over classes that have such pairs."""
        return _nanmean(self.per_class_conditional)

    def to_dict(self, per_pair: bool = False) -> dict[str, Any]:
        """JSON-friendly dict (NaN -> None); ``per_pair`` adds the per-pair arrays."""
        out: dict[str, Any] = {
            "macro": self.macro,
            "macro_conditional": self.macro_conditional,
            "per_class": self.per_class,
            "per_class_conditional": self.per_class_conditional,
            "pairs": self.pairs,
            "pairs_conditional": self.pairs_conditional,
            "pairs_per_class": self.pairs_per_class,
        }
        if per_pair:
            out.update(a=self.a, b=self.b, lam=self.lam, cls=self.cls, pred=self.pred, both_correct=self.both_correct)
        return _jsonable(out)


def convexity(
    z: Embeddings,
    labels: Tensor,
    downstream: Downstream,
    *,
    space: str | None = None,
    num_classes: int | None = None,
    pairs_per_class: int = 1000,
    generator: torch.Generator | None = None,
    seed: int = 0,
    batch_size: int = 4096,
) -> ConvexityResult:
    """Class convexity of an embedding space (GEOM, Li et al., ICASSP 2022, arXiv 2203.12122).

    For each class c, pairs (a, b) of class-c samples are drawn uniformly without replacement (see
    :func:`sample_class_pairs`) with λ ~ U(0, 1); the interpolant λ z_a + (1 − λ) z_b goes through
    ``downstream`` and Conv_c is the fraction of interpolants predicted c. The conditional version
    keeps only the drawn pairs whose two endpoints ``downstream`` classifies correctly (their
    count is reported: it can be small for a weak model).

    A linear (or affine) ``downstream`` has convex decision regions, so there the conditional
    convexity is exactly 1 and only misclassified endpoints lower Conv_c: the fused space of the
    built-in models (linear head) says little; their modality spaces, which go through the fusion,
    are where convexity is informative.

    Two kinds of space:

    * a single space, ``z`` a tensor (N, D) (e.g. the fused embedding) and ``downstream`` mapping
      (B, D) -> logits (B, K) (e.g. ``model.head_from_fused``);
    * one modality's space, ``z`` a mapping ``{m: (N, D_m)}`` of every modality's embeddings and
      ``space`` the interpolated modality; the other modalities are **held at endpoint a's values**
      and ``downstream`` maps such a mapping of (B, D_m) tensors to logits (B, K) (e.g.
      ``model.logits_from_embeddings``).

    Args:
        z: Embeddings, (N, D) or ``{m: (N, D_m)}``, on the device ``downstream`` runs on.
        labels: True labels, (N,) integers in [0, K).
        downstream: The network after the space, returning logits; called under ``torch.no_grad``
            on batches of at most ``batch_size`` rows (put the model in eval mode first).
        space: The interpolated modality when ``z`` is a mapping.
        num_classes: K (default: ``max(labels) + 1``).
        pairs_per_class: Most pairs per class (all pairs when a class has fewer).
        generator: CPU generator for pairs and λ (default: one seeded with ``seed``).
        seed: Seed used when ``generator`` is None.
        batch_size: Rows per ``downstream`` call.

    Returns:
        A :class:`ConvexityResult` with per-class, macro, conditional and per-pair values.

    Raises:
        InputError: Malformed embeddings / labels / logits, bad hyper-parameters, or no class with
            at least 2 samples.
    """
    pairs_per_class = check_int(pairs_per_class, "", "pairs_per_class")
    batch_size = check_int(batch_size, "", "batch_size")
    if not callable(downstream):
        raise InputError(f"downstream must be callable (embeddings -> logits), got {type(downstream).__name__}")
    zs, n = _as_space(z, space)
    labels, num_classes = _check_labels(labels, n, num_classes)
    if generator is None:
        generator = torch.Generator().manual_seed(check_int(seed, "", "seed", minimum=None))
    a, b, lam, cls = sample_class_pairs(labels, pairs_per_class, generator, num_classes)
    if a.numel() == 0:
        raise InputError("convexity needs at least one class with 2 or more samples")
    device = _device(zs, space)
    with torch.no_grad():
        clean = torch.cat([
            _logits(downstream, _gather(zs, idx.to(device)), idx.numel(), num_classes).argmax(1).cpu()
            for idx in torch.arange(n).split(batch_size)
        ])
        preds = []
        for sa, sb, sl in zip(a.split(batch_size), b.split(batch_size), lam.split(batch_size), strict=True):
            sa, sb = sa.to(device), sb.to(device)
            if isinstance(zs, dict):
                zs_space = zs[space]  # type: ignore[index]
                w = sl.to(device=device, dtype=zs_space.dtype)[:, None]
                inp: Any = {m: t[sa] for m, t in zs.items()}
                inp[space] = w * zs_space[sa] + (1 - w) * zs_space[sb]
            else:
                w = sl.to(device=device, dtype=zs.dtype)[:, None]
                inp = w * zs[sa] + (1 - w) * zs[sb]
            preds.append(_logits(downstream, inp, sa.numel(), num_classes).argmax(1).cpu())
    pred = torch.cat(preds)
    correct = clean == labels
    hit = (pred == cls).double()
    both = correct[a] & correct[b]
    pairs = torch.bincount(cls, minlength=num_classes)
    pairs_c = torch.bincount(cls, weights=both.double(), minlength=num_classes).long()
    hits = torch.bincount(cls, weights=hit, minlength=num_classes)
    hits_c = torch.bincount(cls, weights=hit * both.double(), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(pairs.numpy() > 0, hits.numpy() / pairs.numpy(), np.nan)
        per_class_c = np.where(pairs_c.numpy() > 0, hits_c.numpy() / pairs_c.numpy(), np.nan)
    return ConvexityResult(
        per_class=per_class,
        per_class_conditional=per_class_c,
        pairs=pairs.numpy(),
        pairs_conditional=pairs_c.numpy(),
        a=a.numpy(),
        b=b.numpy(),
        lam=lam.numpy(),
        cls=cls.numpy(),
        pred=pred.numpy(),
        both_correct=both.numpy(),
        pairs_per_class=pairs_per_class,
    )


# ------------------------------------------------------------------------------------------ density
@dataclass
class DensityResult:
    """Class density of one embedding space (our operationalisation of GEOM's density, §4).

    Attributes:
        rho: ρ(i) per point, (N,); NaN for points whose class has a single sample.
        knn_any: Mean cosine distance to the k nearest points of any class, (N,).
        knn_same: Mean cosine distance to the k nearest points of the same class, (N,).
        per_class: Median ρ per class, (K,); NaN for classes with fewer than 2 samples.
        counts: Samples per class, (K,).
        frequency: Class frequency counts / N, (K,).
        k: Neighbours requested.
        k_used: Neighbours actually used per class, (K,) (< k only with ``small_classes="shrink"``;
            0 for classes with fewer than 2 samples).
    """

    rho: np.ndarray
    knn_any: np.ndarray
    knn_same: np.ndarray
    per_class: np.ndarray
    counts: np.ndarray
    frequency: np.ndarray
    k: int
    k_used: np.ndarray

    @property
    def macro(self) -> float:
        """Mean of the class densities over classes that have one (NaN if none)."""
        return _nanmean(self.per_class)

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-friendly dict (NaN -> None); ``per_sample`` adds ρ and the kNN distances."""
        out: dict[str, Any] = {
            "macro": self.macro,
            "per_class": self.per_class,
            "counts": self.counts,
            "frequency": self.frequency,
            "k": self.k,
            "k_used": self.k_used,
        }
        if per_sample:
            out.update(rho=self.rho, knn_any=self.knn_any, knn_same=self.knn_same)
        return _jsonable(out)


def _knn_distances(u: Tensor, k: int, chunk: int) -> Tensor:
    """Cosine distances (n, k), ascending, from each unit row of ``u`` to its k nearest other rows."""
    out = []
    for s in range(0, u.shape[0], chunk):  # a loop over blocks of rows, each one matrix product
        sim = u[s : s + chunk] @ u.T  # (c, n) cosine similarities
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, rows + s] = -math.inf  # exclude the point itself
        out.append((1.0 - sim.topk(k, dim=1).values).clamp_min_(0.0))
    return torch.cat(out) if out else u.new_zeros(0, k)


def density(
    z: Tensor,
    labels: Tensor,
    *,
    k: int = 10,
    num_classes: int | None = None,
    small_classes: SmallClasses = "error",
    chunk_size: int | None = None,
    max_points: int = 50_000,
) -> DensityResult:
    """Class density of an embedding space — our operationalisation of GEOM's density (§4).

    On L2-normalised embeddings with cosine distance d(i, j) = 1 − cos(z_i, z_j),

        ρ(i) = mean_{j ∈ kNN_any(i)} d(i, j) / mean_{j ∈ kNN_same(i)} d(i, j),

    kNN_any over every other point, kNN_same over the other points of i's class (the point itself
    is always excluded). ρ ∈ [0, 1]; higher = purer, denser class neighbourhoods. When i's k
    nearest same-class points are all at distance 0, ρ(i) = 1. Class density = median ρ over the
    class. Exact kNN by chunked matrix products and ``topk`` (cost O(N² D)), meant for N ≤ 50k.

    Args:
        z: Embeddings (N, D) (any device; all-zero rows count as at distance 1 from every point).
        labels: Labels (N,) integers in [0, K).
        k: Neighbours (the spec's default is 10).
        num_classes: K (default: ``max(labels) + 1``); absent classes get NaN density.
        small_classes: What to do with a class of 2..k samples, which has fewer than k other
            members: ``"error"`` (default) raises; ``"shrink"`` uses k_c = n_c − 1 neighbours for
            that class's points in *both* terms of ρ. Classes with a single sample always get NaN.
        chunk_size: Query rows per similarity block (default: about 8M similarities per block).
        max_points: Refuse more points than this (exact kNN is quadratic).

    Returns:
        A :class:`DensityResult` with per-point ρ, per-class medians, counts and frequencies.

    Raises:
        InputError: Malformed inputs, k ≥ N, too many points, or (``"error"``) a class of 2..k
            samples.
    """
    k = check_int(k, "", "k")
    max_points = check_int(max_points, "", "max_points")
    if small_classes not in ("error", "shrink"):
        raise InputError(f"small_classes must be 'error' or 'shrink', got {small_classes!r}")
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "", "chunk_size")
    z = _check_matrix("z", z)
    n = int(z.shape[0])
    labels, num_classes = _check_labels(labels, n, num_classes)
    if n > max_points:
        raise InputError(f"density uses exact kNN (quadratic); {n} points exceed max_points={max_points}: "
                         "subsample or raise max_points")
    if k >= n:
        raise InputError(f"k={k} must be smaller than the number of points N={n}")
    counts = torch.bincount(labels, minlength=num_classes)
    small = [c for c, n_c in enumerate(counts.tolist()) if 2 <= n_c <= k]
    if small and small_classes == "error":
        c = small[0]
        raise InputError(f"class {c} has {int(counts[c])} samples, so fewer than k={k} same-class neighbours "
                         f"(classes with too few samples: {small}); lower k or pass small_classes='shrink'")
    chunk = chunk_size or max(1, _BLOCK_ELEMENTS // n)
    zn = F.normalize(z if z.dtype == torch.float64 else z.float(), dim=1)
    device = zn.device
    k_used = torch.where(counts >= 2, counts.clamp_max(k + 1) - 1, 0)  # per class
    k_point = k_used[labels].to(device)  # per point, 0 for singleton classes

    # any class: the k nearest, then the mean over each point's first k_point of them
    d_any = _knn_distances(zn, k, chunk)
    take = torch.arange(k, device=device)[None, :] < k_point[:, None]
    knn_any = torch.where(take, d_any, 0.0).sum(1) / k_point.clamp_min(1)
    # same class: one block per class (cost Σ n_c² D instead of N² D)
    knn_same = torch.zeros(n, dtype=zn.dtype, device=device)
    order = torch.argsort(labels, stable=True)
    start = 0
    for c, n_c in enumerate(counts.tolist()):  # a loop over classes, not samples
        idx = order[start : start + n_c].to(device)
        start += n_c
        if n_c < 2:
            continue
        members = zn[idx]
        knn_same[idx] = _knn_distances(members, int(k_used[c]), chunk).mean(1)
    rho = torch.where(knn_same > 0, knn_any / knn_same.clamp_min(torch.finfo(zn.dtype).tiny), 1.0)
    rho = torch.where(k_point > 0, rho, math.nan)

    rho_np = rho.double().cpu().numpy()
    lab = labels.numpy()
    per_class = np.array([
        float(np.median(rho_np[lab == c])) if n_c >= 2 else math.nan for c, n_c in enumerate(counts.tolist())
    ])
    alone = k_point.cpu().numpy() == 0  # singleton classes: no neighbours

    def per_point(t: Tensor) -> np.ndarray:
        out = t.double().cpu().numpy()
        out[alone] = math.nan
        return out

    return DensityResult(
        rho=rho_np,
        knn_any=per_point(knn_any),
        knn_same=per_point(knn_same),
        per_class=per_class,
        counts=counts.numpy(),
        frequency=counts.double().numpy() / max(n, 1),
        k=k,
        k_used=k_used.numpy(),
    )


# ------------------------------------------------------------------------------------------ report
@dataclass
class SpaceGeometry:
    """Convexity and density of one space of a model.

    Attributes:
        space: ``"fused"`` or a modality name.
        dim: Embedding dimension of the space.
        convexity: Its :class:`ConvexityResult`.
        density: Its :class:`DensityResult`.
    """

    space: str
    dim: int
    convexity: ConvexityResult
    density: DensityResult

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "space": self.space,
            "dim": self.dim,
            "convexity": self.convexity.to_dict(per_sample),
            "density": self.density.to_dict(per_sample),
        }


@dataclass
class GeometryReport:
    """Latent geometry of a model on one split: one :class:`SpaceGeometry` per space.

    Attributes:
        model: Model name.
        n: Samples in the split.
        num_classes: K.
        class_names: Class names (K,).
        accuracy: Clean accuracy of the model on the split.
        seed: Seed of the pair sampling (the same pairs and λ in every space).
        params: ``pairs_per_class``, ``k``, ``small_classes``.
        spaces: ``{space: SpaceGeometry}``, fused first, then modalities in model order.
    """

    model: str
    n: int
    num_classes: int
    class_names: list[str]
    accuracy: float
    seed: int
    params: dict[str, Any]
    spaces: dict[str, SpaceGeometry] = field(default_factory=dict)

    @property
    def class_frequency(self) -> np.ndarray:
        """Class frequency (K,) of the split."""
        first = next(iter(self.spaces.values()))
        return first.density.frequency

    def rows(self) -> list[dict[str, Any]]:
        """One summary row per space: macro convexity (all / both endpoints correct), macro density."""
        return [
            {
                "space": s.space,
                "dim": s.dim,
                "convexity": s.convexity.macro,
                "convexity_correct": s.convexity.macro_conditional,
                "density": s.density.macro,
                "pairs": int(s.convexity.pairs.sum()),
                "pairs_correct": int(s.convexity.pairs_conditional.sum()),
            }
            for s in self.spaces.values()
        ]

    def table(self) -> str:
        """Aligned text table of :meth:`rows` (three decimals)."""
        cols = ("space", "dim", "convexity", "convexity_correct", "density", "pairs", "pairs_correct")
        cells = [[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in self.rows()]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines = [f"{self.model}: n={self.n}, accuracy={self.accuracy:.3f}, k={self.params['k']}, "
                 f"pairs_per_class={self.params['pairs_per_class']}, seed={self.seed}"]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-friendly dict (strict JSON: NaN -> None); ``per_sample`` adds per-pair / per-point arrays."""
        return _jsonable({
            "model": self.model,
            "n": self.n,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "accuracy": self.accuracy,
            "seed": self.seed,
            "params": self.params,
            "class_frequency": self.class_frequency,
            "spaces": {name: s.to_dict(per_sample) for name, s in self.spaces.items()},
        })


def geometry_report(
    model: Any,
    dataset: Any,
    *,
    spaces: Sequence[str] | None = None,
    pairs_per_class: int = 1000,
    k: int = 10,
    seed: int = 0,
    batch_size: int = 512,
    small_classes: SmallClasses = "error",
    max_points: int = 50_000,
    name: str | None = None,
) -> GeometryReport:
    """Convexity and density of a model's fused space and each modality's space on a split (GEOM §4).

    Embeddings come from the model's hooks: z_m = ``model.encode(x)[m]``, fused = ``model.fuse(z)[0]``.
    Downstream of the fused space is ``model.head_from_fused``; downstream of modality m's space is
    ``model.logits_from_embeddings`` with the other modalities held at endpoint a's embeddings. For
    late fusion the fused "embedding" is the fused logit vector. Every space uses the same pairs and
    λ (one generator seeded with ``seed`` per space), so spaces are compared on identical pairs.

    Args:
        model: A :class:`~mmrobust.models.base.MultimodalModel` (evaluated in eval mode, under
            ``torch.no_grad``; its training flag is restored).
        dataset: A :class:`~mmrobust.datasets.dataset.MultimodalDataset` split, e.g. ``data.test``.
        spaces: Subset of ``["fused", *model.modalities]`` (default: all of them).
        pairs_per_class: Convexity pairs per class.
        k: Density neighbours.
        seed: Pair-sampling seed.
        batch_size: Samples per encoder / downstream batch.
        small_classes: Density's policy for classes of 2..k samples (see :func:`density`).
        max_points: Largest split density accepts.
        name: Model name in the report (default: its fusion name).

    Returns:
        A :class:`GeometryReport` (``.table()``, ``.rows()``, ``.to_dict()``).
    """
    if not isinstance(model, MultimodalModel):
        raise InputError(f"geometry_report() needs a mmrobust MultimodalModel, got {type(model).__name__}")
    require_hook(model, "geometry", "fuse")  # per-modality and fused embeddings, the head downstream
    if not isinstance(dataset, MultimodalDataset):
        raise InputError(f"geometry_report() needs a MultimodalDataset split (e.g. data.test), "
                         f"got {type(dataset).__name__}")
    for m in model.modalities:
        if m not in dataset.spec:
            raise InputError(f"model needs modality {m!r}, dataset has {dataset.spec.names}")
    known = ["fused", *model.modalities]
    if spaces is None:
        spaces = known
    elif isinstance(spaces, str):
        spaces = [spaces]
    spaces = list(spaces)
    for s in spaces:
        if s not in known:
            raise InputError(f"unknown space {s!r}; this model has {known}")
    if len(set(spaces)) != len(spaces):
        raise InputError(f"duplicate spaces: {spaces}")
    if not spaces:
        raise InputError("spaces must name at least one space")
    seed = check_int(seed, "", "seed", minimum=None)
    batch_size = check_int(batch_size, "", "batch_size")
    check_int(pairs_per_class, "", "pairs_per_class")
    check_int(k, "", "k")
    if len(dataset) == 0:
        raise InputError("the dataset split is empty")

    data = dataset.select(model.modalities)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            zs: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
            fused, preds = [], []
            for x, _, _ in data.batches(batch_size):
                x = {m: t.to(device) for m, t in x.items()}
                z = model.encode(x)
                f = model.fuse(z)[0]
                preds.append(model.head_from_fused(f).argmax(1).cpu())
                fused.append(f)
                for m in zs:
                    zs[m].append(z[m])
            z_all = {m: torch.cat(v) for m, v in zs.items()}
            fused_all = torch.cat(fused)
        labels = data.labels
        accuracy = float((torch.cat(preds) == labels).double().mean())
        report = GeometryReport(
            model=name or str(model.config.get("name", model.fusion_name)),
            n=len(data),
            num_classes=model.num_classes,
            class_names=list(data.spec.class_names or [str(c) for c in range(model.num_classes)]),
            accuracy=accuracy,
            seed=int(seed),
            params={"pairs_per_class": int(pairs_per_class), "k": int(k), "small_classes": small_classes},
        )
        for s in spaces:
            gen = torch.Generator().manual_seed(int(seed))
            if s == "fused":
                conv = convexity(fused_all, labels, model.head_from_fused, num_classes=model.num_classes,
                                 pairs_per_class=pairs_per_class, generator=gen, batch_size=batch_size)
                emb = fused_all
            else:
                conv = convexity(z_all, labels, model.logits_from_embeddings, space=s, num_classes=model.num_classes,
                                 pairs_per_class=pairs_per_class, generator=gen, batch_size=batch_size)
                emb = z_all[s]
            dens = density(emb, labels, k=k, num_classes=model.num_classes, small_classes=small_classes,
                           max_points=max_points)
            report.spaces[s] = SpaceGeometry(space=s, dim=int(emb.shape[1]), convexity=conv, density=dens)
    finally:
        model.train(was_training)
    return report
