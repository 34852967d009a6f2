"""The ``corruption`` condition: one random corruption kind at one severity on one or more modalities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks.base import Condition, ConditionOutput, EvalContext
from mmrobust.attacks.corruptions.base import check_severity, get_kind, kind_mismatch_message
from mmrobust.attacks.registry import ATTACKS
from mmrobust.errors import InputError
from mmrobust.models.base import MultimodalModel


@ATTACKS.register()
class Corruption(Condition):
    """Evaluate under a random (or fixed) common corruption of the listed modalities.

    Threat model: natural, non-adversarial degradation — the model is not consulted. Each listed
    modality is corrupted by ``kind`` at ``severity`` (methods.md §1, "Random corruptions"); the
    other modalities are bit-identical (the very same tensors). Every random number comes from
    ``ctx.generator`` (so results are reproducible from the evaluation seed), and one sample's
    corruption never depends on the other samples of the batch. Kinds and what their severities
    mean: ``docs/corruptions.md`` and :func:`~mmrobust.attacks.corruptions.kinds_for`.

    Args:
        modalities: Modality name or list of names, all of the modality kind the kind is for
            (e.g. two image streams).
        kind: Corruption kind name, e.g. ``"gaussian_noise"`` (image), ``"noise"`` (audio),
            ``"char_delete"`` (text).
        severity: 1 (mild) .. 5 (severe); required, so that every id and table label shows it.

    Shapes:
        ``x[m]``: (N, *spec[m].shape), unchanged by the corruption. ``info["change/<m>"]``: (N,),
        the per-sample ℓ2 norm of x'_m − x_m for continuous modalities, or the fraction of the L
        token positions whose id changed for token modalities.

    Example:
        >>> import mmrobust as mr
        >>> c = mr.attacks.create("corruption", modalities="image", kind="gaussian_noise", severity=3)
        >>> c.id
        'corruption[image|kind=gaussian_noise,severity=3]'
    """

    name: ClassVar[str] = "corruption"
    family: ClassVar[str] = "corruption"

    def __init__(self, modalities: str | Sequence[str], *, kind: str, severity: int) -> None:
        super().__init__(modalities if isinstance(modalities, str) else list(modalities))
        self.corruption = get_kind(kind)
        self.kind = self.corruption.name
        self.severity = check_severity(severity)

    def params(self) -> dict[str, Any]:
        """``{"modalities": [...], "kind": ..., "severity": ...}``."""
        return {"modalities": list(self.modalities), "kind": self.kind, "severity": self.severity}

    def check(self, model: MultimodalModel) -> None:
        """Unknown modality, or a kind that does not fit a modality (kind, shape, range) -> InputError."""
        super().check(model)
        for m in self.modalities:
            spec = model.spec[m]
            if self.corruption.supports(spec) is not None:
                raise InputError(kind_mismatch_message(self.corruption, spec))

    def apply(
        self, model: MultimodalModel, x: dict[str, Tensor], y: Tensor, ctx: EvalContext
    ) -> ConditionOutput:
        """The batch with the listed modalities corrupted, and ``change/<m>`` per sample."""
        self.check(model)
        out = dict(x)
        info: dict[str, Tensor] = {}
        with torch.no_grad():
            for m in self.modalities:
                spec = model.spec[m]
                clean = x[m].detach()
                new = self.corruption.corrupt(clean, spec, self.severity, ctx.generator)
                if spec.is_tokens:
                    info[f"change/{m}"] = (new != clean).flatten(1).float().mean(1)
                else:
                    info[f"change/{m}"] = (new.double() - clean.double()).flatten(1).norm(dim=1).float()
                out[m] = new
        return ConditionOutput(out, info=info)
