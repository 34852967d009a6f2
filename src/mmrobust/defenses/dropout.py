"""Modality dropout: the simplest training baseline (methods.md §6).

**Modality dropout** trains a model on batches in which, per sample, one randomly chosen modality is
zeroed (padded, for token ids) with probability ``p``: the model cannot lean on a single stream, which
makes it less brittle when a modality goes missing and spreads its reliance over the modalities.
It is a common baseline in multimodal robustness work (e.g. Neverova et al., *ModDrop*, TPAMI 2016;
used as a bar in OOO, Yang et al., CVPR 2021, arXiv 2206.12714). It is not a defence against an
adversary with a budget (no threat model): it is measured against the same single-source attacks as
the others, to show what it does *not* buy.

The loop is :func:`mmrobust.train` with ``TrainConfig.modality_dropout = p`` (see
:func:`mmrobust.train._drop_modalities`); this class only gives it the defence interface
(``apply`` copies the model, trains the copy, records itself on it). The training plumbing it shares
with the other training defences lives in :mod:`mmrobust.defenses.training`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from mmrobust.datasets.dataset import DatasetBundle
from mmrobust.defenses.base import Defense
from mmrobust.defenses.registry import DEFENSES
from mmrobust.defenses.training import check_training, train_copy, training_info
from mmrobust.models.base import MultimodalModel
from mmrobust.utils.checks import check_number

__all__ = ["ModalityDropout"]


@DEFENSES.register()
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
    min_modalities: ClassVar[int] = 2  # dropping the only modality is meaningless

    def __init__(self, p: float = 0.3, *, epochs: int = 20, train: Mapping[str, Any] | None = None) -> None:
        check_number(p, "modality_dropout", "p", above=0.0, below=1.0, note=" (a probability)")
        self.p = float(p)
        self.epochs, self.train = check_training(
            self.name, epochs, train, reserved={"modality_dropout": "is set by the defence; use its hyper-parameter p"}
        )

    def params(self) -> dict[str, Any]:
        """``p``, ``epochs`` and the extra training settings."""
        return {"p": self.p, "epochs": self.epochs, "train": dict(self.train)}

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

