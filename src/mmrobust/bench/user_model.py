"""Your own ``nn.Module`` in a run config: import it by path, build it, load its weights, wrap it.

A model entry ``{name: adapter, module: "package.module:factory", kwargs, weights, order, call, hooks,
train}`` (:class:`~mmrobust.bench.config.ModelConfig`) names a factory (a class or function) that
returns the module; :func:`user_model` builds it and wraps it with :func:`mmrobust.models.adapt`
(with its declared ``hooks``), so it is evaluated, trained and defended like a registry model where
its hooks allow. Every failure is one :class:`~mmrobust.errors.ConfigError` line naming the model
entry.

A trained or defended user model is saved like any other (``models/<id>.pt``: the adapter's state
dict), but a checkpoint cannot rebuild your class on its own: :func:`stored_user_model` rebuilds the
module from the entry, the defended structure with :meth:`~mmrobust.defenses.Defense.rebuild` and
loads the saved weights into it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from mmrobust.bench.config import ModelConfig
from mmrobust.defenses import Defense
from mmrobust.defenses import create as create_defense
from mmrobust.errors import CacheError, ConfigError, MMRobustError
from mmrobust.models.adapter import ModelAdapter, adapt
from mmrobust.models.checkpoint import load_checkpoint, load_weights, read_checkpoint
from mmrobust.spec import DatasetSpec


def user_model(mcfg: Any, spec: DatasetSpec, *, weights: bool = True, seed: int | None = None) -> ModelAdapter:
    """Import, build, load and wrap the user's ``nn.Module`` of an ``adapter`` model entry.

    Args:
        mcfg: The model entry (:class:`~mmrobust.bench.config.ModelConfig` with ``name: adapter``).
        spec: The dataset spec the module consumes.
        weights: Load the entry's ``weights`` file (``False``: the factory's own initialisation).
        seed: Seed the factory's parameter initialisation (``None``: the global RNG as it is).

    Raises:
        ConfigError: the import path, factory, weights file, modality order or hooks are wrong (one
            clear line).
    """
    mod_name, _, attr = mcfg.module.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except ImportError as e:
        raise ConfigError(f"models ({mcfg.label}): cannot import {mod_name!r}: {e}") from None
    except AttributeError:
        raise ConfigError(f"models ({mcfg.label}): module {mod_name!r} has no {attr!r}") from None
    try:
        if seed is None:
            module = factory(**mcfg.kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                module = factory(**mcfg.kwargs)
    except TypeError as e:
        raise ConfigError(f"models ({mcfg.label}): {mcfg.module}(**kwargs) failed: {e}") from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"models ({mcfg.label}): {mcfg.module} returned {type(module).__name__}, not an nn.Module")
    if mcfg.weights and weights:
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
        model = adapt(module.eval(), spec, mcfg.order, call=mcfg.call, hooks=mcfg.hooks, name=mcfg.label)
    except MMRobustError as e:
        raise ConfigError(f"models ({mcfg.label}): {e}") from None
    model.config.update({"factory": mcfg.module, "kwargs": dict(mcfg.kwargs)})
    return model.eval()


def stored_user_model(
    mcfg: Any, spec: DatasetSpec, trained: Path | None, defense: Defense | None = None, defended: Path | None = None
) -> ModelAdapter:
    """The user's model of a run as the run folder holds it: built from the entry, with saved weights loaded.

    Args:
        mcfg: The model entry.
        spec: The dataset spec.
        trained: The trained model's checkpoint (``None``: evaluated as given, no training).
        defense: The defence of a defended model (its structure comes from :meth:`Defense.rebuild`).
        defended: The defended model's checkpoint.

    Raises:
        CacheError: a checkpoint that does not fit the rebuilt model.
    """
    model = user_model(mcfg, spec)
    if trained is not None:
        load_weights(model, trained)
    if defense is None:
        return model
    if defended is None:
        raise CacheError(f"models ({mcfg.label}): no checkpoint of the defended model")
    info = read_checkpoint(defended).get("meta", {}).get("defense_info", {})
    return load_weights(defense.rebuild(model, info), defended)


def load_any(path: str | Path) -> Any:
    """A checkpoint as a model: native ones through ``mr.models.load``, your module rebuilt from its import path.

    A checkpoint of your own module saved by ``mmrobust train --module`` or ``mmrobust run`` records the
    factory (``package.module:factory``), its kwargs, the order, call and declared hooks: the module is
    built and wrapped again (a defended one through :meth:`~mmrobust.defenses.Defense.rebuild`) and the
    saved weights are loaded into it.

    Raises:
        CacheError: a damaged file, or your module saved from Python (no import path recorded).
    """
    payload = read_checkpoint(path)
    cfg = payload["config"]
    if "module" not in cfg and "hooks" not in cfg:
        return load_checkpoint(path)
    if "factory" not in cfg:
        raise CacheError(f"checkpoint {path} holds your own module ({cfg.get('module')}) wrapped in Python, with no "
                         "import path to rebuild it: build and wrap it as before, then "
                         "mr.models.load_weights(model, path)")
    spec = DatasetSpec.from_dict(payload["spec"])
    try:
        mcfg = ModelConfig(name="adapter", id=str(cfg.get("name") or "adapter"), module=cfg["factory"],
                           kwargs=dict(cfg.get("kwargs") or {}), order=list(cfg["modalities"]), call=cfg.get("call"),
                           hooks=cfg.get("hooks"))
    except ValueError as e:
        raise CacheError(f"checkpoint {path}: cannot rebuild your module from its record: {e}") from None
    model = user_model(mcfg, spec)
    defense = cfg.get("defense")
    if defense:
        info = payload.get("meta", {}).get("defense_info", {})
        model = create_defense(defense["name"], **defense.get("params", {})).rebuild(model, info)
    return load_weights(model, path)


__all__ = ["load_any", "stored_user_model", "user_model"]
