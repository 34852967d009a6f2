"""A MultiBench-layout model for MM-Digits: LeNet-style CNNs, a GRU over token embeddings, tensor fusion.

Written in the style of MultiBench (Liang et al., *MultiBench: Multiscale Benchmarks for Multimodal
Representation Learning*, NeurIPS 2021 Datasets and Benchmarks, arXiv 2107.07502): ``MMDL`` holds
``encoders`` (an ``nn.ModuleList``, one per modality, in input order), ``fuse`` (a module taking the
list of embeddings) and ``head``, and ``forward(inputs: list)`` returns ``head(fuse([enc_i(x_i)]))``.
The fusion is tensor fusion (Zadeh et al., *Tensor Fusion Network for Multimodal Sentiment
Analysis*, EMNLP 2017, arXiv 1707.07250): the flattened outer product of the vectors [1; z_m], so the
fused embedding holds every unimodal, bimodal and trimodal product of features.

Nothing here imports mmrobust: this is what a user's own model looks like. ``mr.models.adapt(model,
spec, order, hooks="multibench")`` (plus the text encoder's embedding layer,
``embeddings={"text": "encoders.2.embedding"}``) makes every mmrobust method reach its parts;
``configs/multibench.yaml`` runs the default threats and every defence that applies on it.

Shapes (MM-Digits): image (N, 1, 8, 8), audio log-mel (N, 1, 32, 64), text token ids (N, 16) with
pad id 0; each encoder gives (N, d); the fusion (N, Π_m (d_m + 1)); logits (N, 10).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class LeNet(nn.Module):
    """LeNet-style CNN (MultiBench's image/spectrogram encoder): conv-BN-ReLU-maxpool blocks, global max pool.

    The first block has a 5×5 convolution with ``channels`` filters, each of the ``extra`` further
    blocks a 3×3 one with twice the channels of the previous; every block halves the resolution.

    Args:
        in_channels: Input channels.
        channels: Filters of the first block.
        extra: Further blocks.

    Shapes:
        (N, C, H, W) -> (N, channels · 2^extra).
    """

    def __init__(self, in_channels: int, channels: int, extra: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width, c = in_channels, channels
        for i in range(extra + 1):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(width, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            width, c = c, 2 * c
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Features (N, channels · 2^extra)."""
        return self.net(x)


class GRUText(nn.Module):
    """Token ids -> ``embedding`` -> GRU -> mean of the outputs over the non-pad positions.

    Args:
        vocab: Vocabulary size.
        dim: Token-embedding width.
        hidden: GRU width (the embedding z_text).
        pad_id: Padding id (its positions are left out of the mean; all-pad rows give zeros).

    Shapes:
        (N, L) int64 -> (N, hidden).
    """

    def __init__(self, vocab: int, dim: int, hidden: int, pad_id: int = 0) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab, dim, padding_idx=pad_id)
        self.gru = nn.GRU(dim, hidden, batch_first=True)

    def forward(self, tokens: Tensor) -> Tensor:
        """Masked mean of the GRU outputs (N, hidden)."""
        out, _ = self.gru(self.embedding(tokens))
        keep = (tokens != self.pad_id).unsqueeze(-1).to(out.dtype)
        return (out * keep).sum(1) / keep.sum(1).clamp_min(1.0)


class TensorFusion(nn.Module):
    """Tensor fusion: the flattened outer product of [1; z_1] ⊗ [1; z_2] ⊗ ... (Zadeh et al., EMNLP 2017).

    Shapes:
        a list of (N, d_m) -> (N, Π_m (d_m + 1)).
    """

    def forward(self, embeddings: list[Tensor]) -> Tensor:
        """The fused vector of every product of one coordinate (or the constant 1) per modality."""
        n = embeddings[0].shape[0]
        fused = torch.ones(n, 1, dtype=embeddings[0].dtype, device=embeddings[0].device)
        for z in embeddings:
            z1 = torch.cat([torch.ones_like(z[:, :1]), z], dim=1)
            fused = (fused[:, :, None] * z1[:, None, :]).reshape(n, -1)
        return fused


class MLP(nn.Module):
    """Linear -> ReLU -> dropout -> linear classification head.

    Shapes:
        (N, d_in) -> (N, classes).
    """

    def __init__(self, d_in: int, hidden: int, classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, classes)."""
        return self.net(x)


class MMDL(nn.Module):
    """MultiBench's multimodal model layout: per-modality ``encoders``, ``fuse``, ``head``.

    Args:
        encoders: One encoder per modality, in the order of ``forward``'s list.
        fuse: Fusion module taking the list of embeddings.
        head: Classification head on the fused embedding.
    """

    def __init__(self, encoders: list[nn.Module], fuse: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.fuse = fuse
        self.head = head

    def forward(self, inputs: list[Tensor]) -> Tensor:
        """Logits from one input tensor per modality (a list in the encoders' order)."""
        fused = self.fuse([enc(x) for enc, x in zip(self.encoders, inputs, strict=True)])
        if isinstance(fused, tuple):
            fused = fused[0]
        return self.head(fused)


def mmdigits_mmdl(width: int = 4, text_dim: int = 16, hidden: int = 64, classes: int = 10, vocab: int = 37,
                  pad_id: int = 0, modalities: Sequence[str] = ("image", "audio", "text")) -> MMDL:
    """The MM-Digits model of ``configs/multibench.yaml``: one encoder per name of ``modalities``, in that order.

    Image: LeNet(1, ``width``, 2) (8×8 -> ``4·width`` features); audio: LeNet(1, ``width``/2, 3) on the
    32×64 log-mel spectrogram (``4·width``); text: a GRU of width ``text_dim`` over ``text_dim``-wide
    token embeddings; tensor fusion; a ``hidden``-wide MLP head. ``modalities=("image", "text")`` is
    the two-encoder layout (LeNet image, GRU text) of MultiBench's own examples.

    Raises:
        ValueError: ``modalities`` is empty, repeats a name or names one other than image, audio, text.
    """
    known = ("image", "audio", "text")
    if not modalities or len(set(modalities)) != len(modalities) or any(m not in known for m in modalities):
        raise ValueError(f"modalities must be distinct names among {known}, got {list(modalities)}")
    d = 4 * width
    audio_out = max(width // 2, 1) * 8
    build = {"image": (lambda: LeNet(1, width, 2), d),
             "audio": (lambda: LeNet(1, max(width // 2, 1), 3), audio_out),
             "text": (lambda: GRUText(vocab, text_dim, text_dim, pad_id), text_dim)}
    encoders = [build[m][0]() for m in modalities]
    fused = 1
    for m in modalities:
        fused *= build[m][1] + 1
    return MMDL(encoders, TensorFusion(), MLP(fused, hidden, classes))


__all__ = ["MLP", "MMDL", "GRUText", "LeNet", "TensorFusion", "mmdigits_mmdl"]
