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
    import inspect

    from mmrobust.errors import InputError

    if name not in DATASETS.names():
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS.names())}")
    kw: dict[str, Any] = {}
    if name == "mmdigits":
        if path is not None:
            raise InputError("mmdigits is built offline and reads no files; path is for "
                             f"{', '.join(n for n in DATASETS.names() if n != 'mmdigits')}")
        kw.update({k: v for k, v in (("seed", seed), ("size", size), ("audio", audio)) if v is not None})
    else:
        given = [k for k, v in (("size", size), ("audio", audio)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)}: options of mmdigits, not of {name}")
        if path is None:
            what = "folder of .npy files" if name == "avmnist" else "file"
            raise InputError(f"{name} reads your data: give the path of its {what} (docs/datasets.md)")
        kw["root" if name == "avmnist" else "path"] = path
        if seed is not None and "seed" in inspect.signature(DATASETS.get(name)).parameters:
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
