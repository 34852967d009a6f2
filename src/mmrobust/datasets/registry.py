"""The registry of datasets: ``DATASETS`` (the built-in MM-Digits and the loaders of your files).

Each loader function registers itself at its definition with ``@DATASETS.register("<name>")``;
:func:`mmrobust.datasets.load` calls it by name. A loader takes its data location as ``path`` (a
file) or ``root`` (a folder), or neither (built in); :func:`mmrobust.datasets.dataset_options` reads
that from its signature, so adding a loader is its own file plus one import line.
"""

from __future__ import annotations

from mmrobust.datasets.dataset import DatasetBundle
from mmrobust.registry import Registry

DATASETS: Registry[DatasetBundle] = Registry("dataset")

#: For every dataset, a function ``example(folder) -> load kwargs`` that writes a small file in the
#: dataset's format under ``folder`` (nothing for built-in datasets) and returns the keyword arguments
#: of :func:`mmrobust.datasets.load` that read it. Registered beside each loader with
#: ``@EXAMPLES.register("<name>")``; the registry walk (``tests/test_registries.py``) loads every example,
#: so a new loader is tested as soon as it registers one.
EXAMPLES: Registry[dict] = Registry("dataset example")
