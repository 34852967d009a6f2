"""What the training defences share: their two training knobs, the training call, the supervised loss.

Every training defence (``mixup``, ``plain_mixup``, ``adversarial_training``, ``modality_dropout``,
``crmt``, ``ooo``) takes the same two training settings:

* ``epochs``: passes over the training split (an integer >= 1);
* ``train``: a dict of other :class:`~mmrobust.train.TrainConfig` fields (``lr``, ``batch_size``,
  ``weight_decay``, ``patience``, ...). Unknown keys are rejected by name with the list of accepted
  ones; ``seed`` and ``quiet`` come from ``apply(seed=..., quiet=...)``; ``epochs`` is its own
  argument; each defence also rejects the fields it sets itself (``reserved``).

:func:`check_training` validates them (types strictly: no booleans for numbers, finite values) and
returns them in a canonical form (TrainConfig's field order, plain Python numbers), so equal settings
give equal defence ids. :func:`train_copy` runs :func:`mmrobust.train` on a deep copy of the model,
:func:`supervised_loss` is the standard training loss from given per-modality embeddings (hard or
soft targets) and :func:`training_info` what a defence records about its run.
"""

from __future__ import annotations

import copy
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor

from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset
from mmrobust.defenses.base import Defense
from mmrobust.errors import InputError
from mmrobust.models.base import MultimodalModel
from mmrobust.train import Objective, TrainConfig, TrainResult, train
from mmrobust.utils.checks import check_int

__all__ = [
    "TRAIN_KEYS",
    "check_training",
    "resolve_training",
    "supervised_loss",
    "train_copy",
    "training_info",
    "unimodal_weight",
]

#: Every :class:`~mmrobust.train.TrainConfig` field, in its declaration order.
TRAIN_KEYS: tuple[str, ...] = tuple(TrainConfig.model_fields)

#: Fields no defence takes in ``train``, with the end of the message that refuses them.
_ALWAYS_RESERVED: dict[str, str] = {
    "seed": "is set by the defence; use apply(seed=...) instead",
    "quiet": "is set by the defence; use apply(quiet=...) instead",
    "epochs": "is set by the defence; use the epochs hyper-parameter instead",
}

_TYPE_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "True or False", type(None): "None"}


def _field_types(key: str) -> tuple[type, ...]:
    """The Python types a TrainConfig field takes (``int | None`` -> ``(int, NoneType)``)."""
    ann = TrainConfig.model_fields[key].annotation
    if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
        return tuple(typing.get_args(ann))
    return (ann,)


def _typed(defense: str, key: str, value: Any) -> Any:
    """``value`` as the plain Python type of TrainConfig field ``key``; InputError naming it otherwise."""
    kinds = _field_types(key)
    if value is None and type(None) in kinds:
        return None
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if bool in kinds and isinstance(value, bool):
        return value
    if int in kinds and number and isinstance(value, numbers.Integral):
        return int(value)
    if float in kinds and number and math.isfinite(float(value)):
        return float(value)
    if str in kinds and isinstance(value, str):
        return value
    choices = [c for k in kinds if typing.get_origin(k) is typing.Literal for c in typing.get_args(k)]
    if value in choices:
        return value
    want = " or ".join(_TYPE_NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds
                       if typing.get_origin(k) is not typing.Literal)
    if choices:
        want = " or ".join([*([want] if want else []), "one of " + ", ".join(map(repr, choices))])
    raise InputError(f"{defense}: train[{key!r}] must be {want}, got {value!r}")


