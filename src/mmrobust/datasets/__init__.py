"""Datasets: a registry of loaders returning :class:`DatasetBundle` objects of dict batches.

Example:
    >>> import mmrobust as mr
    >>> data = mr.datasets.load("mmdigits", seed=0)   # doctest: +SKIP
    >>> data.spec.names                               # doctest: +SKIP
    ['image', 'audio', 'text']
"""

from __future__ import annotations

import inspect
from typing import Any

from mmrobust.datasets import loaders  # noqa: F401  (registers the loaders of your files)
from mmrobust.datasets.cache import cache_dir
from mmrobust.datasets.dataset import DatasetBundle, ModalityStats, MultimodalDataset, compute_stats
from mmrobust.datasets.mmdigits.loader import load_mmdigits  # noqa: F401  (registers the built-in dataset)
from mmrobust.datasets.registry import DATASETS
from mmrobust.errors import InputError


def _params(name: str) -> list[str]:
    """The keyword parameters of dataset ``name``'s loader."""
    return list(inspect.signature(DATASETS.get(name)).parameters)


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


def dataset_options(
    name: str,
    *,
    path: str | None = None,
    seed: int | None = None,
    size: str | None = None,
    audio: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``load(name, ...)`` from the generic fields of the CLI and run configs.

    Args:
        name: Registry name.
        path: Your data: the folder of ``avmnist``, the file of ``mosi``/``mosei``/``npz``/``hdf5``
            (``mmdigits`` is built offline and takes none).
        seed: Build seed (``mmdigits``) or validation-split seed, where the loader takes one.
        size: ``mmdigits`` option (``full``/``tiny``).
        audio: ``mmdigits`` option (``logmel``/``waveform``).
        options: Any other loader option (e.g. ``{"labels": "7class"}`` for MOSI).

    Raises:
        InputError: an unknown dataset, a missing ``path``, or an option of another dataset.
    """
    if name not in DATASETS.names():
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS.names())}")
    params = _params(name)
    where = next((p for p in ("path", "root") if p in params), None)
    kw: dict[str, Any] = {}
    if where is None:
        if path is not None:
            readers = [n for n in DATASETS.names() if {"path", "root"} & set(_params(n))]
            raise InputError(f"{name} is built offline and reads no files; path is for {', '.join(readers)}")
    elif path is None:
        raise InputError(f"{name} reads your data: give the path of its {'folder' if where == 'root' else 'file'} "
                         "(docs/datasets.md)")
    else:
        kw[where] = path
    given = {k: v for k, v in (("size", size), ("audio", audio)) if v is not None}
    foreign = [k for k in given if k not in params]
    if foreign:
        owners = [n for n in DATASETS.names() if set(foreign) <= set(_params(n))]
        raise InputError(f"{', '.join(foreign)}: options of {', '.join(owners) or 'no dataset'}, not of {name}")
    kw.update(given)
    if seed is not None and "seed" in params:
        kw["seed"] = seed
    clash = sorted(set(kw) & set(options or {}))
    if clash:
        raise InputError(f"options repeats {clash}; give them once")
    return {**kw, **(options or {})}


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
    "dataset_options",
    "load",
    "names",
]
