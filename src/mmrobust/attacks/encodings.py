"""The clean batch's per-modality embeddings, computed once and shared by every condition of the batch.

Most conditions change one modality (a single-source attack, a corruption of the image, a missing
audio stream) and leave the others bit-identical — the very same tensor objects. Their embeddings
z_m = φ_m(x_m) are the same as the clean batch's, so :func:`mmrobust.evaluate` encodes the clean
batch once (:class:`CleanEncodings`, passed to conditions in :attr:`EvalContext.encodings
<mmrobust.attacks.base.EvalContext>`) and then re-runs only the encoders of the modalities a
condition changed (:meth:`CleanEncodings.logits`); gradient attacks take the embeddings of their
untouched modalities from it too. Encoders run in eval mode, sample by sample, so the logits are the
ones a full forward pass gives (tested to be equal).

A cached embedding is used only for the same model object and the same input tensor object, so a
condition that evaluates another model (a transfer attack's source) or a changed tensor never reads
a stale entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


class CleanEncodings:
    """Lazily computed embeddings ``{m: z_m (N, d)}`` of one clean batch ``x`` under ``model``.

    Args:
        model: The evaluated model (a :class:`~mmrobust.models.MultimodalModel`, in eval mode).
        x: The clean batch ``{m: (N, *shape)}``.
    """

    def __init__(self, model: Any, x: Mapping[str, Tensor]) -> None:
        self.model = model
        self.x = dict(x)
        self._z: dict[str, Tensor] = {}

    def get(self, modality: str) -> Tensor:
        """z_m of the clean batch (computed on first use, without gradients)."""
        if modality not in self._z:
            # Under no_grad the output already carries no graph; keeping the very tensor (no .detach() copy)
            # lets fusions that trace an embedding back to its input (JR's jacobian="input") find it.
            with torch.no_grad():
                self._z[modality] = self.model.encode_one(modality, self.x[modality])
        return self._z[modality]

    def lookup(self, model: Any, modality: str, x_m: Tensor) -> Tensor | None:
        """The cached z_m if ``model`` and ``x_m`` are this batch's very objects, else ``None``."""
        if model is self.model and modality in self.x and x_m is self.x[modality]:
            return self.get(modality)
        return None

    def encode(self, model: Any, modality: str, x_m: Tensor) -> Tensor:
        """z_m of ``x_m``: from the cache when it is the clean tensor of this model, else encoded now."""
        z = self.lookup(model, modality, x_m)
        return model.encode_one(modality, x_m) if z is None else z

    @torch.no_grad()
    def logits(
        self,
        x: Mapping[str, Tensor],
        drop: Sequence[str] = (),
        embeddings: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """The model's logits (N, K) on a condition's output: only changed modalities are re-encoded.

        Args:
            x: The evaluated batch (untouched modalities are the clean tensors themselves).
            drop: Modalities left out (fusions that support it).
            embeddings: Token-embedding overrides of text modalities.
        """
        model = self.model
        embeddings = embeddings or {}
        drop = model._check_drop(drop)
        changed = {m: x[m] for m in model.modalities if m not in drop and m not in embeddings and x[m] is not self.x[m]}
        if changed:
            model.spec.subset(list(changed)).validate_batch(changed)
        z = {}
        for m in model.modalities:
            if m in drop:
                continue
            if m in embeddings:
                z[m] = model.encode_embedded(m, x[m], embeddings[m])
            elif m in changed:
                z[m] = model.encode_one(m, x[m])
            else:
                z[m] = self.get(m)
        return model.logits_from_embeddings(z)


__all__ = ["CleanEncodings"]
