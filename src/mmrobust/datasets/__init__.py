"""Datasets: a registry of loaders returning :class:`DatasetBundle` objects of dict batches.

Example:
    >>> import mmrobust as mr
    >>> data = mr.datasets.load("mmdigits", seed=0)   # doctest: +SKIP
    >>> data.spec.names                               # doctest: +SKIP
    ['image', 'audio', 'text']
"""

from __future__ import annotations

from functools import partial
from typing import Any

from mmrobust.datasets.cache import cache_dir
from mmrobust.datasets.dataset import DatasetBundle, ModalityStats, MultimodalDataset, compute_stats
from mmrobust.datasets.loaders import load_affect, load_arrays, load_avmnist
from mmrobust.registry import Registry

DATASETS: Registry[DatasetBundle] = Registry("dataset")


@DATASETS.register("mmdigits")
def _mmdigits(**kwargs: Any) -> DatasetBundle:
    from mmrobust.datasets.mmdigits.loader import load_mmdigits

    return load_mmdigits(**kwargs)


# Real-data loaders (docs/datasets.md): they read the user's files, never download.
DATASETS.register("avmnist")(load_avmnist)
DATASETS.register("mosi")(partial(load_affect, name="mosi"))
DATASETS.register("mosei")(partial(load_affect, name="mosei"))
DATASETS.register("npz")(partial(load_arrays, format="npz"))
DATASETS.register("hdf5")(partial(load_arrays, format="hdf5"))


def load(name: str = "mmdigits", **kwargs: Any) -> DatasetBundle:
    """Load (building and caching if needed) a registered dataset.

    Args:
        name: Registry name: ``mmdigits`` (built in), or a loader of your files: ``avmnist``
            (``root=`` MultiBench folder), ``mosi`` / ``mosei`` (``path=`` MultiBench pickle),
            ``npz`` / ``hdf5`` (``path=`` one array per modality); see ``docs/datasets.md``.
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
