"""Gated fusion: per-sample softmax gates over modalities weight their projected embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmrobust.models.fusion.base import Fusion
from mmrobust.models.fusion.registry import FUSIONS


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    """``h_m = tanh(W_m z_m)``, ``g = softmax_m(v·h_m)`` over present modalities, ``fused = Σ g_m h_m``.

    Each gate score depends only on its own modality, so absent modalities are simply left out of
    the softmax (``supports_drop``). ``aux["gates"]`` is (N, M) in the model's modality order,
    zero for absent modalities.

    Args:
        names: Modality names.
        dims: Embedding dimension per modality.
        num_classes: K.
        hidden: Width of the projected embeddings and of the fused embedding.
    """

    supports_drop: ClassVar[bool] = True

    def __init__(
        self, names: Sequence[str], dims: Mapping[str, int], num_classes: int, hidden: int = 64
    ) -> None:
        super().__init__(names, dims, num_classes)
        self.proj = nn.ModuleDict({m: nn.Linear(dims[m], hidden) for m in self.names})
        self.score = nn.Linear(hidden, 1)
        self.out_dim = hidden

    def forward(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """(N, hidden) gated sum; aux["gates"] (N, M)."""
        present = [m for m in self.names if m in z]
        h = torch.stack([torch.tanh(self.proj[m](z[m])) for m in present], 1)  # (N, P, hidden)
        g = torch.softmax(self.score(h).squeeze(-1), dim=1)  # (N, P)
        fused = (g.unsqueeze(-1) * h).sum(1)
        gates = g.new_zeros(g.shape[0], len(self.names))
        gates[:, [self.names.index(m) for m in present]] = g
        return fused, {"gates": gates}
