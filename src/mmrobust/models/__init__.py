"""Model zoo: a registry of multimodal and unimodal models, built from a dataset spec.

Example:
    >>> import mmrobust as mr
    >>> data = mr.datasets.load("mmdigits")                       # doctest: +SKIP
    >>> model = mr.models.create("late", spec=data.spec)          # doctest: +SKIP
    >>> audio_only = mr.models.create("unimodal", spec=data.spec, modality="audio")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from mmrobust.errors import InputError
from mmrobust.models.adapter import ModelAdapter, adapt
from mmrobust.models.base import MultimodalModel
from mmrobust.models.checkpoint import load_checkpoint as load
from mmrobust.models.checkpoint import save_checkpoint as save
from mmrobust.models.encoders import ENCODERS
from mmrobust.models.fusion import FUSIONS, Fusion
from mmrobust.registry import Registry
from mmrobust.spec import DatasetSpec

MODELS: Registry[MultimodalModel] = Registry("model")


def _fusion_factory(fusion: str):
    def factory(spec: DatasetSpec, **kwargs: Any) -> MultimodalModel:
        return MultimodalModel(spec, fusion=fusion, **kwargs)

    factory.__doc__ = f"Multimodal model with {fusion!r} fusion over all (or the given) modalities."
    return factory


for _name in FUSIONS.names():
    MODELS.register(_name)(_fusion_factory(_name))


@MODELS.register("unimodal")
def _unimodal(spec: DatasetSpec, modality: str | None = None, **kwargs: Any) -> MultimodalModel:
    """One-modality model (encoder + linear head), for comparisons with fusion models."""
    if modality is None:
        raise InputError(f"a unimodal model needs modality=<one of {spec.names}>")
    if "modalities" in kwargs or "fusion" in kwargs:
        raise InputError("a unimodal model takes modality=..., not modalities/fusion")
    return MultimodalModel(spec, fusion="late", modalities=[modality], **kwargs)


def create(name: str, spec: DatasetSpec, *, seed: int | None = 0, **kwargs: Any) -> MultimodalModel:
    """Build a model from the registry.

    Args:
        name: ``late``, ``concat``, ``attention``, ``gated`` or ``unimodal`` (see :func:`names`).
        spec: The dataset spec the model consumes.
        seed: Seed of the parameter initialisation (``None``: use the global RNG).
        **kwargs: Model hyper-parameters (``embed_dim``, ``modalities``, ``modality`` for unimodal,
            ``fusion_kwargs``, ``encoder_kwargs``).
    """
    factory = MODELS.get(name)
    if not isinstance(spec, DatasetSpec):
        raise InputError(f"spec must be a DatasetSpec (e.g. data.spec), got {type(spec).__name__}")
    try:
        if seed is None:
            model = factory(spec, **kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = factory(spec, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        bad = str(e).split("unexpected keyword argument")[-1].strip()
        raise InputError(
            f"model {name!r} takes no hyper-parameter {bad}; it accepts embed_dim, modalities, fusion_kwargs, "
            "encoder_kwargs (and modality for 'unimodal')"
        ) from None
    model.config["name"] = name
    return model


def names() -> list[str]:
    """Registered model names."""
    return MODELS.names()


__all__ = [
    "ENCODERS",
    "FUSIONS",
    "MODELS",
    "Fusion",
    "ModelAdapter",
    "MultimodalModel",
    "adapt",
    "create",
    "load",
    "names",
    "save",
]
