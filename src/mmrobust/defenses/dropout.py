"""Modality dropout: the simplest training baseline (methods.md §6), and the training plumbing of the baselines.

**Modality dropout** trains a model on batches in which, per sample, one randomly chosen modality is
zeroed (padded, for token ids) with probability ``p``: the model cannot lean on a single stream, which
makes it less brittle when a modality goes missing and spreads its reliance over the modalities.
It is a common baseline in multimodal robustness work (e.g. Neverova et al., *ModDrop*, TPAMI 2016;
used as a bar in OOO, Yang et al., CVPR 2021, arXiv 2206.12714). It is not a defence against an
adversary with a budget (no threat model): it is measured against the same single-source attacks as
the others, to show what it does *not* buy.

The loop is :func:`mmrobust.train` with ``TrainConfig.modality_dropout = p`` (see
:func:`mmrobust.train._drop_modalities`); this class only gives it the defence interface
(``apply`` copies the model, trains the copy, records itself on it).

This module also holds what the baseline training defences (:mod:`~mmrobust.defenses.mixup`,
:mod:`~mmrobust.defenses.adversarial`, this one) share: validation of their training
hyper-parameters (:func:`check_training`), the training call (:func:`train_copy`) and the
supervised loss on (possibly soft) targets from per-modality embeddings (:func:`supervised_loss`).
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor

from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset
from mmrobust.defenses.base import Defense
from mmrobust.errors import InputError
from mmrobust.models.base import MultimodalModel
from mmrobust.train import Objective, TrainConfig, TrainResult, train

__all__ = ["ModalityDropout", "check_training", "supervised_loss", "train_copy", "training_info", "unimodal_weight"]

#: TrainConfig fields a defence sets itself (the run's seed and verbosity come from ``apply``).
_RESERVED = ("seed", "quiet", "epochs")


def check_training(
    defense: str, epochs: Any, train_kwargs: Mapping[str, Any] | None, reserved: tuple[str, ...] = ()
) -> tuple[int, dict[str, Any]]:
    """Validate a training defence's ``epochs`` and extra :class:`~mmrobust.train.TrainConfig` fields.

    Args:
        defense: Defence name, for the messages.
        epochs: Passes over the training split (an integer >= 1).
        train_kwargs: Other TrainConfig fields (``lr``, ``batch_size``, ``weight_decay``,
            ``unimodal_loss``, ``patience``, ...), or None.
        reserved: Fields this defence sets itself (besides ``seed``, ``quiet`` and ``epochs``).

    Returns:
        ``(epochs, train_kwargs as a plain dict)``.

    Raises:
        InputError: naming the bad value or key.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise InputError(f"{defense}: epochs must be an integer >= 1, got {epochs!r}")
    if train_kwargs is None:
        train_kwargs = {}
    if not isinstance(train_kwargs, Mapping):
        raise InputError(f"{defense}: train must be a dict of TrainConfig fields, got {type(train_kwargs).__name__}")
    out = dict(train_kwargs)
    for k in out:
        if k in _RESERVED or k in reserved:
            how = "apply(seed=..., quiet=...)" if k in ("seed", "quiet") else f"the {defense} hyper-parameter"
            raise InputError(f"{defense}: train[{k!r}] is set by the defence; use {how} instead")
    try:
        TrainConfig.model_validate({**out, "epochs": int(epochs)})
    except ValidationError as e:
        bad = ", ".join(".".join(str(p) for p in err["loc"]) + f" ({err['msg']})" for err in e.errors())
        raise InputError(f"{defense}: invalid train settings: {bad}") from None
    return int(epochs), out


def unimodal_weight(train_kwargs: Mapping[str, Any]) -> float:
    """The auxiliary per-modality loss weight the run will use (TrainConfig default unless overridden)."""
    return float(TrainConfig.model_validate(dict(train_kwargs)).unimodal_loss)


