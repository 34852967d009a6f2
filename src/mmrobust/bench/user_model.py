"""Your own ``nn.Module`` in a run config: import it by path, build it, load its weights, wrap it.

A model entry ``{name: adapter, module: "package.module:factory", kwargs, weights, order, call}``
(:class:`~mmrobust.bench.config.ModelConfig`) names a factory (a class or function) that returns the
module; :func:`user_model` builds it and wraps it with :func:`mmrobust.models.adapt`, so it is
evaluated like any registry model. Every failure is one :class:`~mmrobust.errors.ConfigError` line
naming the model entry.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from mmrobust.errors import ConfigError, MMRobustError
from mmrobust.models.adapter import ModelAdapter, adapt
from mmrobust.spec import DatasetSpec


def user_model(mcfg: Any, spec: DatasetSpec) -> ModelAdapter:
    """Import, build, load and wrap the user's ``nn.Module`` of an ``adapter`` model entry.

    Args:
        mcfg: The model entry (:class:`~mmrobust.bench.config.ModelConfig` with ``name: adapter``).
        spec: The dataset spec the module consumes.

    Raises:
        ConfigError: the import path, factory, weights file or modality order is wrong (one clear line).
    """
    mod_name, _, attr = mcfg.module.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except ImportError as e:
        raise ConfigError(f"models ({mcfg.label}): cannot import {mod_name!r}: {e}") from None
    except AttributeError:
        raise ConfigError(f"models ({mcfg.label}): module {mod_name!r} has no {attr!r}") from None
    try:
        module = factory(**mcfg.kwargs)
    except TypeError as e:
        raise ConfigError(f"models ({mcfg.label}): {mcfg.module}(**kwargs) failed: {e}") from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"models ({mcfg.label}): {mcfg.module} returned {type(module).__name__}, not an nn.Module")
    if mcfg.weights:
        path = Path(mcfg.weights)
        if not path.is_file():
            raise ConfigError(f"models ({mcfg.label}): weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except Exception as e:  # torch raises many types for damaged or mismatched files
            first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ConfigError(f"models ({mcfg.label}): cannot load weights {path}: {first}") from None
    try:
        return adapt(module.eval(), spec, mcfg.order, call=mcfg.call, name=mcfg.label)
    except MMRobustError as e:
        raise ConfigError(f"models ({mcfg.label}): {e}") from None
