"""Base class of fusion layers: ``{m: z_m} -> (fused, aux)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn


class Fusion(nn.Module):
    """A fusion layer combining per-modality embeddings.

    Subclasses set the class attributes and implement :meth:`forward`.

    Attributes:
        supports_drop: The layer accepts a subset of modalities (absent ones are left out and the
            fusion renormalises over the present ones).
        late: The fused output already is the class logits (per-modality heads are summed);
            :meth:`unimodal_logits` is then available.
        out_dim: Dimension of the fused embedding (K for late fusion).

    Args:
        names: Modality names in the model's order.
        dims: Embedding dimension of each modality.
        num_classes: Number of classes K.
    """

    supports_drop: ClassVar[bool] = False
    late: ClassVar[bool] = False

    def __init__(self, names: Sequence[str], dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        self.names = list(names)
        self.dims = dict(dims)
        self.num_classes = num_classes
        self.out_dim = num_classes

    def forward(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """Fuse the embeddings of the present modalities.

        Args:
            z: ``{m: (N, dims[m])}`` for the present modalities (all of them unless the layer
                ``supports_drop``).

        Returns:
            ``(fused of shape (N, out_dim), aux dict)``; aux holds e.g. gates or attention weights.
        """
        raise NotImplementedError

    def unimodal_logits(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-modality logits; only late fusions define them."""
        raise NotImplementedError
