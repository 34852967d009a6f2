"""mmrobust: measure, certify and improve the robustness of multimodal fusion models.

Models take a **dict of modalities**; every threat is stated per modality.

Example:
    >>> import mmrobust as mr
    >>> data = mr.datasets.load("mmdigits")                                  # doctest: +SKIP
    >>> model = mr.models.create("late", spec=data.spec)                     # doctest: +SKIP
    >>> mr.train(model, data)                                                # doctest: +SKIP
    >>> missing = mr.attacks.create("missing", modalities="audio", fill="drop")  # doctest: +SKIP
    >>> result = mr.evaluate(model, data.test, [missing])                    # doctest: +SKIP
    >>> print(result.table())                                                # doctest: +SKIP
"""

from __future__ import annotations

from mmrobust import analysis, attacks, certify, datasets, defenses, metrics, models, reliability
from mmrobust.errors import (
    CacheError,
    ConfigError,
    InputError,
    MissingDependencyError,
    MMRobustError,
    UnknownNameError,
    UnsupportedError,
)
from mmrobust.evaluate import EvaluationResult, evaluate
from mmrobust.spec import DatasetSpec, ModalitySpec
from mmrobust.train import TrainConfig, TrainResult, train
from mmrobust.version import __version__

__all__ = [
    "CacheError",
    "ConfigError",
    "DatasetSpec",
    "EvaluationResult",
    "InputError",
    "MMRobustError",
    "MissingDependencyError",
    "ModalitySpec",
    "TrainConfig",
    "TrainResult",
    "UnknownNameError",
    "UnsupportedError",
    "__version__",
    "analysis",
    "attacks",
    "certify",
    "datasets",
    "defenses",
    "evaluate",
    "metrics",
    "models",
    "reliability",
    "train",
]