def check_training(
    defense: str,
    epochs: Any,
    train_kwargs: Mapping[str, Any] | None,
    reserved: Sequence[str] | Mapping[str, str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Validate a training defence's ``epochs`` and ``train`` settings.

    Args:
        defense: Defence name, for the messages.
        epochs: Passes over the training split (an integer >= 1).
        train_kwargs: Other TrainConfig fields (``lr``, ``batch_size``, ``weight_decay``,
            ``unimodal_loss``, ``patience``, ...), or None.
        reserved: Fields this defence sets itself or cannot use (besides ``seed``, ``quiet`` and
            ``epochs``): names (the message points to the defence's own hyper-parameters), or
            ``{name: why}``, the end of the message ``"<defense>: train['<name>'] <why>"``.
        defaults: The defence's own defaults for some fields where they differ from TrainConfig's
            (e.g. ``{"lr": 1e-3}``); ``train_kwargs`` overrides them.

    Returns:
        ``(epochs, settings)``: the settings are ``defaults`` updated with ``train_kwargs``, as plain
        Python values in TrainConfig's field order.

    Raises:
        InputError: naming the bad value or key (an unknown key comes with the accepted ones).
    """
    check_int(epochs, defense, "epochs")
    if train_kwargs is None:
        train_kwargs = {}
    if not isinstance(train_kwargs, Mapping):
        raise InputError(f"{defense}: train must be a dict of TrainConfig fields, got {type(train_kwargs).__name__}")
    why = (
        {str(k): str(v) for k, v in reserved.items()} if isinstance(reserved, Mapping)
        else {str(k): f"is set by the defence; use the {defense} hyper-parameters instead" for k in reserved}
    )
    blocked = {**_ALWAYS_RESERVED, **why}
    given = {**(defaults or {}), **train_kwargs}
    for k in given:
        if k in blocked:
            raise InputError(f"{defense}: train[{k!r}] {blocked[k]}")
        if k not in TRAIN_KEYS:
            allowed = ", ".join(t for t in TRAIN_KEYS if t not in blocked)
            raise InputError(f"{defense}: unknown train setting {k!r}; train accepts {allowed}")
    out = {k: _typed(defense, k, given[k]) for k in TRAIN_KEYS if k in given}
    try:
        TrainConfig.model_validate({**out, "epochs": int(epochs)})
    except ValidationError as e:
        bad = ", ".join(
            f"{err['loc'][0]}={given.get(err['loc'][0], err.get('input'))!r} ({err['msg']})" for err in e.errors()
        )
        raise InputError(f"{defense}: invalid train settings: {bad}") from None
    return int(epochs), out


def resolve_training(train_kwargs: Mapping[str, Any]) -> TrainConfig:
    """The :class:`~mmrobust.train.TrainConfig` a run with these ``train`` settings uses (defaults filled in)."""
    return TrainConfig.model_validate(dict(train_kwargs))


def unimodal_weight(train_kwargs: Mapping[str, Any]) -> float:
    """The auxiliary per-modality loss weight the run will use (TrainConfig default unless overridden)."""
    return float(resolve_training(train_kwargs).unimodal_loss)


def supervised_loss(
    model: MultimodalModel,
    z: Mapping[str, Tensor],
    target: Tensor,
    unimodal_loss: float,
    fused: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the fused logits plus ``unimodal_loss`` × the mean per-branch cross-entropy.

    The same loss as :func:`mmrobust.train.standard_objective`, but from given per-modality
    embeddings and for hard or soft targets (mix-up).

    Args:
        model: The model being trained.
        z: Per-modality embeddings ``{m: (N, D_m)}``.
        target: Labels (N,) int64, or class probabilities (N, K) (soft targets; rows sum to 1).
        unimodal_loss: Weight of the per-branch term (late fusion: its unimodal logits; other
            fusions: the auxiliary heads on each z_m); 0 disables it.
        fused: Fused embedding (N, out_dim) to classify instead of ``fuse(z)`` (fused-level mix-up);
            the branch term still uses ``z``.

    Returns:
        ``(scalar loss, fused logits (N, K))``.
    """
    f, aux = model.fuse(z)
    logits = model.head_from_fused(f if fused is None else fused)
    loss = F.cross_entropy(logits, target)
    uni = model.branch_logits(z, aux) if unimodal_loss > 0 else {}
    if uni:
        loss = loss + unimodal_loss * sum(F.cross_entropy(u, target) for u in uni.values()) / len(uni)
    return loss, logits


def train_copy(
    defense: Defense,
    model: MultimodalModel,
    data: DatasetBundle,
    *,
    epochs: int,
    train_kwargs: Mapping[str, Any],
    seed: int,
    quiet: bool,
    objective: Objective | None = None,
    score: Callable[[MultimodalModel, MultimodalDataset], float] | None = None,
    **config: Any,
) -> tuple[MultimodalModel, TrainResult]:
    """Deep-copy ``model`` and train the copy with :func:`mmrobust.train` (the input stays untouched).

    Args:
        defense: The defence (for messages).
        model: The model to train (a fresh ``mr.models.create(...)`` one, or a trained one to fine-tune).
        data: Bundle with ``train`` and ``val`` splits.
        epochs: Passes over the training split.
        train_kwargs: Extra TrainConfig fields.
        seed: Training seed (shuffling and every random draw of the objective).
        quiet: Silence the progress bar.
        objective: Per-batch loss (default: the standard one).
        score: Validation score for model selection (default: clean accuracy).
        **config: TrainConfig fields the defence sets itself (e.g. ``modality_dropout``).

    Returns:
        ``(trained copy in eval mode, TrainResult)``.
    """
    if not isinstance(data, DatasetBundle):
        raise InputError(f"{defense.name}: needs a DatasetBundle (mr.datasets.load(...)), got {type(data).__name__}")
    check_int(seed, defense.name, "seed", minimum=None)
    trained = copy.deepcopy(model)
    cfg = {**train_kwargs, **config, "epochs": epochs, "seed": int(seed), "quiet": bool(quiet)}
    result = train(trained, data, cfg, objective=objective, score=score)
    return trained, result


def training_info(result: TrainResult) -> dict[str, Any]:
    """What a training defence records in ``model.defense_info`` about its run."""
    return {
        "train_seconds": round(result.seconds, 3),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
    }
