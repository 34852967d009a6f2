"""In-memory multimodal datasets yielding dict batches.

A :class:`MultimodalDataset` holds one tensor per modality (first dimension = samples), integer
labels, the :class:`~mmrobust.spec.DatasetSpec`, and the *training-split* statistics used by
missing-modality fills. A :class:`DatasetBundle` groups the train / val / test splits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mmrobust.errors import InputError
from mmrobust.spec import DatasetSpec


@dataclass(frozen=True)
class ModalityStats:
    """Training-split statistics of one modality (per coordinate).

    Attributes:
        mean: Per-coordinate mean, shape ``spec.shape`` (float modalities).
        std: Per-coordinate standard deviation, shape ``spec.shape`` (float modalities).
        mode: Per-position most frequent token id, shape ``spec.shape`` (token modalities).
    """

    mean: Tensor | None = None
    std: Tensor | None = None
    mode: Tensor | None = None


def compute_stats(inputs: Mapping[str, Tensor], spec: DatasetSpec) -> dict[str, ModalityStats]:
    """Per-modality statistics of a (training) split."""
    out: dict[str, ModalityStats] = {}
    for m in spec:
        t = inputs[m.name]
        if m.is_tokens:
            counts = torch.nn.functional.one_hot(t.long(), int(m.vocab_size or 0)).sum(0)
            out[m.name] = ModalityStats(mode=counts.argmax(-1))
        else:
            tf = t.double()
            out[m.name] = ModalityStats(
                mean=tf.mean(0).float(), std=tf.std(0, unbiased=False).float()
            )
    return out


class MultimodalDataset(torch.utils.data.Dataset):
    """A labelled set of multimodal samples held in memory.

    Args:
        inputs: ``{modality: tensor of shape (N, *spec[modality].shape)}``.
        labels: Integer labels, shape ``(N,)``.
        spec: The dataset spec; ``inputs`` must have exactly its modalities.
        stats: Training-split statistics (for mean / noise fills); computed from ``inputs`` when
            omitted, which is right only for a training split.
        name: Split name, shown in summaries.
    """

    def __init__(
        self,
        inputs: Mapping[str, Tensor],
        labels: Tensor,
        spec: DatasetSpec,
        stats: Mapping[str, ModalityStats] | None = None,
        name: str = "",
    ) -> None:
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
            raise InputError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
        n = spec.validate_batch(dict(inputs))
        if n != labels.shape[0]:
            raise InputError(f"{n} samples but {labels.shape[0]} labels")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
            raise InputError(f"labels must lie in [0, {spec.num_classes})")
        self.inputs = {m: inputs[m] for m in spec.names}
        self.labels = labels.long()
        self.spec = spec
        self.stats = dict(stats) if stats is not None else compute_stats(self.inputs, spec)
        self.name = name

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {m: t[i] for m, t in self.inputs.items()}, self.labels[i]

    def __repr__(self) -> str:
        mods = ", ".join(f"{m.name}{list(m.shape)}" for m in self.spec)
        return f"MultimodalDataset({self.name or 'unnamed'}: n={len(self)}, {mods}, K={self.spec.num_classes})"

    def batch(self, index: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Gather the samples at ``index`` into one dict batch and labels."""
        return {m: t[index] for m, t in self.inputs.items()}, self.labels[index]

    def batches(
        self,
        batch_size: int = 256,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        indices: Tensor | None = None,
    ) -> Iterator[tuple[dict[str, Tensor], Tensor, Tensor]]:
        """Iterate over ``(x, y, index)`` batches.

        Args:
            batch_size: Samples per batch.
            shuffle: Permute the order (with ``generator`` for reproducibility).
            generator: Torch generator used for shuffling.
            indices: Restrict to these sample indices (e.g. a distributed shard).
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        idx = torch.arange(len(self)) if indices is None else torch.as_tensor(indices).long()
        if shuffle:
            idx = idx[torch.randperm(idx.numel(), generator=generator)]
        for start in range(0, idx.numel(), batch_size):
            b = idx[start : start + batch_size]
            x, y = self.batch(b)
            yield x, y, b

    def select(self, modalities: Sequence[str]) -> MultimodalDataset:
        """A view with only ``modalities`` (for unimodal models); shares tensors."""
        spec = self.spec.subset(modalities)
        return MultimodalDataset(
            {m: self.inputs[m] for m in spec.names},
            self.labels,
            spec,
            stats={m: self.stats[m] for m in spec.names},
            name=self.name,
        )

    def subset(self, index: Sequence[int] | Tensor) -> MultimodalDataset:
        """The samples at ``index`` (keeps the training statistics)."""
        idx = torch.as_tensor(index).long()
        x, y = self.batch(idx)
        return MultimodalDataset(x, y, self.spec, stats=self.stats, name=self.name)


@dataclass
class DatasetBundle:
    """Train / validation / test splits of one dataset.

    Attributes:
        train: Training split (its statistics are shared by all splits).
        val: Validation split (model selection, hyper-parameter sweeps).
        test: Test split (reporting only; never used for selection).
        spec: The dataset spec.
        meta: Provenance: builder version, seed, checksum, build parameters.
    """

    train: MultimodalDataset
    val: MultimodalDataset
    test: MultimodalDataset
    spec: DatasetSpec
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, MultimodalDataset]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"dataset {self.spec.name}: K={self.spec.num_classes} classes"]
        for s, d in self.splits.items():
            lines.append(f"  {s:<5} n={len(d)}")
        for m in self.spec:
            rng = f"[{m.low}, {m.high}]" if m.low is not None or m.high is not None else "unbounded"
            extra = f", vocab={m.vocab_size}" if m.is_tokens else ""
            desc = f"  {m.name:<6} {m.kind:<8} shape={list(m.shape)} {m.dtype} range={rng}{extra}"
            lines.append(f"{desc}  {m.description}")
        for k in ("seed", "checksum", "cache_path", "build_seconds"):
            if k in self.meta:
                lines.append(f"  {k}: {self.meta[k]}")
        return "\n".join(lines)
