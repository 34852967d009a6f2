"""Loaders of real multimodal datasets in the formats users have (no downloads, no network).

* :func:`~mmrobust.datasets.loaders.avmnist.load_avmnist`: AV-MNIST, MultiBench's ``.npy`` folder;
* :func:`~mmrobust.datasets.loaders.multibench_affect.load_affect`: CMU-MOSI / MOSEI MultiBench pickles;
* :func:`~mmrobust.datasets.loaders.arrays.load_arrays`: one array per modality in ``.npz`` / HDF5.

They are registered in :data:`mmrobust.datasets.DATASETS` as ``avmnist``, ``mosi``, ``mosei``, ``npz``
and ``hdf5``; each returns a :class:`~mmrobust.datasets.DatasetBundle`.
"""

from __future__ import annotations

from mmrobust.datasets.loaders.arrays import load_arrays
from mmrobust.datasets.loaders.avmnist import load_avmnist
from mmrobust.datasets.loaders.multibench_affect import load_affect

__all__ = ["load_affect", "load_arrays", "load_avmnist"]
