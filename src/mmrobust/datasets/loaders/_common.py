"""Helpers shared by the real-data loaders: file checks, float conversion, labels, seeded splits, bundles.

Every problem with a user's file is raised as :class:`~mmrobust.errors.InputError` (the content is
not what the format promises: wrong shape, NaN, label count, unknown key, missing file) or
:class:`~mmrobust.errors.CacheError` (the file cannot be read at all: truncated, not the format),
naming the file and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset, compute_stats
from mmrobust.errors import InputError
from mmrobust.spec import DatasetSpec
from mmrobust.utils.io import arrays_digest

#: Samples converted per block (bounds the temporary memory of a float64 -> float32 conversion).
CHUNK = 4096

SPLITS: tuple[str, ...] = ("train", "val", "test")


def existing(path: str | os.PathLike[str], what: str, *, folder: bool = False) -> Path:
    """``path`` as a :class:`Path` that exists (a folder when ``folder``), else a clear InputError."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{what} must be a path, got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    if folder and not p.is_dir():
        raise InputError(f"{what} {p} is not a folder")
    if not folder and p.is_dir():
        raise InputError(f"{what} {p} is a folder; give the file")
    return p


def to_float32(arr: Any, where: str, *, scale: float = 1.0, nan: str = "raise") -> tuple[np.ndarray, int]:
    """A float32 copy of ``arr`` divided by ``scale``, converted in blocks of :data:`CHUNK` samples.

    Args:
        arr: Numeric array (N, ...), possibly memory-mapped.
        where: What the array is, for messages (``"image/train_data.npy"``).
        scale: Divisor applied to every value.
        nan: ``"raise"``: NaN/Inf values are an error; ``"zero"``: replace them by 0.

    Returns:
        The array and the number of non-finite values replaced (0 with ``nan="raise"``).
    """
    dt = np.dtype(arr.dtype)
    if dt.kind not in "biuf":
        raise InputError(f"{where}: expected a numeric array, got dtype {dt}")
    out = np.empty(arr.shape, np.float32)
    n = arr.shape[0] if arr.ndim else 0
    replaced = 0
    bad_samples = 0
    for i in range(0, n, CHUNK):
        block = np.asarray(arr[i : i + CHUNK], dtype=np.float32)
        if scale != 1.0:
            block = block / np.float32(scale)
        if dt.kind == "f":
            finite = np.isfinite(block)
            if not finite.all():
                if nan == "zero":
                    replaced += int((~finite).sum())
                    block = np.where(finite, block, np.float32(0.0))
                else:
                    bad_samples += int((~finite.reshape(finite.shape[0], -1).all(1)).sum())
        out[i : i + CHUNK] = block
    if bad_samples:
        raise InputError(f"{where}: {bad_samples} sample(s) contain NaN or Inf values")
    return out, replaced


def integer_labels(y: Any, where: str, n: int | None = None, *, what: str = "samples") -> np.ndarray:
    """Labels as an int64 (N,) array: integer-valued, non-negative, finite; ``n`` checks the count."""
    a = np.asarray(y)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{where}: labels must be numbers, got dtype {a.dtype}")
    a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a
    if a.ndim != 1:
        if a.shape[1] != 1:
            raise InputError(f"{where}: expected one label per sample, got shape {np.asarray(y).shape}")
        a = a[:, 0]
    if n is not None and a.shape[0] != n:
        raise InputError(f"{where}: {a.shape[0]} labels for {n} {what}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise InputError(f"{where}: {int((~np.isfinite(a)).sum())} label(s) are NaN or Inf")
        if not (a == np.round(a)).all():
            raise InputError(f"{where}: labels must be integer class ids, got non-integer values such as "
                             f"{a[a != np.round(a)][0]:g}")
    if a.size and a.min() < 0:
        raise InputError(f"{where}: labels must be >= 0, got {a.min():g}")
    return a.astype(np.int64)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split sample indices into parts of the given fractions, stratified by class, deterministically.

    The parts have exactly ``round(F_k · N) − round(F_{k−1} · N)`` samples (F_k: cumulative
    fractions), and every class is spread over them as evenly as those sizes allow: within each
    class the samples are shuffled (``numpy.random.default_rng(seed)``) and given the positions
    (r + ½)/n_c, r = 0..n_c − 1; all samples are then sorted by position (ties in random order) and
    cut at the part boundaries. Indices are returned sorted, so each part keeps the file's order.

    Args:
        labels: (N,) integer labels.
        fractions: Fractions of all parts but the last (e.g. ``[val]`` or ``[val, test]``).
        seed: Seed of the shuffles.

    Returns:
        ``len(fractions) + 1`` sorted index arrays (first parts ..., remainder).
    """
    n = labels.shape[0]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]  # grouped by class, random within class
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    cls_of = np.searchsorted(classes, labels[order])
    position = (np.arange(n) - starts[cls_of] + 0.5) / counts[cls_of]
    ranked = order[np.lexsort((rng.permutation(n), position))]
    bounds = np.round(np.cumsum(fractions) * n).astype(np.int64)
    return [np.sort(part) for part in np.split(ranked, bounds)]


def build_bundle(
    splits: Mapping[str, tuple[Mapping[str, np.ndarray], np.ndarray]],
    spec: DatasetSpec,
    meta: dict[str, Any],
    source: str,
) -> DatasetBundle:
    """Wrap ``{"train"|"val"|"test": ({modality: array}, labels)}`` into a bundle (training-split stats).

    ``meta["checksum"]`` is a SHA-256 over every split's arrays and labels: the identity of the data
    that runs record, so two files of the same name with other contents are told apart.
    """
    tensors = {}
    for s in SPLITS:
        x, y = splits[s]
        if y.shape[0] == 0 and s != "val":
            raise InputError(f"{source}: the {s} split is empty")
        tensors[s] = ({m: torch.from_numpy(np.ascontiguousarray(x[m])) for m in spec.names},
                      torch.from_numpy(np.ascontiguousarray(y)).long())
    if tensors["train"][1].numel() == 0:
        raise InputError(f"{source}: the train split is empty")
    stats = compute_stats(tensors["train"][0], spec)
    sets = {}
    for s in SPLITS:
        x, y = tensors[s]
        try:
            sets[s] = MultimodalDataset(x, y, spec, stats=stats, name=s)
        except InputError as e:
            raise InputError(f"{source} ({s} split): {e}") from None
    # the data's identity for provenance: one SHA-256 over every split's arrays and labels
    digest = arrays_digest({f"{s}/{k}": v.numpy() for s in SPLITS
                            for k, v in {**tensors[s][0], "__labels__": tensors[s][1]}.items()})
    meta = {**meta, "sizes": {s: len(sets[s]) for s in SPLITS}, "checksum": digest}
    return DatasetBundle(sets["train"], sets["val"], sets["test"], spec, meta)


def take(arrays: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``index`` of every array."""
    return {k: v[index] for k, v in arrays.items()}


def data_range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """Smallest and largest value over several arrays (0, 0 when all are empty)."""
    lo = [float(a.min()) for a in arrays if a.size]
    hi = [float(a.max()) for a in arrays if a.size]
    return (min(lo), max(hi)) if lo else (0.0, 0.0)
