"""The model zoo: ``MODELS``, one entry per fusion (``late``, ``concat``, ...) plus ``unimodal``.

Every registered fusion gets a model of the same name (:class:`~mmrobust.models.MultimodalModel`
with that fusion over all, or the given, modalities); ``unimodal`` is one modality's encoder with a
linear head. :func:`create` builds them with a seeded initialisation; an unknown hyper-parameter is
refused by the registry's keyword check, naming the accepted ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from mmrobust.errors import InputError
from mmrobust.models.base import MultimodalModel
from mmrobust.models.fusion import FUSIONS
from mmrobust.registry import Registry
from mmrobust.spec import DatasetSpec

MODELS: Registry[MultimodalModel] = Registry("model")


def _fusion_model(fusion: str) -> Callable[..., MultimodalModel]:
    def factory(
        spec: DatasetSpec,
        embed_dim: int = 64,
        modalities: Sequence[str] | None = None,
        fusion_kwargs: Mapping[str, Any] | None = None,
        encoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> MultimodalModel:
        return MultimodalModel(spec, fusion=fusion, embed_dim=embed_dim, modalities=modalities,
                               fusion_kwargs=fusion_kwargs, encoder_kwargs=encoder_kwargs)

    factory.__doc__ = f"Multimodal model with {fusion!r} fusion over all (or the given) modalities."
    return factory


for _name in FUSIONS.names():
    MODELS.register(_name)(_fusion_model(_name))


@MODELS.register("unimodal")
def unimodal(
    spec: DatasetSpec,
    modality: str | None = None,
    embed_dim: int = 64,
    fusion_kwargs: Mapping[str, Any] | None = None,
    encoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> MultimodalModel:
    """One-modality model (encoder + linear head), for comparisons with fusion models."""
    if modality is None:
        raise InputError(f"a unimodal model needs modality=<one of {spec.names}>")
    return MultimodalModel(spec, fusion="late", modalities=[modality], embed_dim=embed_dim,
                           fusion_kwargs=fusion_kwargs, encoder_kwargs=encoder_kwargs)


def create(name: str, spec: DatasetSpec, *, seed: int | None = 0, **kwargs: Any) -> MultimodalModel:
    """Build a model from the registry.

    Args:
        name: ``late``, ``concat``, ``attention``, ``gated`` or ``unimodal`` (see :func:`names`).
        spec: The dataset spec the model consumes.
        seed: Seed of the parameter initialisation (``None``: use the global RNG).
        **kwargs: Model hyper-parameters (``embed_dim``, ``modalities``, ``fusion_kwargs``,
            ``encoder_kwargs``; ``modality`` for ``unimodal``).

    Raises:
        UnknownNameError: an unknown model name.
        InputError: a hyper-parameter the model does not take (naming the accepted ones), a bad spec.
    """
    MODELS.get(name)
    if not isinstance(spec, DatasetSpec):
        raise InputError(f"spec must be a DatasetSpec (e.g. data.spec), got {type(spec).__name__}")
    if seed is None:
        model = MODELS.create(name, spec, **kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MODELS.create(name, spec, **kwargs)
    model.config["name"] = name
    return model


def names() -> list[str]:
    """Registered model names."""
    return MODELS.names()


__all__ = ["MODELS", "create", "names", "unimodal"]
