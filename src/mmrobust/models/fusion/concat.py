"""Intermediate fusion by concatenation of the modality embeddings followed by an MLP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmrobust.models.fusion.base import Fusion
from mmrobust.models.fusion.registry import FUSIONS


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """``fused = ReLU(W [z_1; …; z_M] + b)``; needs every modality (no drop).

    Args:
        names: Modality names.
        dims: Embedding dimension per modality.
        num_classes: K.
        hidden: Width of the fused embedding.
    """

    def __init__(
        self, names: Sequence[str], dims: Mapping[str, int], num_classes: int, hidden: int = 128
    ) -> None:
        super().__init__(names, dims, num_classes)
        self.mlp = nn.Sequential(nn.Linear(sum(dims[m] for m in self.names), hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """(N, hidden) fused embedding from the concatenation in the model's modality order."""
        return self.mlp(torch.cat([z[m] for m in self.names], dim=1)), {}
