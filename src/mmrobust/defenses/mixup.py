"""Metric-guided mix-up (GEOM, methods.md §4) and plain mix-up (methods.md §6).

GEOM (Li, Qu, Li, Huang, Metze, *On Adversarial Robustness of Large-scale Audio Visual Learning*,
ICASSP 2022, arXiv 2203.12122) relates robustness to the latent geometry of classes (convexity and
density, :mod:`mmrobust.metrics.geometry`) and reports that mix-up training (Zhang, Cisse, Dauphin,
Lopez-Paz, *mixup: Beyond Empirical Risk Minimization*, ICLR 2018, arXiv 1710.09412) gives robustness
comparable to adversarial training at a fraction of its cost. The exact recipe of the metric-guided
variant is not public; this module implements **our operationalisation** with the switches of
methods.md §4:

* ``level`` — where samples are mixed: ``input`` (raw modality tensors; token-id modalities through
  their token embeddings, see below), ``modality`` (every per-modality embedding z_m = φ_m(x_m), the
  same λ for all modalities of a pair — manifold mix-up, Verma et al., ICML 2019), or ``fused`` (the
  fused embedding, before the head; for late fusion that is the summed logit vector);
* ``pairing`` — ``any-class`` (the partner is a uniformly random sample of the batch, as in plain
  mix-up) or ``same-class`` (a uniformly random *other* sample of the anchor's class in the batch; the
  anchor itself when it is alone in its class);
* ``weighting`` — which classes get mixed: ``none`` (every sample), ``convexity`` (class weight
  w_c ∝ (1 − Conv_c)^β) or ``density`` (w_c ∝ (1/density_c)^β; β = 1 is methods.md's 1/density_c),
  with Conv_c and density_c measured on the **validation split** at the end of every ``every``-th
  epoch (every sample mixed until the first measurement);
* λ ~ Beta(α, α), one per pair (shared by all modalities of the pair), and soft targets
  λ·onehot(y_a) + (1 − λ)·onehot(y_b) (one-hot for same-class pairs).

**How the class weights act (our operationalisation).** :func:`mr.train <mmrobust.train>` owns the
shuffling, so classes cannot be resampled across the dataset. Instead each sample of a batch is
*selected for mixing* with probability p_c = w_c / max_k w_k for its class c (the class that needs it
most is always mixed); a sample that is not selected stays clean with its hard label (λ = 1). The
number of mixed samples per class is thus ∝ w_c · n_c, classes with a convex, dense geometry are
trained mostly on clean data, and no class ever drops out of training. ``min_prob`` = m puts a floor
under the probabilities, p_c = m + (1 − m)·w_c / max_k w_k (m = 0, the default, is the formula of
methods.md). ``weighting="none"`` mixes
every sample: with ``level="input"`` and ``pairing="any-class"`` that is exactly plain mix-up,
registered as ``"plain_mixup"`` (:class:`PlainMixUp`).

**Token ids at the input level.** Token ids cannot be interpolated; a text modality (a
:meth:`~mmrobust.models.MultimodalModel.has_token_embeddings`) is mixed through its token embeddings,
e_mix = λ·E[t_a] + (1 − λ)·E[t_b] (N, L, D), with the union of both sequences' non-pad positions as
the mask (a position that is padding in one sequence contributes the zero padding embedding). This is
the surface the attacks perturb too (``token_surface="embedding"``). Other integer modalities are
refused at ``level="input"``.

**Threat model.** Mix-up is a training-time regulariser, not tied to a perturbation budget; its claim
(GEOM) is robustness to single-source and all-modality ℓ∞ PGD comparable to PGD adversarial training.
Evaluate it adaptively like any undefended model: it changes only the weights, so white-box PGD / APGD
through the model (``mr.evaluate``) is the adaptive attack; report the per-modality and per-sample
worst case (``modalities="each"``).

Example:
    >>> import mmrobust as mr
    >>> d = mr.defenses.create("mixup", alpha=1.0, weighting="convexity", beta=1.0, every=2, epochs=20)
    >>> d.params()["level"], d.params()["pairing"]
    ('input', 'any-class')
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset
from mmrobust.defenses.base import Defense
from mmrobust.defenses.registry import DEFENSES
from mmrobust.defenses.training import check_training, supervised_loss, train_copy, training_info, unimodal_weight
from mmrobust.errors import InputError
from mmrobust.metrics.geometry import geometry_report
from mmrobust.models.base import MultimodalModel
from mmrobust.train import accuracy
from mmrobust.utils.checks import check_fraction, check_int, check_nonnegative, check_positive

__all__ = [
    "LEVELS",
    "PAIRINGS",
    "WEIGHTINGS",
    "MixUp",
    "MixUpObjective",
    "MixedPairs",
    "PlainMixUp",
    "draw_lambda",
    "draw_pairs",
    "mix_inputs",
    "mix_rows",
    "mixing_probabilities",
    "soft_targets",
]

LEVELS: tuple[str, ...] = ("input", "modality", "fused")
PAIRINGS: tuple[str, ...] = ("same-class", "any-class")
WEIGHTINGS: tuple[str, ...] = ("none", "convexity", "density")
#: Density values are clamped to at least this before 1/density (density 0 would give an infinite weight).
_MIN_DENSITY = 1e-6


# ------------------------------------------------------------------------------------------ pieces
def mixing_probabilities(values: Any, weighting: str, beta: float = 1.0, min_prob: float = 0.0) -> Tensor:
    """Per-class probability of a sample being mixed, from per-class geometry values (our operationalisation).

    Class weights (methods.md §4): ``convexity``: w_c = (1 − Conv_c)^β; ``density``:
    w_c = (1/density_c)^β (density clamped to ≥ 1e-6); ``none``: w_c = 1. The probabilities are
    p_c = m + (1 − m)·w_c / max_k w_k with m = ``min_prob`` (default 0: p_c ∝ w_c exactly), so the
    neediest class is always mixed. A class whose value is NaN (no pairs / fewer than 2 validation
    samples) gets p_c = 1; if every weight is 0 (all classes perfectly convex) every class gets
    p_c = 1 (plain mix-up).

    Args:
        values: Conv_c (in [0, 1]) or density_c (> 0) per class, shape (K,); ignored for ``none``
            (then only its length K is used).
        weighting: ``none``, ``convexity`` or ``density``.
        beta: Exponent β >= 0 (β = 0: uniform).
        min_prob: Floor m in [0, 1] of the probabilities (m = 1: plain mix-up).

    Returns:
        p (K,) float64 in [m, 1] with max 1.
    """
    if weighting not in WEIGHTINGS:
        raise InputError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    check_nonnegative(beta, "", "beta")
    check_fraction(min_prob, "", "min_prob", closed=True)
    v = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if v.dim() != 1 or v.numel() == 0:
        raise InputError(f"values must be one number per class (K,), got shape {tuple(v.shape)}")
    if weighting == "none":
        return torch.ones_like(v)
    if weighting == "convexity":
        raw = (1.0 - v.clamp(0.0, 1.0)).pow(float(beta))
    else:
        raw = (1.0 / v.clamp_min(_MIN_DENSITY)).pow(float(beta))
    top = float(raw.nan_to_num(nan=0.0).max())
    if top <= 0:
        return torch.ones_like(v)
    return float(min_prob) + (1.0 - float(min_prob)) * (raw / top).nan_to_num(nan=1.0)


def draw_lambda(n: int, alpha: float, generator: torch.Generator) -> Tensor:
    """Draw λ ~ Beta(α, α) n times (float64, CPU) by inverse-CDF sampling of uniforms from ``generator``.

    torch's Beta sampler takes no generator; the regularised incomplete beta inverse applied to
    ``torch.rand(n, generator=generator)`` gives exact Beta draws that a seed reproduces.
    """
    from scipy.special import betaincinv

    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if alpha == 1.0:
        return u  # Beta(1, 1) is U(0, 1)
    return torch.from_numpy(betaincinv(float(alpha), float(alpha), u.numpy())).clamp(0.0, 1.0)


def draw_pairs(
    y: Tensor, pairing: str, generator: torch.Generator, mix_prob: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Partners and mixing selection for one batch (anchors are the batch itself, in order).

    Args:
        y: Labels (N,) (CPU).
        pairing: ``any-class`` (partner uniform over the batch, the anchor included, as in plain
            mix-up's shuffled batch) or ``same-class`` (uniform over the *other* samples of the
            anchor's class in the batch; the anchor itself when it is alone in its class).
        generator: CPU generator; draws, in order: the selection uniforms (only with ``mix_prob``),
            then the partner draws.
        mix_prob: Per-class probability (K,) of a sample being mixed; None mixes every sample.

    Returns:
        ``(b, mixed)``: partner index (N,) int64 and selection (N,) bool; unselected samples are
        their own partner.
    """
    y = y.detach().long().cpu()
    n = int(y.numel())
    if mix_prob is None:
        mixed = torch.ones(n, dtype=torch.bool)
    else:
        mixed = torch.rand(n, generator=generator, dtype=torch.float64) < mix_prob.double().cpu()[y]
    if pairing == "any-class":
        b = torch.randperm(n, generator=generator)
    elif pairing == "same-class":
        k = int(y.max()) + 1 if n else 1
        order = torch.argsort(y, stable=True)  # samples grouped by class
        counts = torch.bincount(y, minlength=k)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.empty(n, dtype=torch.long)
        pos[order] = torch.arange(n) - starts[y[order]]  # position of each sample inside its class group
        n_c = counts[y]
        # a uniform offset in 1..n_c-1 from the anchor's position: a uniform *other* member of its class
        off = 1 + (torch.rand(n, generator=generator, dtype=torch.float64) * (n_c - 1).double()).floor().long()
        off = torch.minimum(off, (n_c - 1).clamp_min(1))
        q = torch.where(n_c > 1, (pos + off) % n_c, pos)
        b = order[starts[y] + q]
    else:
        raise InputError(f"unknown pairing {pairing!r}; choose one of {', '.join(PAIRINGS)}")
    b = torch.where(mixed, b, torch.arange(n))
    return b, mixed


