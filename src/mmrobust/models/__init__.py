"""Model zoo: a registry of multimodal and unimodal models, built from a dataset spec.

Example:
    >>> import mmrobust as mr
    >>> data = mr.datasets.load("mmdigits")                       # doctest: +SKIP
    >>> model = mr.models.create("late", spec=data.spec)          # doctest: +SKIP
    >>> audio_only = mr.models.create("unimodal", spec=data.spec, modality="audio")  # doctest: +SKIP
"""

from __future__ import annotations

from mmrobust.models.adapter import HookedAdapter, ModelAdapter, adapt
from mmrobust.models.base import MultimodalModel
from mmrobust.models.checkpoint import load_checkpoint as load
from mmrobust.models.checkpoint import load_weights
from mmrobust.models.checkpoint import save_checkpoint as save
from mmrobust.models.encoders import ENCODERS
from mmrobust.models.fusion import FUSIONS, Fusion
from mmrobust.models.hooks import Hooks
from mmrobust.models.zoo import MODELS, create, names

__all__ = [
    "ENCODERS",
    "FUSIONS",
    "MODELS",
    "Fusion",
    "HookedAdapter",
    "Hooks",
    "ModelAdapter",
    "MultimodalModel",
    "adapt",
    "create",
    "load",
    "load_weights",
    "names",
    "save",
]
