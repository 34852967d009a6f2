"""Cached loader of the built-in MM-Digits dataset (image + audio + text, 10 digit classes).

The arrays come from :func:`mmrobust.datasets.mmdigits.build_arrays` (deterministic from the seed);
this module caches them under :func:`mmrobust.datasets.cache_dir` with a checksum and wraps them in
a :class:`~mmrobust.datasets.DatasetBundle`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mmrobust.datasets.cache import OnCorrupt, cache_dir, cached_build
from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset, compute_stats
from mmrobust.datasets.mmdigits import build, build_arrays
from mmrobust.datasets.registry import DATASETS, EXAMPLES
from mmrobust.errors import InputError
from mmrobust.spec import DatasetSpec, ModalitySpec

SIZES = ("full", "tiny")
AUDIO = ("logmel", "waveform")


def _builder_version() -> str:
    return str(getattr(build, "BUILDER_VERSION", "1"))


def cache_path(seed: int, size: str, audio: str, root: str | os.PathLike[str] | None = None) -> Any:
    """Cache file of one MM-Digits build."""
    return cache_dir(root) / f"mmdigits-v{_builder_version()}-{size}-{audio}-seed{seed}.npz"


@EXAMPLES.register("mmdigits")
def example(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The tiny MM-Digits build (built offline, cached; writes nothing under ``folder``)."""
    return {"size": "tiny"}


@DATASETS.register("mmdigits")
def load_mmdigits(
    seed: int = 0,
    size: str = "full",
    audio: str = "logmel",
    cache_dir: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
    on_corrupt: OnCorrupt = "rebuild",
) -> DatasetBundle:
    """Load MM-Digits, building it on first use.

    Args:
        seed: Build seed (same seed, same bytes).
        size: ``full`` (3000/600/1000 samples) or ``tiny`` (for tests).
        audio: ``logmel`` (1, 32, 64) spectrograms or ``waveform`` (1, 16000) at 16 kHz.
        cache_dir: Override the cache folder.
        rebuild: Build again even if a valid cache exists.
        on_corrupt: ``rebuild`` a damaged cache (with a warning) or ``raise``.
    """
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if size not in SIZES:
        raise InputError(f"unknown MM-Digits size {size!r}; choose one of {SIZES}")
    if audio not in AUDIO:
        raise InputError(f"unknown audio representation {audio!r}; choose one of {AUDIO}")

    def build() -> Any:
        return build_arrays(seed=seed, size=size, audio=audio)

    path = cache_path(seed, size, audio, cache_dir)
    arrays, meta = cached_build(path, build, rebuild=rebuild, on_corrupt=on_corrupt)
    return bundle_from_arrays(arrays, meta, name="mmdigits")


def bundle_from_arrays(arrays: dict[str, Any], meta: dict[str, Any], name: str) -> DatasetBundle:
    """Wrap ``{"<split>/<modality>", "<split>/label"}`` arrays and their meta into a bundle."""
    spec = DatasetSpec(
        modalities=tuple(ModalitySpec.from_dict(m) for m in meta["modalities"]),
        num_classes=int(meta["num_classes"]),
        class_names=tuple(meta.get("class_names", ())),
        name=name,
    )

    def split(s: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = {m: torch.from_numpy(arrays[f"{s}/{m}"]) for m in spec.names}
        return x, torch.from_numpy(arrays[f"{s}/label"]).long()

    xtr, ytr = split("train")
    stats = compute_stats(xtr, spec)
    sets = {"train": MultimodalDataset(xtr, ytr, spec, stats=stats, name="train")}
    for s in ("val", "test"):
        xs, ys = split(s)
        sets[s] = MultimodalDataset(xs, ys, spec, stats=stats, name=s)
    return DatasetBundle(sets["train"], sets["val"], sets["test"], spec, meta)
