"""Per-modality encoders φ_m: raw modality tensor -> embedding z_m of shape (N, embed_dim).

One encoder per modality kind, chosen by :func:`create_encoder` from the
:class:`~mmrobust.spec.ModalitySpec`. Every encoder ends in a ReLU'd linear layer, so z_m are the
penultimate features that fusion layers (and the late-fusion per-modality heads) act on.
Text encoders expose :meth:`TextEncoder.embed` / :meth:`TextEncoder.forward_embedded` so attacks
can perturb token embeddings instead of (non-differentiable) token ids.

Default widths (image 16, audio 8 channels in the first layer) are sized for CPUs: on MM-Digits they
reach the accuracies of twice as wide encoders within about a point (unimodal image 80.2 %, audio
80.1 % on the test split) at a third of the convolution work, which is most of every training and
attack step (``BENCHMARKS.md``, the default run); pass ``encoder_kwargs={"audio": {"width": 16}}`` for more.

The 2-D convolutional encoders keep their weights and activations in the ``channels_last`` memory
layout: oneDNN's CPU kernels are native to it, so convolutions need no layout reorders and max
pooling takes its vectorised path (measured on the 2-core machine: the audio encoder's forward
1.9× faster, a training step of ``late`` 1.3×; ``BENCHMARKS.md``). The values are the same
computation; only the memory order of the tensors differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmrobust.errors import InputError
from mmrobust.registry import Registry
from mmrobust.spec import ModalitySpec
from mmrobust.utils.checks import check_int

ENCODERS: Registry[nn.Module] = Registry("encoder")


@ENCODERS.register("image")
class ImageEncoder(nn.Module):
    """Small CNN for images of shape (C, H, W).

    Args:
        spec: The image modality's spec.
        embed_dim: Output dimension.
        width: Channels of the first conv layer (the second has twice as many).
    """

    def __init__(self, spec: ModalitySpec, embed_dim: int = 64, width: int = 16) -> None:
        super().__init__()
        if len(spec.shape) != 3:
            raise InputError(f"image encoder needs shape (C, H, W), {spec.name!r} has {spec.shape}")
        c = spec.shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d((4, 4)),
            nn.Flatten(),
            nn.Linear(2 * width * 16, embed_dim),
            nn.ReLU(),
        ).to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, embed_dim)."""
        return self.net(x.contiguous(memory_format=torch.channels_last))


@ENCODERS.register("audio")
class AudioEncoder(nn.Module):
    """CNN for audio: log-mel spectrograms (1, n_mels, frames) or waveforms (1, samples).

    Args:
        spec: The audio modality's spec.
        embed_dim: Output dimension.
        width: Channels of the first conv layer.
    """

    def __init__(self, spec: ModalitySpec, embed_dim: int = 64, width: int = 8) -> None:
        super().__init__()
        if len(spec.shape) == 3:
            c = spec.shape[0]
            self.net = nn.Sequential(
                nn.Conv2d(c, width, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(2 * width, 4 * width, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveMaxPool2d((2, 4)),
                nn.Flatten(),
                nn.Linear(4 * width * 8, embed_dim),
                nn.ReLU(),
            ).to(memory_format=torch.channels_last)
        elif len(spec.shape) == 2:
            c = spec.shape[0]
            self.net = nn.Sequential(
                nn.Conv1d(c, width, 64, stride=16, padding=24),
                nn.ReLU(),
                nn.Conv1d(width, 2 * width, 8, stride=4, padding=2),
                nn.ReLU(),
                nn.Conv1d(2 * width, 4 * width, 8, stride=4, padding=2),
                nn.ReLU(),
                nn.AdaptiveMaxPool1d(8),
                nn.Flatten(),
                nn.Linear(4 * width * 8, embed_dim),
                nn.ReLU(),
            )
        else:
            raise InputError(
                f"audio encoder needs (1, n_mels, frames) or (1, samples), {spec.name!r} has {spec.shape}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, n_mels, frames) or (N, 1, samples) -> (N, embed_dim)."""
        return self.net(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


@ENCODERS.register("text")
class TextEncoder(nn.Module):
    """Character/word CNN over token ids (L,) with a masked max-pool over non-pad positions.

    Args:
        spec: The text modality's spec (needs ``vocab_size``; ``pad_id`` positions are masked).
        embed_dim: Output dimension.
        token_dim: Token embedding dimension.
        width: Conv channels.
    """

    def __init__(
        self, spec: ModalitySpec, embed_dim: int = 64, token_dim: int = 32, width: int = 64
    ) -> None:
        super().__init__()
        if len(spec.shape) != 1 or not spec.vocab_size:
            raise InputError(f"text encoder needs token ids of shape (L,) and a vocab_size ({spec.name!r})")
        self.pad_id = spec.pad_id
        self.embedding = nn.Embedding(int(spec.vocab_size), token_dim, padding_idx=spec.pad_id)
        self.conv = nn.Sequential(
            nn.Conv1d(token_dim, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.proj = nn.Sequential(nn.Linear(width, embed_dim), nn.ReLU())

    def embed(self, tokens: Tensor) -> Tensor:
        """Token ids (N, L) -> token embeddings (N, L, token_dim), the attackable surface."""
        return self.embedding(tokens.long())

    def mask(self, tokens: Tensor) -> Tensor:
        """Boolean (N, L): True at real (non-pad) positions."""
        if self.pad_id is None:
            return torch.ones_like(tokens, dtype=torch.bool)
        return tokens != self.pad_id

    def forward_embedded(self, emb: Tensor, mask: Tensor) -> Tensor:
        """Encode from token embeddings (N, L, token_dim) and a (N, L) real-position mask."""
        h = self.conv(emb.transpose(1, 2))  # (N, width, L)
        neg = torch.finfo(h.dtype).min
        h = h.masked_fill(~mask[:, None, :], neg)
        pooled = h.amax(dim=2)
        # An all-pad sequence (e.g. a zero-filled missing text) pools to zeros, not -inf.
        pooled = torch.where(mask.any(1, keepdim=True), pooled, torch.zeros_like(pooled))
        return self.proj(pooled)

    def forward(self, tokens: Tensor) -> Tensor:
        """(N, L) token ids -> (N, embed_dim)."""
        return self.forward_embedded(self.embed(tokens), self.mask(tokens))


@ENCODERS.register("features")
class FeatureEncoder(nn.Module):
    """MLP for generic feature vectors (d,).

    Args:
        spec: The modality's spec.
        embed_dim: Output dimension.
        hidden: Hidden width.
    """

    def __init__(self, spec: ModalitySpec, embed_dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(spec.numel, hidden),
            nn.ReLU(),
            nn.Linear(hidden, embed_dim),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, *shape) -> (N, embed_dim)."""
        return self.net(x)


def create_encoder(spec: ModalitySpec, embed_dim: int, **kwargs: Any) -> nn.Module:
    """Build the default encoder for ``spec.kind``."""
    check_int(embed_dim, "", "embed_dim")
    return ENCODERS.create(spec.kind, spec, embed_dim=embed_dim, **kwargs)
