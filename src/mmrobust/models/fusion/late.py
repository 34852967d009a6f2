"""Late fusion: sum of per-modality logits (conditional-independence fusion).

Under conditional independence of the modalities given the label,
p(y | x_1..x_M) ∝ Π_m p(y | x_m) / π(y)^(M-1), so the fused logits are
s = Σ_m z_m − (M − 1) log π with z_m = W_m φ_m(x_m) + b_m the per-modality logits and π the class
prior (uniform unless given). With absent modalities the sum runs over the present ones and M counts
only those. This is the "CI fusion" baseline of JR (Gao et al., arXiv 2204.02485) and the head form
certified by CRMT (Yang et al., ICLR 2024).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmrobust.errors import InputError
from mmrobust.models.fusion.base import Fusion
from mmrobust.models.fusion.registry import FUSIONS


@FUSIONS.register("late")
class LateFusion(Fusion):
    """Sum of per-modality linear heads' logits minus (M−1)·log prior.

    Args:
        names: Modality names.
        dims: Embedding dimension per modality.
        num_classes: K.
        prior: Optional class prior π (K positive numbers, normalised here); uniform by default.
    """

    supports_drop: ClassVar[bool] = True
    late: ClassVar[bool] = True

    def __init__(
        self,
        names: Sequence[str],
        dims: Mapping[str, int],
        num_classes: int,
        prior: Sequence[float] | None = None,
    ) -> None:
        super().__init__(names, dims, num_classes)
        self.heads = nn.ModuleDict({m: nn.Linear(dims[m], num_classes) for m in self.names})
        if prior is None:
            log_prior = torch.full((num_classes,), -math.log(num_classes))
        else:
            p = torch.as_tensor(list(prior), dtype=torch.float32)
            if p.shape != (num_classes,) or bool((p <= 0).any()):
                raise InputError(f"prior must be {num_classes} positive numbers")
            log_prior = (p / p.sum()).log()
        self.register_buffer("log_prior", log_prior)
        self.out_dim = num_classes

    def unimodal_logits(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{m: W_m z_m + b_m}`` for each modality in ``z``, each (N, K)."""
        return {m: self.heads[m](z[m]) for m in self.names if m in z}

    def forward(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """Fused logits (N, K) = Σ_m z_m − (M_present − 1) log π; aux["unimodal_logits"]."""
        uni = self.unimodal_logits(z)
        fused = torch.stack(list(uni.values()), 0).sum(0) - (len(uni) - 1) * self.log_prior
        return fused, {"unimodal_logits": uni}
