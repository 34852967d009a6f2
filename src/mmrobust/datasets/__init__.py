"""Datasets: a registry of loaders returning :class:`DatasetBundle` objects of dict batches.

Example:
    >>> import mmrobust as mr
    >>> data = mr.datasets.load("mmdigits", seed=0)   # doctest: +SKIP
    >>> data.spec.names                               # doctest: +SKIP
    ['image', 'audio', 'text']
"""

from __future__ import annotations

from typing import Any

from mmrobust.datasets.cache import cache_dir
from mmrobust.datasets.dataset import DatasetBundle, ModalityStats, MultimodalDataset, compute_stats
from mmrobust.registry import Registry

DATASETS: Registry[DatasetBundle] = Registry("dataset")


@DATASETS.register("mmdigits")
def _mmdigits(**kwargs: Any) -> DatasetBundle:
    from mmrobust.datasets.mmdigits.loader import load_mmdigits

    return load_mmdigits(**kwargs)


def load(name: str = "mmdigits", **kwargs: Any) -> DatasetBundle:
    """Load (building and caching if needed) a registered dataset.

    Args:
        name: Registry name (``mmdigits``).
        **kwargs: Loader options, e.g. for MM-Digits ``seed``, ``size`` (``full``/``tiny``),
            ``audio`` (``logmel``/``waveform``), ``cache_dir``, ``rebuild``, ``on_corrupt``.
    """
    return DATASETS.create(name, **kwargs)


def names() -> list[str]:
    """Registered dataset names."""
    return DATASETS.names()


__all__ = [
    "DATASETS",
    "DatasetBundle",
    "ModalityStats",
    "MultimodalDataset",
    "cache_dir",
    "compute_stats",
    "load",
    "names",
]
