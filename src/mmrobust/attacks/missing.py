"""Missing-modality conditions: replace a modality by a fill, or drop it from the fusion.

Fills (recorded with every result):
    * ``zeros``: all zeros, clipped into the modality's valid range; for token ids, all padding.
    * ``mean``: the training-split per-coordinate mean; for token ids, the per-position most
      frequent training token.
    * ``noise``: Gaussian noise with the training per-coordinate mean and standard deviation,
      clipped to the valid range; for token ids, uniformly random non-pad ids.
    * ``drop``: leave the modality out of the fusion (late fusion renormalises over the present
      modalities; attention and gated fusion mask it). Fusions that need every input refuse it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks.base import Condition, ConditionOutput, EvalContext
from mmrobust.attacks.registry import ATTACKS
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.base import MultimodalModel
from mmrobust.spec import ModalitySpec

FILLS = ("zeros", "mean", "noise", "drop")


def zero_fill(spec: ModalitySpec, like: Tensor) -> Tensor:
    """The ``zeros`` fill of ``like`` (N, *shape): zeros clipped into the valid range; padding for token ids."""
    if spec.is_tokens:
        return torch.full_like(like, spec.pad_id if spec.pad_id is not None else 0)
    out = torch.zeros_like(like)
    if spec.low is not None or spec.high is not None:
        out = out.clamp(spec.low, spec.high)
    return out


def fill_modality(
    spec: ModalitySpec, like: Tensor, fill: str, ctx: EvalContext
) -> Tensor:
    """A replacement for one modality's batch ``like`` (N, *shape) with the given ``fill``."""
    n = like.shape[0]
    st = ctx.stats.get(spec.name)
    if spec.is_tokens:
        pad = spec.pad_id if spec.pad_id is not None else 0
        if fill == "zeros":
            return zero_fill(spec, like)
        if fill == "mean":
            assert st is not None and st.mode is not None
            return st.mode.to(like.dtype).expand(n, *spec.shape).clone()
        vocab = int(spec.vocab_size or 2)
        ids = torch.randint(0, vocab - 1, like.shape, generator=ctx.generator)
        return (ids + (ids >= pad).long()).to(like.dtype)  # uniform over non-pad ids
    if fill == "zeros":
        return zero_fill(spec, like)
    if fill == "mean":
        assert st is not None and st.mean is not None
        out = st.mean.to(like).expand(n, *spec.shape).clone()
    else:
        assert st is not None and st.mean is not None and st.std is not None
        noise = torch.randn(like.shape, generator=ctx.generator, dtype=torch.float32)
        out = (st.mean + st.std * noise).to(like)
    if spec.low is not None or spec.high is not None:
        out = out.clamp(spec.low, spec.high)
    return out


@ATTACKS.register()
class Missing(Condition):
    """Evaluate with one or more modalities missing.

    Threat model: the listed modalities are unavailable at test time (sensor failure, dropped
    stream); the others are clean and bit-identical.

    Args:
        modalities: Modality name or list of names that go missing.
        fill: ``zeros``, ``mean``, ``noise`` or ``drop`` (see the module docstring).
    """

    name: ClassVar[str] = "missing"
    family: ClassVar[str] = "missing"

    def __init__(self, modalities: str | list[str], fill: str = "zeros") -> None:
        super().__init__(modalities)
        if fill not in FILLS:
            raise InputError(f"missing: unknown fill {fill!r}; choose one of {', '.join(FILLS)}")
        self.fill = fill

    def params(self) -> dict[str, Any]:
        """``{"modalities": [...], "fill": ...}``."""
        return {"modalities": list(self.modalities), "fill": self.fill}

    def check(self, model: MultimodalModel) -> None:
        """Unknown modality, dropping every modality, or ``drop`` on a fusion without it -> error."""
        super().check(model)
        if len(self.modalities) >= len(model.modalities):
            raise InputError(f"missing: cannot remove every modality of the model ({model.modalities})")
        if self.fill == "drop" and not model.supports_drop:
            raise UnsupportedError(
                f"missing: fusion {model.fusion_name!r} cannot drop modalities; use fill='zeros', "
                "'mean' or 'noise'"
            )

    def apply(
        self, model: MultimodalModel, x: dict[str, Tensor], y: Tensor, ctx: EvalContext
    ) -> ConditionOutput:
        """The batch with the listed modalities filled (or removed and declared dropped)."""
        out = dict(x)
        if self.fill == "drop":
            for m in self.modalities:
                out.pop(m)
            return ConditionOutput(out, drop=tuple(self.modalities))
        for m in self.modalities:
            out[m] = fill_modality(model.spec[m], x[m], self.fill, ctx)
        return ConditionOutput(out)
