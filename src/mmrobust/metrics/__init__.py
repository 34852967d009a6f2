"""Robustness metrics (methods.md §7): stateful metrics, their functional twins, result helpers.

Metrics follow the torchmetrics shape: ``update`` with each batch, ``compute`` for the value,
``reset`` to start over; their states reduce across ``torch.distributed`` ranks (``sync``, done
inside ``compute`` when a process group is initialised). Every metric has a functional twin in
:mod:`mmrobust.metrics.functional`, and :mod:`mmrobust.metrics.results` computes them from an
:func:`mmrobust.evaluate` result. See ``docs/metrics.md``. Procedures that run attacks themselves
(modality preference, minimal ε by bisection) are in :mod:`mmrobust.analysis`.

Example:
    >>> import torch
    >>> import mmrobust as mr
    >>> y = torch.tensor([0, 1, 1, 0])
    >>> clean, adv = torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1])
    >>> asr = mr.metrics.AttackSuccessRate()
    >>> asr.update(clean, adv, y)
    >>> round(float(asr.compute()), 4), round(float(mr.metrics.functional.attack_success_rate(clean, adv, y)), 4)
    (0.3333, 0.3333)
"""

from __future__ import annotations

from mmrobust.metrics import functional, results
from mmrobust.metrics.accuracy import (
    Accuracy,
    AttackSuccessRate,
    RobustAccuracy,
    RobustnessSummary,
    WorstCaseAccuracy,
)
from mmrobust.metrics.base import Metric
from mmrobust.metrics.baseline import BaselineCurve
from mmrobust.metrics.curves import AccuracyCurve, Curve, EffectiveRobustness
from mmrobust.metrics.geometry import (
    ConvexityResult,
    DensityResult,
    GeometryReport,
    SpaceGeometry,
    convexity,
    density,
    geometry_report,
    sample_class_pairs,
)
from mmrobust.metrics.matrix import ModalityMatrix, ModalityPerturbationMatrix, subset_label
from mmrobust.metrics.minimal_eps import MinimalEps, MinimalEpsResult

__all__ = [
    "Accuracy",
    "AccuracyCurve",
    "AttackSuccessRate",
    "BaselineCurve",
    "ConvexityResult",
    "Curve",
    "DensityResult",
    "EffectiveRobustness",
    "GeometryReport",
    "Metric",
    "MinimalEps",
    "MinimalEpsResult",
    "ModalityMatrix",
    "ModalityPerturbationMatrix",
    "RobustAccuracy",
    "RobustnessSummary",
    "SpaceGeometry",
    "WorstCaseAccuracy",
    "convexity",
    "density",
    "functional",
    "geometry_report",
    "results",
    "sample_class_pairs",
    "subset_label",
]
