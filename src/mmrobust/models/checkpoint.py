"""Saving and loading model checkpoints (weights + the config, spec and provenance to rebuild them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mmrobust.errors import CacheError, InputError, UnknownNameError
from mmrobust.models.base import MultimodalModel
from mmrobust.spec import DatasetSpec
from mmrobust.utils.io import atomic_write
from mmrobust.utils.provenance import provenance

FORMAT = "mmrobust-checkpoint"
VERSION = 1


def save_checkpoint(
    model: MultimodalModel, path: str | os.PathLike[str], meta: dict[str, Any] | None = None
) -> Path:
    """Atomically save ``model`` with its config, spec, provenance and ``meta`` (e.g. training info)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config,
        "spec": model.spec.to_dict(),
        "state_dict": model.state_dict(),
        "meta": {
            "provenance": provenance(),
            **({"defense_info": model.defense_info} if getattr(model, "defense_info", None) else {}),
            **(meta or {}),
        },
    }
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint's raw payload (weights-only unpickling), with clear errors."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        raise CacheError(f"checkpoint {path} is truncated or not a torch file ({type(e).__name__})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CacheError(f"{path} is not an mmrobust checkpoint")
    return payload


def load_checkpoint(path: str | os.PathLike[str]) -> MultimodalModel:
    """Rebuild the model saved at ``path`` (in eval mode); ``model.checkpoint_meta`` holds its meta."""
    payload = read_checkpoint(path)
    spec = DatasetSpec.from_dict(payload["spec"])
    cfg = dict(payload["config"])
    if "hooks" in cfg or "module" in cfg:  # mr.models.adapt(...) around your own module: its class is not in the file
        raise CacheError(
            f"checkpoint {path} holds the weights of your own module ({cfg.get('module')}); a checkpoint cannot "
            "rebuild your class: build and wrap it as before (mr.models.adapt(...)), then "
            "mr.models.load_weights(model, path)"
        )
    name = cfg.pop("name", None)
    defense = cfg.pop("defense", None)
    try:
        model = MultimodalModel(spec, **cfg)
    except (TypeError, InputError, UnknownNameError) as e:
        raise CacheError(f"checkpoint {path} describes a model this mmrobust version cannot build: {e}") from None
    if name is not None:
        model.config["name"] = name
    if defense is not None:
        model.config["defense"] = defense
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0] if first else ""
        raise CacheError(
            f"checkpoint {path} does not fit the model its config describes (saved by another mmrobust "
            f"version?): {detail[:300]}"
        ) from None
    model.checkpoint_meta = payload.get("meta", {})
    on_load = getattr(model.fusion, "on_load", None)  # fusions that hook the model (JR's input Jacobians)
    if callable(on_load):
        on_load(model)
    if defense is not None:
        model.defense_info = dict(model.checkpoint_meta.get("defense_info", {}))
    return model.eval()


def load_weights(model: MultimodalModel, path: str | os.PathLike[str]) -> MultimodalModel:
    """Load the weights saved at ``path`` into ``model``, a model of the same structure (in eval mode).

    For models a checkpoint cannot rebuild on its own — an adapter around your own module
    (:func:`mmrobust.models.adapt`), whose class the file does not hold: build and wrap it as when
    it was saved (for a defended one: ``defense.rebuild(model, info)``), then load its weights.
    Sets ``checkpoint_meta`` (and ``defense_info`` of a defended model) as :func:`load_checkpoint` does.

    Raises:
        CacheError: a missing or damaged file, or weights that do not fit ``model``.
    """
    payload = read_checkpoint(path)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0] if first else ""
        raise CacheError(f"checkpoint {path} does not fit this model: {detail[:300]}") from None
    model.checkpoint_meta = payload.get("meta", {})
    defense = payload["config"].get("defense")
    if defense is not None:
        model.config["defense"] = defense
        model.defense_info = dict(model.checkpoint_meta.get("defense_info", {}))
    on_load = getattr(model.fusion, "on_load", None)
    if callable(on_load):
        on_load(model)
    return model.eval()