def soft_targets(y_a: Tensor, y_b: Tensor, lam: Tensor, num_classes: int) -> Tensor:
    """Mix-up targets λ·onehot(y_a) + (1 − λ)·onehot(y_b), shape (N, K); rows sum to 1."""
    w = lam.to(torch.float32)[:, None]
    return w * F.one_hot(y_a, num_classes).float() + (1 - w) * F.one_hot(y_b, num_classes).float()


def mix_rows(t: Tensor, b: Tensor, lam: Tensor) -> Tensor:
    """λ_i · t_i + (1 − λ_i) · t_{b_i} for every row i of ``t`` (N, ...)."""
    w = lam.to(device=t.device, dtype=t.dtype).reshape(-1, *([1] * (t.dim() - 1)))
    return w * t + (1 - w) * t[b.to(t.device)]


def mix_inputs(
    model: MultimodalModel, x: Mapping[str, Tensor], b: Tensor, lam: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Input-level mix of a batch: continuous modalities directly, token ids through their embeddings.

    Args:
        model: The model (its token embeddings are used for text modalities; differentiable).
        x: Batch ``{m: (N, *shape)}``.
        b: Partner index (N,).
        lam: λ per sample (N,).

    Returns:
        ``(x_mix, embeddings)``: the mixed batch, where a token modality holds tokens whose non-pad
        positions are the union of both sequences' (they only give the mask), and ``embeddings``
        ``{m: (N, L, D)}`` the mixed token embeddings, for ``model.encode(x_mix, embeddings=...)``.
    """
    x_mix: dict[str, Tensor] = {}
    emb: dict[str, Tensor] = {}
    for m in model.modalities:
        t = x[m]
        if model.spec[m].is_tokens:
            pad = model.spec[m].pad_id
            bb = b.to(t.device)
            emb[m] = mix_rows(model.embed(m, t), b, lam)
            x_mix[m] = t if pad is None else torch.where(t != pad, t, t[bb])
        else:
            x_mix[m] = mix_rows(t, b, lam)
    return x_mix, emb


@dataclass
class MixedPairs:
    """The random draws of one mixed batch (all CPU tensors of shape (N,)).

    Attributes:
        b: Partner of each sample (the anchor is the sample itself); itself when not mixed.
        lam: λ (float32); 1 where the sample is not mixed.
        mixed: Whether the sample was selected for mixing.
    """

    b: Tensor
    lam: Tensor
    mixed: Tensor


# ------------------------------------------------------------------------------------------ objective
class MixUpObjective:
    """The per-batch loss of (metric-guided) mix-up for :func:`mmrobust.train`, plus its validation hook.

    ``objective(model, x, y, generator) -> (loss, logits)``: draws the pairs and λ from ``generator``,
    mixes at the configured level and returns the soft-target cross-entropy of the fused logits plus
    the auxiliary per-branch term (``unimodal_loss`` × mean per-branch soft CE on the mixed
    per-modality embeddings), as :func:`mmrobust.train.standard_objective` does on clean data.
    ``score(model, val)`` is the validation accuracy used for model selection; at the end of every
    ``every``-th epoch it also re-measures the class geometry on ``val`` and updates
    :attr:`mix_prob`.

    Args:
        defense: The :class:`MixUp` whose switches apply.
        unimodal_loss: Weight of the auxiliary per-branch loss.
        seed: Seed of the geometry measurements' pair sampling (plus the epoch number).

    Attributes:
        mix_prob: Current per-class mixing probabilities (K,) (None until the first measurement, or
            always with ``weighting="none"``: every sample is mixed).
        history: One record per measurement: ``epoch``, ``values`` (Conv_c or density_c per class),
            ``mix_prob``.
        counts: ``{"samples", "mixed"}`` seen so far.
    """

    def __init__(self, defense: MixUp, unimodal_loss: float = 1.0, seed: int = 0) -> None:
        self.d = defense
        self.unimodal_loss = float(unimodal_loss)
        self.seed = int(seed)
        self.mix_prob: Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.counts = {"samples": 0, "mixed": 0}
        self.epoch = 0

    def draw(self, y: Tensor, generator: torch.Generator) -> MixedPairs:
        """Partners, selection and λ for a batch with labels ``y`` (N,)."""
        b, mixed = draw_pairs(y, self.d.pairing, generator, self.mix_prob)
        lam = draw_lambda(int(y.numel()), self.d.alpha, generator).float()
        lam = torch.where(mixed, lam, torch.ones_like(lam))
        return MixedPairs(b=b, lam=lam, mixed=mixed)

    def __call__(
        self, model: MultimodalModel, x: dict[str, Tensor], y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Mixed-batch loss (scalar) and the fused logits of the mixed batch (N, K)."""
        pairs = self.draw(y, generator)
        self.counts["samples"] += int(y.numel())
        self.counts["mixed"] += int(pairs.mixed.sum())
        device = y.device
        b, lam = pairs.b.to(device), pairs.lam.to(device)
        target = soft_targets(y, y[b], lam, model.num_classes)
        level = self.d.level
        if level == "input":
            x_mix, emb = mix_inputs(model, x, b, lam)
            z = model.encode(x_mix, embeddings=emb or None)
            return supervised_loss(model, z, target, self.unimodal_loss)
        z = model.encode(x)
        z_mix = {m: mix_rows(t, b, lam) for m, t in z.items()}
        if level == "modality":
            return supervised_loss(model, z_mix, target, self.unimodal_loss)
        fused = mix_rows(model.fuse(z)[0], b, lam)  # level == "fused"
        return supervised_loss(model, z_mix, target, self.unimodal_loss, fused=fused)

    def measure(self, model: MultimodalModel, val: MultimodalDataset) -> np.ndarray:
        """Per-class Conv_c or density_c (K,) of ``model`` on ``val`` in the configured space(s).

        ``space="modalities"`` averages the per-class values over every modality's embedding space
        (NaN-aware); ``"fused"`` or a modality name uses that one space.
        """
        spaces = list(model.modalities) if self.d.space == "modalities" else [self.d.space]
        rep = geometry_report(
            model, val, spaces=spaces, pairs_per_class=self.d.pairs_per_class, k=self.d.k,
            seed=self.seed + self.epoch, small_classes="shrink",
        )
        if self.d.weighting == "convexity":
            vals = np.stack([rep.spaces[s].convexity.per_class for s in spaces])
        else:
            vals = np.stack([rep.spaces[s].density.per_class for s in spaces])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            return np.nanmean(vals, axis=0)

    def update(self, model: MultimodalModel, val: MultimodalDataset) -> None:
        """Re-measure the class geometry on ``val`` and recompute :attr:`mix_prob`."""
        values = self.measure(model, val)
        self.mix_prob = mixing_probabilities(values, self.d.weighting, self.d.beta, self.d.min_prob)
        self.history.append({
            "epoch": self.epoch,
            "values": [None if not math.isfinite(v) else float(v) for v in values.tolist()],
            "mix_prob": [float(p) for p in self.mix_prob.tolist()],
        })

    def score(self, model: MultimodalModel, val: MultimodalDataset) -> float:
        """Validation accuracy (model selection); every ``every``-th epoch also :meth:`update`."""
        self.epoch += 1
        acc = accuracy(model, val)
        if self.d.weighting != "none" and self.epoch % self.d.every == 0:
            self.update(model, val)
        return acc


# ------------------------------------------------------------------------------------------ defences
@DEFENSES.register()
class MixUp(Defense):
    """Metric-guided mix-up training (GEOM, Li et al., ICASSP 2022, arXiv 2203.12122) — our operationalisation.

    Trains a copy of the model on mixed batches (see the module docstring for the exact recipe):
    partners by ``pairing``, λ ~ Beta(α, α) per pair, mixing at ``level``, soft targets, and
    per-class mixing probabilities ∝ (1 − Conv_c)^β or (1/density_c)^β re-measured on the validation
    split every ``every`` epochs (:func:`mixing_probabilities`). Model selection: best validation
    accuracy (:func:`mmrobust.train`).

    Threat model: none at training time (a regulariser); evaluate with white-box single-source and
    all-modality PGD through the trained model, per modality and per-sample worst case.

    Takes a fresh model (``mr.models.create(...)``) and returns the trained copy (a trained model
    is fine-tuned from its weights); the input model is never modified.

    Args:
        alpha: Beta(α, α) parameter, > 0 (α = 1: λ uniform; small α: λ near 0 or 1).
        level: ``input``, ``modality`` (per-modality embeddings) or ``fused`` (fused embedding).
        pairing: ``any-class`` or ``same-class``.
        weighting: ``none``, ``convexity`` or ``density``.
        beta: Exponent β >= 0 of the class weights.
        min_prob: Floor m in [0, 1] of the mixing probabilities, p_c = m + (1 − m)·w_c / max w
            (0: p_c ∝ w_c as in methods.md; 1: plain mix-up).
        every: Re-measure the class geometry every E >= 1 epochs (must be < ``epochs`` when a
            weighting is used, or it would never act).
        space: Where the geometry is measured: ``modalities`` (mean over every modality's
            embedding space, default), ``fused``, or one modality's name.
        pairs_per_class: Convexity pairs per class per measurement.
        k: Density neighbours.
        epochs: Training epochs.
        train: Other :class:`~mmrobust.train.TrainConfig` fields (``lr``, ``batch_size``,
            ``unimodal_loss``, ``modality_dropout`` ...).

    Shapes:
        Batches ``{m: (N, *spec[m].shape)}``; λ, partners and selection (N,); soft targets (N, K).

    Example:
        >>> import mmrobust as mr
        >>> data = mr.datasets.load("mmdigits")                                        # doctest: +SKIP
        >>> model = mr.defenses.create("mixup", weighting="convexity").apply(
        ...     mr.models.create("late", spec=data.spec), data, seed=0)                  # doctest: +SKIP
        >>> model.defense_info["weights"][-1]["mix_prob"]                              # doctest: +SKIP
    """

    name: ClassVar[str] = "mixup"
    kind: ClassVar[str] = "training"

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        level: str = "input",
        pairing: str = "any-class",
        weighting: str = "convexity",
        beta: float = 1.0,
        min_prob: float = 0.0,
        every: int = 2,
        space: str = "modalities",
        pairs_per_class: int = 200,
        k: int = 10,
        epochs: int = 20,
        train: Mapping[str, Any] | None = None,
    ) -> None:
        n = self.name
        check_positive(alpha, n, "alpha", note=" (λ ~ Beta(α, α))")
        if level not in LEVELS:
            raise InputError(f"{n}: unknown level {level!r}; choose one of {', '.join(LEVELS)}")
        if pairing not in PAIRINGS:
            raise InputError(f"{n}: unknown pairing {pairing!r}; choose one of {', '.join(PAIRINGS)}")
        if weighting not in WEIGHTINGS:
            raise InputError(f"{n}: unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        check_nonnegative(beta, n, "beta")
        check_fraction(min_prob, n, "min_prob", closed=True)
        for key, v in (("every", every), ("pairs_per_class", pairs_per_class), ("k", k)):
            check_int(v, n, key)
        if not isinstance(space, str) or not space:
            raise InputError(f"{n}: space must be 'modalities', 'fused' or a modality name, got {space!r}")
        self.alpha = float(alpha)
        self.level, self.pairing, self.weighting = level, pairing, weighting
        self.beta, self.min_prob = float(beta), float(min_prob)
        self.every, self.pairs_per_class, self.k = int(every), int(pairs_per_class), int(k)
        self.space = space
        self.epochs, self.train = check_training(n, epochs, train)
        if weighting != "none" and self.every >= self.epochs:
            raise InputError(
                f"{n}: every={self.every} must be smaller than epochs={self.epochs}: the class weights are first "
                "measured at the end of epoch `every` and would never be used"
            )

    def params(self) -> dict[str, Any]:
        """Every switch and the training settings."""
        return {
            "alpha": self.alpha, "level": self.level, "pairing": self.pairing, "weighting": self.weighting,
            "beta": self.beta, "min_prob": self.min_prob, "every": self.every, "space": self.space,
            "pairs_per_class": self.pairs_per_class, "k": self.k, "epochs": self.epochs, "train": dict(self.train),
        }

    def check(self, model: MultimodalModel) -> None:
        """Token modalities must have token embeddings at the input level; ``space`` must exist."""
        super().check(model)
        if self.level == "input":
            for m in model.modalities:
                if model.spec[m].is_tokens and not model.has_token_embeddings(m):
                    raise InputError(
                        f"{self.name}: level='input' mixes token ids through their embeddings, but modality {m!r} "
                        f"has none ({model.hook_error('embeddings', m)}); use level='modality' or 'fused'"
                    )
        if self.weighting != "none" and self.space not in ("modalities", "fused", *model.modalities):
            raise InputError(
                f"{self.name}: unknown space {self.space!r}; use 'modalities', 'fused' or one of {model.modalities}"
            )

    def objective(self, seed: int = 0) -> MixUpObjective:
        """A fresh per-batch objective (with its validation hook) for :func:`mmrobust.train`."""
        return MixUpObjective(self, unimodal_weight(self.train), seed=seed)

    def apply(
        self, model: MultimodalModel, data: DatasetBundle, *, seed: int = 0, quiet: bool = True
    ) -> MultimodalModel:
        """Train a copy of ``model`` with mix-up; returns it in eval mode (input untouched).

        ``defense_info``: training time and selection (``train_seconds``, ``best_epoch``,
        ``best_val_accuracy``), ``mixed_fraction`` (share of training samples that were mixed) and
        ``weights`` (every geometry measurement: epoch, per-class values, mixing probabilities).
        """
        self.check(model)
        obj = self.objective(seed)
        trained, result = train_copy(
            self, model, data, epochs=self.epochs, train_kwargs=self.train, seed=seed, quiet=quiet,
            objective=obj, score=obj.score,
        )
        info = {
            **training_info(result),
            "seed": int(seed),
            "mixed_fraction": obj.counts["mixed"] / max(obj.counts["samples"], 1),
            "weights": obj.history,
        }
        return self._mark(trained, info)


@DEFENSES.register()
class PlainMixUp(MixUp):
    """Plain mix-up (Zhang et al., ICLR 2018, arXiv 1710.09412), the baseline of methods.md §6.

    Exactly :class:`MixUp` with ``level="input"``, ``pairing="any-class"``, ``weighting="none"``:
    every sample of a batch is mixed with a uniformly random partner of the same batch,
    λ ~ Beta(α, α) per pair, soft targets; token ids are mixed through their embeddings.

    Args:
        alpha: Beta(α, α) parameter, > 0.
        epochs: Training epochs.
        train: Other :class:`~mmrobust.train.TrainConfig` fields.
    """

    name: ClassVar[str] = "plain_mixup"

    def __init__(self, alpha: float = 1.0, *, epochs: int = 20, train: Mapping[str, Any] | None = None) -> None:
        super().__init__(alpha, level="input", pairing="any-class", weighting="none", epochs=epochs, train=train)

    def params(self) -> dict[str, Any]:
        """``alpha``, ``epochs`` and the training settings (the switches are fixed)."""
        return {"alpha": self.alpha, "epochs": self.epochs, "train": dict(self.train)}
