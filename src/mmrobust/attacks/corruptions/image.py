"""Image corruptions: Gaussian noise, blur, occlusion patch, contrast, brightness, salt-and-pepper.

The kinds and their severity scales follow the spirit of ImageNet-C (Hendrycks & Dietterich,
*Benchmarking Neural Network Robustness to Common Corruptions and Perturbations*, ICLR 2019,
arXiv 1903.12261), rescaled to the modality's valid range [low, high] and to small images
(MM-Digits images are 8×8). Images are (N, C, H, W) (any (N, ..., H, W) works: the last two axes
are the spatial ones); every kind needs a bounded valid range.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mmrobust.attacks.corruptions.base import (
    CORRUPTIONS,
    CorruptionKind,
    bounded,
    clip,
    per_sample,
    rand,
    randn,
    value_range,
)
from mmrobust.spec import ModalitySpec


class ImageKind(CorruptionKind):
    """Base of the image kinds: needs at least two spatial axes and a bounded valid range."""

    modality: ClassVar[str] = "image"

    def supports(self, spec: ModalitySpec) -> str | None:
        """Refuse non-image specs, fewer than 2 axes, or an unbounded range."""
        reason = super().supports(spec)
        if reason is None and len(spec.shape) < 2:
            reason = f"{self.name!r} needs an image of shape (C, H, W), got {spec.shape} for {spec.name!r}"
        if reason is None and not bounded(spec):
            reason = f"{self.name!r} needs a bounded valid range [low, high] for {spec.name!r}"
        return reason


@CORRUPTIONS.register()
class GaussianNoise(ImageKind):
    """Additive Gaussian noise: x' = clip(x + σ·(high − low)·z), z ~ N(0, I) per coordinate."""

    name: ClassVar[str] = "gaussian_noise"
    levels: ClassVar[tuple[float, ...]] = (0.08, 0.12, 0.18, 0.26, 0.38)
    unit: ClassVar[str] = "σ as a fraction of the valid range"
    summary: ClassVar[str] = "i.i.d. Gaussian noise on every pixel"

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        z = randn(x.shape, generator, x)
        return clip(x + self.level(severity) * value_range(spec) * z, spec).to(x.dtype)


@CORRUPTIONS.register()
class Blur(ImageKind):
    """Gaussian blur of standard deviation σ pixels (separable kernel of radius ⌈3σ⌉, edges replicated).

    A blurred pixel is a convex combination of pixels, so the output stays in the valid range. Not
    random.
    """

    name: ClassVar[str] = "blur"
    levels: ClassVar[tuple[float, ...]] = (0.5, 0.75, 1.0, 1.5, 2.0)
    unit: ClassVar[str] = "σ in pixels"
    summary: ClassVar[str] = "Gaussian blur"
    random: ClassVar[bool] = False

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        sigma = self.level(severity)
        r = math.ceil(3 * sigma)
        t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
        k = torch.exp(-(t**2) / (2 * sigma**2))
        k = k / k.sum()
        h, w = x.shape[-2:]
        img = x.reshape(-1, 1, h, w).float()
        img = F.conv2d(F.pad(img, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        img = F.conv2d(F.pad(img, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
        return clip(img.reshape(x.shape), spec).to(x.dtype)


@CORRUPTIONS.register()
class Occlusion(ImageKind):
    """A rectangular patch of one uniform random value in [low, high] (all channels).

    The patch covers ``ceil(f·H) × ceil(f·W)`` pixels (sizes made strictly increasing over the
    severities while the image allows), centred on a uniformly random pixel and clipped at the
    border, so a sample's patches are nested across severities. Draws per sample: centre row,
    centre column, fill value.
    """

    name: ClassVar[str] = "occlusion"
    levels: ClassVar[tuple[float, ...]] = (0.125, 0.25, 0.375, 0.5, 0.625)
    unit: ClassVar[str] = "patch side as a fraction of the image side"
    summary: ClassVar[str] = "one constant-valued rectangular patch"

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        n, (h, w) = x.shape[0], x.shape[-2:]
        u = rand((3, n), generator, x)
        rows = self.band_mask(u[0], h, severity)  # (N, H)
        cols = self.band_mask(u[1], w, severity)  # (N, W)
        mask = rows[:, :, None] & cols[:, None, :]  # (N, H, W)
        mask = mask.view(n, *([1] * (x.dim() - 3)), h, w)
        assert spec.low is not None
        fill = per_sample(spec.low + u[2] * value_range(spec), x)
        return clip(torch.where(mask, fill.to(x.dtype), x), spec)


@CORRUPTIONS.register()
class Contrast(ImageKind):
    """Contrast reduction: x' = μ + c·(x − μ), μ the sample's mean over all its coordinates. Not random."""

    name: ClassVar[str] = "contrast"
    levels: ClassVar[tuple[float, ...]] = (0.6, 0.45, 0.3, 0.2, 0.1)
    unit: ClassVar[str] = "contrast factor c (1 = unchanged)"
    summary: ClassVar[str] = "contrast shrunk towards the image mean"
    random: ClassVar[bool] = False

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        mu = per_sample(x.flatten(1).mean(1), x)
        return clip(mu + self.level(severity) * (x - mu), spec).to(x.dtype)


@CORRUPTIONS.register()
class Brightness(ImageKind):
    """Brightness increase: x' = clip(x + b·(high − low)). Not random."""

    name: ClassVar[str] = "brightness"
    levels: ClassVar[tuple[float, ...]] = (0.1, 0.2, 0.3, 0.4, 0.5)
    unit: ClassVar[str] = "shift b as a fraction of the valid range"
    summary: ClassVar[str] = "every pixel brighter by a constant, saturating at high"
    random: ClassVar[bool] = False

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        return clip(x + self.level(severity) * value_range(spec), spec).to(x.dtype)


@CORRUPTIONS.register()
class SaltPepper(ImageKind):
    """Impulse noise: a fraction p of pixel positions set to ``high`` or ``low`` (even odds, all channels).

    Draws per pixel position: one uniform for "hit" (hit iff u < p, so hits are nested across
    severities), one for salt vs pepper.
    """

    name: ClassVar[str] = "salt_pepper"
    levels: ClassVar[tuple[float, ...]] = (0.03, 0.06, 0.09, 0.17, 0.27)
    unit: ClassVar[str] = "fraction p of pixels hit"
    summary: ClassVar[str] = "pixels replaced by white or black dots"

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        pos = (x.shape[0], 1, *x.shape[2:]) if x.dim() >= 4 else tuple(x.shape)
        u = rand((2, *pos), generator, x)
        hit = u[0] < self.level(severity)
        assert spec.low is not None and spec.high is not None
        value = torch.where(u[1] < 0.5, spec.high, spec.low).to(x.dtype)
        return torch.where(hit, value, x)
