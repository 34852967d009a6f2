"""A plain, seeded PyTorch training loop with validation-based model selection.

:func:`train` fits any :class:`~mmrobust.models.MultimodalModel` on a
:class:`~mmrobust.datasets.DatasetBundle`: Adam, cross-entropy, one pass over the shuffled training
split per epoch, and after each epoch the validation accuracy; the weights of the best validation
epoch are restored at the end (the test split is never looked at). For late fusion an auxiliary
per-modality cross-entropy keeps every branch a usable classifier on its own (``unimodal_loss``),
which is what makes dropping a modality at test time meaningful.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from mmrobust.attacks.missing import zero_fill
from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset
from mmrobust.errors import ConfigError, InputError, require
from mmrobust.models.base import MultimodalModel
from mmrobust.models.checkpoint import save_checkpoint
from mmrobust.utils.seed import seed_everything


class TrainConfig(BaseModel):
    """Hyper-parameters of :func:`train` (unknown keys are rejected by name)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(20, ge=1, description="Passes over the training split.")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="adam (default) or sgd (with ``momentum``; e.g. CRMT's published recipe: sgd, lr 1e-3, "
        "momentum 0.9, weight_decay 1e-4)."
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by adam).")
    lr_step: int | None = Field(
        None, ge=1, description="Multiply the learning rate by ``lr_gamma`` every this many epochs (a step "
        "schedule, e.g. CRMT's published recipe: every 40 epochs of 100); None keeps it constant."
    )
    lr_gamma: float = Field(0.1, gt=0, le=1, description="Factor of the step schedule (with ``lr_step``).")
    seed: int = Field(0, description="Seeds shuffling and dropout (initialisation: models.create).")
    unimodal_loss: float = Field(
        1.0,
        ge=0,
        description="Weight of the mean per-modality CE (late fusion: its unimodal logits; other "
        "fusions: auxiliary heads on each z_m); 0 disables it.",
    )
    modality_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Per-sample probability of zeroing one random modality (padding for token ids) "
        "in a training batch; fights modality laziness and missing-modality brittleness.",
    )
    patience: int | None = Field(None, ge=1, description="Stop after this many epochs without a new best.")
    tensorboard: str | None = Field(
        None,
        description="Folder for TensorBoard event files (train loss/accuracy and the validation score per "
        "epoch); needs the optional tensorboard package (pip install 'mmrobust[tensorboard]').",
    )
    quiet: bool = Field(False, description="Silence the progress bar.")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        best_epoch: 1-based epoch whose weights were kept.
        best_val_accuracy: Validation accuracy at that epoch.
        history: Per-epoch ``{"epoch", "train_loss", "train_accuracy", "val_accuracy", "lr"}`` (``lr``: the
            learning rate the epoch trained with).
        seconds: Wall time.
        config: The resolved :class:`TrainConfig` as a dict.
    """

    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "seconds": self.seconds,
            "config": self.config,
            "history": self.history,
        }


@torch.no_grad()
def accuracy(model: MultimodalModel, data: MultimodalDataset, batch_size: int = 512) -> float:
    """Clean accuracy of ``model`` on ``data`` (restricted to the model's modalities), in eval mode."""
    was_training = model.training
    model.eval()
    data = data.select(model.modalities)
    correct = 0
    for x, y, _ in data.batches(batch_size):
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(len(data), 1)


def _drop_modalities(
    x: dict[str, torch.Tensor], model: MultimodalModel, p: float, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Zero (or pad) one random modality in a fraction ``p`` of the samples."""
    n, names = next(iter(x.values())).shape[0], model.modalities
    hit = torch.rand(n, generator=gen) < p
    which = torch.randint(len(names), (n,), generator=gen)
    out = dict(x)
    for i, m in enumerate(names):
        mask = hit & (which == i)
        if bool(mask.any()):
            out[m] = torch.where(mask.view(-1, *[1] * (x[m].dim() - 1)), zero_fill(model.spec[m], x[m]), x[m])
    return out


class Objective(Protocol):
    """A training objective plugged into :func:`train` (how defences change the loss or the batch)."""

    def __call__(
        self, model: MultimodalModel, x: dict[str, torch.Tensor], y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(scalar loss, logits (N, K) used for the training accuracy)`` for one batch."""
        ...


def standard_objective(unimodal_loss: float) -> Objective:
    """Cross-entropy of the fused logits plus ``unimodal_loss`` × the mean per-branch cross-entropy.

    Through the hooks: z = ``encode(x)``, ``fuse(z)``, ``head_from_fused``, ``branch_logits(z, aux)``
    (late fusion: the per-modality logits; other fusions: auxiliary heads, where a model has or
    declares them). A foreign module without declared hooks (``mr.models.adapt`` without ``hooks``)
    is trained end to end on the cross-entropy of its forward.
    """

    def objective(
        model: MultimodalModel, x: dict[str, torch.Tensor], y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = model.encode(x)
        if model.hook_error("fuse") is not None:  # one function of its inputs: no fused embedding, no branches
            logits = model.logits_from_embeddings(z)
            return F.cross_entropy(logits, y), logits
        fused, aux = model.fuse(z)
        logits = model.head_from_fused(fused)
        loss = F.cross_entropy(logits, y)
        uni = model.branch_logits(z, aux) if unimodal_loss > 0 else {}
        if uni:
            loss = loss + unimodal_loss * sum(F.cross_entropy(u, y) for u in uni.values()) / len(uni)
        return loss, logits

    return objective


def _tensorboard_writer(logdir: str | None) -> Any:
    """A ``SummaryWriter`` for ``logdir`` (``None``: no logging); a clear error without tensorboard."""
    if logdir is None:
        return None
    require("tensorboard", "TensorBoard logging", "pip install 'mmrobust[tensorboard]' (or pip install tensorboard)")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(logdir))


def train(
    model: MultimodalModel,
    data: DatasetBundle,
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    objective: Objective | None = None,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    score: Callable[[MultimodalModel, MultimodalDataset], float] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train ``model`` in place and keep the weights of the best validation epoch.

    Defences reuse this loop (seeding, shuffling, selection on validation, checkpointing) and plug
    in what differs: the per-batch ``objective`` (adversarial or mixed batches, extra loss terms),
    the trained ``parameters`` and the validation ``score``.

    Args:
        model: The model (its modalities are selected from the data).
        data: A bundle with ``train`` and ``val`` splits.
        config: A :class:`TrainConfig` or dict of its fields.
        checkpoint: If given, save the selected model there (atomically) with the training record.
        objective: Per-batch loss (default :func:`standard_objective` with ``config.unimodal_loss``);
            called with the model in train mode and the (modality-dropped) batch.
        parameters: Parameters to optimise (default: ``model.trainable_parameters()``: all of a native
            model's; an adapter's declared ``trainable`` parts). The model's other parameters are
            frozen (``requires_grad=False``) during training and restored after.
        score: Validation score to maximise for model selection, ``score(model, data.val)`` with the
            model in eval mode (default: validation accuracy).
        **overrides: Individual :class:`TrainConfig` fields, e.g. ``epochs=5``.

    Returns:
        A :class:`TrainResult`; the model is left in eval mode with the selected weights
        (``best_val_accuracy`` holds the best validation score).
    """
    if not isinstance(model, MultimodalModel):
        raise InputError(f"train() needs a mmrobust MultimodalModel, got {type(model).__name__}")
    if not isinstance(data, DatasetBundle):
        raise InputError(f"train() needs a DatasetBundle (mr.datasets.load(...)), got {type(data).__name__}")
    try:
        cfg = TrainConfig.model_validate({**(dict(config) if isinstance(config, dict) else
                                            (config.model_dump() if config else {})), **overrides})
    except Exception as e:
        raise ConfigError(f"invalid training config: {e}") from e
    train_set = data.train.select(model.modalities)
    val_set = data.val.select(model.modalities)
    objective = objective or standard_objective(cfg.unimodal_loss)
    score = score or accuracy
    params = list(model.trainable_parameters() if parameters is None else parameters)
    if not params:
        raise InputError("train(): no parameters to optimise")
    optimised = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in optimised and p.requires_grad]
    for p in frozen:  # no gradients for what does not train (restored at the end)
        p.requires_grad_(False)
    try:
        return _fit(model, data, cfg, train_set, val_set, objective, score, params, checkpoint)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _fit(
    model: MultimodalModel,
    data: DatasetBundle,
    cfg: TrainConfig,
    train_set: MultimodalDataset,
    val_set: MultimodalDataset,
    objective: Objective,
    score: Callable[[MultimodalModel, MultimodalDataset], float],
    params: list[torch.nn.Parameter],
    checkpoint: str | os.PathLike[str] | None,
) -> TrainResult:
    """The loop of :func:`train` (arguments resolved)."""
    writer = _tensorboard_writer(cfg.tensorboard)
    gen = seed_everything(cfg.seed)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = (torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
                if cfg.lr_step is not None else None)
    best_state = copy.deepcopy(model.state_dict())
    best_acc, best_epoch, since_best = -1.0, 0, 0
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    steps_per_epoch = (len(train_set) + cfg.batch_size - 1) // cfg.batch_size
    bar = tqdm(total=cfg.epochs * steps_per_epoch, disable=cfg.quiet, desc="train", leave=False)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y, _ in train_set.batches(cfg.batch_size, shuffle=True, generator=gen):
            if cfg.modality_dropout > 0 and len(model.modalities) > 1:
                x = _drop_modalities(x, model, cfg.modality_dropout, gen)
            loss, logits = objective(model, x, y, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * y.numel()
            correct += int((logits.argmax(1) == y).sum())
            seen += y.numel()
            bar.update(1)
        model.eval()
        val_acc = float(score(model, val_set))
        history.append(
            {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
             "val_accuracy": val_acc, "lr": float(opt.param_groups[0]["lr"])}
        )
        if schedule is not None:
            schedule.step()
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", val=f"{val_acc:.3f}")
        if writer is not None:
            for key in ("train_loss", "train_accuracy", "val_accuracy"):
                writer.add_scalar(key, history[-1][key], epoch)
            writer.flush()
        if val_acc > best_acc:
            best_acc, best_epoch, since_best = val_acc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
            if cfg.patience is not None and since_best >= cfg.patience:
                break
    bar.close()
    if writer is not None:
        writer.close()
    model.load_state_dict(best_state)
    model.eval()
    result = TrainResult(
        best_epoch=best_epoch,
        best_val_accuracy=best_acc,
        history=history,
        seconds=time.perf_counter() - t0,
        config=cfg.model_dump(),
    )
    if checkpoint is not None:
        save_checkpoint(
            model, Path(checkpoint), {"train": result.to_dict(), "dataset": data.meta}
        )
    return result
