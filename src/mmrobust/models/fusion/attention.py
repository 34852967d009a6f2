"""Cross-modal attention fusion: one self-attention block over modality tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmrobust.errors import InputError
from mmrobust.models.fusion.base import Fusion
from mmrobust.models.fusion.registry import FUSIONS


@FUSIONS.register("attention")
class AttentionFusion(Fusion):
    """Modality tokens ``t_m = W_m z_m + e_m`` -> pre-norm multi-head self-attention + MLP -> mean pool.

    Absent modalities are masked out of the attention keys and of the pool (``supports_drop``).
    ``aux["attention"]`` holds the head-averaged attention weights (N, M, M) in the model's modality
    order (rows: queries).

    Args:
        names: Modality names.
        dims: Embedding dimension per modality.
        num_classes: K.
        d_model: Token width (the fused embedding's dimension).
        heads: Attention heads (must divide ``d_model``).
    """

    supports_drop: ClassVar[bool] = True

    def __init__(
        self,
        names: Sequence[str],
        dims: Mapping[str, int],
        num_classes: int,
        d_model: int = 64,
        heads: int = 4,
    ) -> None:
        super().__init__(names, dims, num_classes)
        if d_model % heads:
            raise InputError(f"attention fusion: d_model {d_model} not divisible by heads {heads}")
        self.proj = nn.ModuleDict({m: nn.Linear(dims[m], d_model) for m in self.names})
        self.modality_embedding = nn.Parameter(torch.randn(len(self.names), d_model) * 0.02)
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.ReLU(), nn.Linear(2 * d_model, d_model))
        self.out_dim = d_model

    def forward(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """(N, d_model) pooled tokens; aux["attention"] (N, M, M)."""
        ref = next(iter(z.values()))
        n, m_all = ref.shape[0], len(self.names)
        d = self.modality_embedding.shape[1]
        present = torch.tensor([m in z for m in self.names], device=ref.device)
        tokens = ref.new_zeros(n, m_all, d)
        for i, m in enumerate(self.names):
            if m in z:
                tokens[:, i] = self.proj[m](z[m]) + self.modality_embedding[i]
        pad = (~present).unsqueeze(0).expand(n, m_all)
        q = self.norm1(tokens)
        a, w = self.attn(q, q, q, key_padding_mask=pad, need_weights=True)
        tokens = tokens + a
        tokens = tokens + self.ff(self.norm2(tokens))
        keep = present.to(tokens.dtype).view(1, m_all, 1)
        fused = (tokens * keep).sum(1) / keep.sum()
        return fused, {"attention": w}
