"""AV-MNIST from MultiBench's ``.npy`` files (image + audio, 10 digit classes).

AV-MNIST (Vielzeuf et al., *CentralNet: a Multilayer Approach for Multimodal Fusion*, ECCV
Workshops 2018, arXiv 1808.07275; distributed by MultiBench, Liang et al., NeurIPS Datasets and
Benchmarks 2021, arXiv 2107.07502) pairs MNIST digits, with 75 % of their energy removed by PCA,
with spectrograms of spoken digits (Free Spoken Digit Dataset, mixed with ESC-50 noise) of the same
label. MultiBench ships it as a folder::

    <root>/image/train_data.npy   (60000, 784)  or (N, 28, 28): grey levels in [0, 255]
    <root>/image/test_data.npy    (10000, 784)
    <root>/audio/train_data.npy   (60000, 112, 112): spectrograms in [0, 255]
    <root>/audio/test_data.npy    (10000, 112, 112)
    <root>/train_labels.npy       (60000,) digit labels 0..9
    <root>/test_labels.npy        (10000,)

MultiBench's loader divides both modalities by 255 and adds a channel axis; this loader does the
same, giving ``image`` (1, 28, 28) and ``audio`` (1, 112, 112) float32 in [0, 1]. Flat arrays
(N, 784) / (N, 12544) and arrays that already have the channel axis are accepted too.

Normalisation (``normalize``):
    * ``"auto"`` (default): divide a modality by 255 when its largest value (over train and test)
      exceeds 1, as MultiBench does; files already scaled to [0, 1] are kept. The valid range is
      [0, 1] either way, and values outside [0, 255] (or [0, 1]) are an error.
    * ``"255"``: always divide by 255 (range [0, 1]).
    * ``"none"``: keep the values; the valid range is then the smallest/largest value over train
      and test (recorded in the spec).

Validation split: MultiBench holds out the *last* 5,000 of the 60,000 training samples
(``val_split="tail"``). By default this loader instead draws a seeded split stratified by class
(``val_split="seeded"``, same fraction 1/12), so the validation set does not depend on the file's
order; both are deterministic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mmrobust.datasets.dataset import DatasetBundle
from mmrobust.datasets.loaders._common import (
    build_bundle,
    data_range,
    existing,
    integer_labels,
    stratified_split,
    take,
    to_float32,
)
from mmrobust.datasets.registry import DATASETS, EXAMPLES
from mmrobust.errors import CacheError, InputError
from mmrobust.spec import DatasetSpec, ModalitySpec
from mmrobust.utils.checks import check_fraction, check_int, check_seed

NORMALIZE = ("auto", "255", "none")
VAL_SPLITS = ("seeded", "tail")
#: Per-sample shapes of MultiBench's files (without the channel axis).
SHAPES = {"image": (28, 28), "audio": (112, 112)}
FILES = {
    "image": ("image/train_data.npy", "image/test_data.npy"),
    "audio": ("audio/train_data.npy", "audio/test_data.npy"),
    "label": ("train_labels.npy", "test_labels.npy"),
}


def _load_npy(root: Path, rel: str) -> np.ndarray:
    path = root / rel
    if not path.is_file():
        raise InputError(
            f"AV-MNIST folder {root} has no {rel} (expected MultiBench's layout: image/train_data.npy, "
            "image/test_data.npy, audio/train_data.npy, audio/test_data.npy, train_labels.npy, test_labels.npy)"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower() or "python objects" in str(e).lower():
            raise InputError(f"{path} holds Python objects, not a numeric array; refusing to unpickle it") from None
        raise CacheError(f"{path} is not a readable .npy file: {e}") from None
    except (OSError, EOFError) as e:
        raise CacheError(f"{path} is truncated or not a .npy file: {e}") from None


def _per_sample(a: np.ndarray, modality: str, where: str) -> np.ndarray:
    """(N, H, W) view of a flat (N, H·W), (N, H, W) or (N, 1, H, W) array of the expected H×W."""
    h, w = SHAPES[modality]
    s = a.shape
    if len(s) == 2 and s[1] == h * w:
        return a.reshape(s[0], h, w)
    if len(s) == 3 and s[1:] == (h, w):
        return a
    if len(s) == 4 and s[1:] == (1, h, w):
        return a.reshape(s[0], h, w)
    raise InputError(
        f"{where}: expected {modality} arrays of shape (N, {h * w}), (N, {h}, {w}) or (N, 1, {h}, {w}), got {s}"
    )


@EXAMPLES.register("avmnist")
def example(folder: str | os.PathLike[str], n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, Any]:
    """Write a small random AV-MNIST folder in MultiBench's layout under ``folder``; the load kwargs.

    ``image/{train,test}_data.npy`` (N, 784) and ``audio/{train,test}_data.npy`` (N, 112, 112), values
    0..255, and ``{train,test}_labels.npy``.
    """
    rng = np.random.default_rng(seed)
    root = Path(folder) / "avmnist"
    arrays = {
        "image/train_data.npy": rng.integers(0, 256, (n_train, 784)).astype(np.float32),
        "image/test_data.npy": rng.integers(0, 256, (n_test, 784)).astype(np.float32),
        "audio/train_data.npy": rng.integers(0, 256, (n_train, 112, 112)).astype(np.float32),
        "audio/test_data.npy": rng.integers(0, 256, (n_test, 112, 112)).astype(np.float32),
        "train_labels.npy": np.arange(n_train) % 10,
        "test_labels.npy": rng.integers(0, 10, n_test),
    }
    for rel, a in arrays.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, a)
    return {"root": str(root)}


@DATASETS.register("avmnist")
def load_avmnist(
    root: str | os.PathLike[str],
    *,
    normalize: str = "auto",
    val_split: str = "seeded",
    val_fraction: float = 1 / 12,
    seed: int = 0,
    limit: int | None = None,
) -> DatasetBundle:
    """Load AV-MNIST from a MultiBench-style folder of ``.npy`` files (never downloads).

    Args:
        root: The folder (see the module docstring for its layout).
        normalize: ``auto``, ``255`` or ``none`` (module docstring).
        val_split: ``seeded`` (stratified by class, from ``seed``) or ``tail`` (the last samples of the
            training file, as MultiBench).
        val_fraction: Fraction of the training file held out for validation (MultiBench: 5000/60000).
        seed: Seed of the validation split.
        limit: Use only the first ``limit`` samples of the training and of the test files (quick
            experiments; the full audio arrays take about 3 GB as float32).

    Returns:
        A :class:`~mmrobust.datasets.DatasetBundle` with modalities ``image`` (1, 28, 28) and ``audio``
        (1, 112, 112), 10 classes; statistics from the training split.

    Raises:
        InputError: a missing file, a wrong shape, label counts that do not match, NaN/Inf values,
            labels outside 0..9, values outside [0, 255].
        CacheError: a file that is not a readable ``.npy`` file.
    """
    root_p = existing(root, "AV-MNIST folder", folder=True)
    if normalize not in NORMALIZE:
        raise InputError(f"avmnist: normalize must be one of {NORMALIZE}, got {normalize!r}")
    if val_split not in VAL_SPLITS:
        raise InputError(f"avmnist: val_split must be one of {VAL_SPLITS}, got {val_split!r}")
    val_fraction = check_fraction(val_fraction, "avmnist", "val_fraction")
    seed = check_seed(seed)
    if limit is not None:
        check_int(limit, "avmnist", "limit", note=" or None")

    raw: dict[str, list[np.ndarray]] = {}
    for key, rels in FILES.items():
        raw[key] = [_load_npy(root_p, rel) for rel in rels]
    n = [raw["label"][i].shape[0] if raw["label"][i].ndim else 0 for i in range(2)]
    for i, split in enumerate(("train", "test")):
        for m in ("image", "audio"):
            a = raw[m][i]
            if a.ndim == 0 or a.shape[0] != n[i]:
                raise InputError(
                    f"AV-MNIST {split}: {FILES['label'][i]} has {n[i]} labels but {FILES[m][i]} has "
                    f"{a.shape[0] if a.ndim else 0} samples"
                )
            raw[m][i] = _per_sample(a, m, str(root_p / FILES[m][i]))
    if limit is not None:
        raw = {k: [a[:limit] for a in v] for k, v in raw.items()}

    labels = [integer_labels(raw["label"][i], str(root_p / FILES["label"][i])) for i in range(2)]
    for i in range(2):
        if labels[i].size and labels[i].max() > 9:
            raise InputError(f"{root_p / FILES['label'][i]}: digit labels must lie in 0..9, got {labels[i].max()}")

    arrays: dict[str, list[np.ndarray]] = {}
    ranges: dict[str, tuple[float, float]] = {}
    scales: dict[str, float] = {}
    for m in ("image", "audio"):
        conv = [to_float32(raw[m][i], str(root_p / FILES[m][i]))[0] for i in range(2)]
        lo, hi = data_range(conv)
        scale = 1.0
        if normalize == "255" or (normalize == "auto" and hi > 1.0):
            scale = 255.0
        if normalize != "none" and (lo < 0.0 or hi > scale):
            raise InputError(
                f"AV-MNIST {m}: values lie in [{lo:g}, {hi:g}], outside [0, {scale:g}]; use normalize='none' to keep "
                "them as they are"
            )
        if scale != 1.0:
            for a in conv:
                a /= np.float32(scale)
        arrays[m] = [a[:, None] for a in conv]  # channel axis, as MultiBench's unsqueeze_channel
        scales[m] = scale
        ranges[m] = (lo, hi) if normalize == "none" else (0.0, 1.0)

    if val_split == "tail":
        n_val = round(val_fraction * labels[0].shape[0])
        idx = np.arange(labels[0].shape[0])
        tr, va = idx[: idx.shape[0] - n_val], idx[idx.shape[0] - n_val :]
    else:
        va, tr = stratified_split(labels[0], [val_fraction], seed)
    train = {m: arrays[m][0] for m in arrays}
    test = {m: arrays[m][1] for m in arrays}
    splits = {
        "train": (take(train, tr), labels[0][tr]),
        "val": (take(train, va), labels[0][va]),
        "test": (test, labels[1]),
    }
    unit = {m: "/255" if scales[m] != 1.0 else "as stored" for m in scales}
    spec = DatasetSpec(
        modalities=(
            ModalitySpec("image", "image", (1, 28, 28), low=ranges["image"][0], high=ranges["image"][1],
                         description=f"MNIST digit with 75% of its PCA energy removed, grey levels {unit['image']}"),
            ModalitySpec("audio", "audio", (1, 112, 112), low=ranges["audio"][0], high=ranges["audio"][1],
                         description=f"spectrogram of a spoken digit (FSDD + ESC-50 noise), {unit['audio']}"),
        ),
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        name="avmnist",
    )
    meta: dict[str, Any] = {
        "name": "avmnist",
        "format": "multibench-npy",
        "source": str(root_p),
        "normalize": normalize,
        "scale": scales,
        "val_split": val_split,
        "val_fraction": val_fraction,
        "seed": seed,
        "limit": limit,
    }
    return build_bundle(splits, spec, meta, f"AV-MNIST folder {root_p}")