def supervised_loss(
    model: MultimodalModel,
    z: Mapping[str, Tensor],
    target: Tensor,
    unimodal_loss: float,
    fused: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the fused logits plus ``unimodal_loss`` × the mean per-branch cross-entropy.

    The same loss as :func:`mmrobust.train.standard_objective`, but from given per-modality
    embeddings and for hard or soft targets (mix-up).

    Args:
        model: The model being trained.
        z: Per-modality embeddings ``{m: (N, D_m)}``.
        target: Labels (N,) int64, or class probabilities (N, K) (soft targets; rows sum to 1).
        unimodal_loss: Weight of the per-branch term (late fusion: its unimodal logits; other
            fusions: the auxiliary heads on each z_m); 0 disables it.
        fused: Fused embedding (N, out_dim) to classify instead of ``fuse(z)`` (fused-level mix-up);
            the branch term still uses ``z``.

    Returns:
        ``(scalar loss, fused logits (N, K))``.
    """
    f, aux = model.fuse(z)
    logits = model.head_from_fused(f if fused is None else fused)
    loss = F.cross_entropy(logits, target)
    uni = model.branch_logits(z, aux) if unimodal_loss > 0 else {}
    if uni:
        loss = loss + unimodal_loss * sum(F.cross_entropy(u, target) for u in uni.values()) / len(uni)
    return loss, logits


def train_copy(
    defense: Defense,
    model: MultimodalModel,
    data: DatasetBundle,
    *,
    epochs: int,
    train_kwargs: Mapping[str, Any],
    seed: int,
    quiet: bool,
    objective: Objective | None = None,
    score: Callable[[MultimodalModel, MultimodalDataset], float] | None = None,
    **config: Any,
) -> tuple[MultimodalModel, TrainResult]:
    """Deep-copy ``model`` and train the copy with :func:`mmrobust.train` (the input stays untouched).

    Args:
        defense: The defence (for messages).
        model: The model to train (a fresh ``mr.models.create(...)`` one, or a trained one to fine-tune).
        data: Bundle with ``train`` and ``val`` splits.
        epochs: Passes over the training split.
        train_kwargs: Extra TrainConfig fields.
        seed: Training seed (shuffling and every random draw of the objective).
        quiet: Silence the progress bar.
        objective: Per-batch loss (default: the standard one).
        score: Validation score for model selection (default: clean accuracy).
        **config: TrainConfig fields the defence sets itself (e.g. ``modality_dropout``).

    Returns:
        ``(trained copy in eval mode, TrainResult)``.
    """
    if not isinstance(data, DatasetBundle):
        raise InputError(f"{defense.name}: needs a DatasetBundle (mr.datasets.load(...)), got {type(data).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(f"{defense.name}: seed must be an integer, got {seed!r}")
    trained = copy.deepcopy(model)
    cfg = {**train_kwargs, **config, "epochs": epochs, "seed": int(seed), "quiet": bool(quiet)}
    result = train(trained, data, cfg, objective=objective, score=score)
    return trained, result


def training_info(result: TrainResult) -> dict[str, Any]:
    """What a training defence records in ``model.defense_info`` about its run."""
    return {
        "train_seconds": round(result.seconds, 3),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
    }


class ModalityDropout(Defense):
    """Train with modality dropout: per sample, zero one random modality with probability ``p``.

    Baseline of methods.md §6 (ModDrop, Neverova et al., TPAMI 2016). No threat model: this is a
    regulariser against modality laziness and missing streams, measured under the same attacks as
    the other defences. Zeroing uses the missing-modality zeros fill (padding for token ids); the
    random draws come from the training generator, so a seed fixes the run.

    Takes a fresh model (``mr.models.create(...)``) and returns a trained copy; a trained model is
    fine-tuned from its weights. The input model is never modified.

    Args:
        p: Per-sample probability of dropping one (uniformly chosen) modality, in (0, 1).
        epochs: Training epochs.
        train: Other :class:`~mmrobust.train.TrainConfig` fields (``lr``, ``batch_size``,
            ``unimodal_loss``, ...).

    Example:
        >>> import mmrobust as mr
        >>> d = mr.defenses.create("modality_dropout", p=0.3, epochs=20)
        >>> d.id
        'modality_dropout[p=0.3,epochs=20,train={}]'
    """

    name: ClassVar[str] = "modality_dropout"
    kind: ClassVar[str] = "training"

    def __init__(self, p: float = 0.3, *, epochs: int = 20, train: Mapping[str, Any] | None = None) -> None:
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < float(p) < 1:
            raise InputError(f"modality_dropout: p must be a probability in (0, 1), got {p!r}")
        self.p = float(p)
        self.epochs, self.train = check_training(self.name, epochs, train, reserved=("modality_dropout",))

    def params(self) -> dict[str, Any]:
        """``p``, ``epochs`` and the extra training settings."""
        return {"p": self.p, "epochs": self.epochs, "train": dict(self.train)}

    def check(self, model: MultimodalModel) -> None:
        """A MultimodalModel with at least two modalities (dropping the only one is meaningless)."""
        super().check(model)
        if len(model.modalities) < 2:
            raise InputError(
                f"modality_dropout: needs a model with at least 2 modalities, this one has {model.modalities}"
            )

    def apply(
        self, model: MultimodalModel, data: DatasetBundle, *, seed: int = 0, quiet: bool = True
    ) -> MultimodalModel:
        """Train a copy of ``model`` with modality dropout; returns it in eval mode (input untouched)."""
        self.check(model)
        trained, result = train_copy(
            self, model, data, epochs=self.epochs, train_kwargs=self.train, seed=seed, quiet=quiet,
            modality_dropout=self.p,
        )
        return self._mark(trained, {**training_info(result), "seed": int(seed)})

