"""Image modality of MM-Digits: degraded 8×8 handwritten digit scans.

The scans are scikit-learn's bundled ``load_digits`` set (1,797 real 8×8 scans with grey levels
0..16, no download). They are split, stratified by label, into disjoint train / val / test pools,
so a test image never shows a scan seen in training. Every sample draws one scan of the wanted
label from its split's pool, scales it to [0, 1] and degrades it (random contrast, a random
occlusion patch, additive Gaussian noise, clipping to [0, 1]) so that the image alone is clearly
imperfect. One scan may back several samples, each with its own degradation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: Fractions of the scans (per label) that go to the train / val / test pools.
SCAN_FRACTIONS: tuple[float, float, float] = (0.55, 0.15, 0.30)
#: Grey level of the raw scans that maps to 1.0.
SCAN_MAX: float = 16.0
#: Range of the random contrast factor multiplying the clean [0, 1] image (per sample).
CONTRAST_RANGE: tuple[float, float] = (0.55, 1.0)
#: Range of the random brightness offset added after the contrast factor (per sample).
BRIGHTNESS_RANGE: tuple[float, float] = (0.0, 0.2)
#: Side lengths (inclusive range, in pixels) of the square occlusion patch; one patch per sample.
OCCLUSION_SIZE_RANGE: tuple[int, int] = (2, 3)
#: Standard deviation of the additive Gaussian pixel noise (on the [0, 1] scale).
NOISE_STD: float = 0.2

IMAGE_SHAPE: tuple[int, int, int] = (1, 8, 8)


def load_scans() -> tuple[np.ndarray, np.ndarray]:
    """Load scikit-learn's bundled handwritten digit scans.

    Returns:
        ``(scans, labels)``: scans of shape ``(1797, 8, 8)`` (float64, grey levels 0..16) and
        their labels of shape ``(1797,)`` (int64, 0..9).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scans = np.asarray(bunch.images, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return scans, labels


def split_scans(
    labels: np.ndarray,
    rng: np.random.Generator,
    splits: Sequence[str] = ("train", "val", "test"),
    fractions: Sequence[float] = SCAN_FRACTIONS,
) -> dict[str, np.ndarray]:
    """Split scan indices into disjoint pools, stratified by label.

    Args:
        labels: Label of every scan, shape ``(n,)``.
        rng: Generator that shuffles the scans of each label.
        splits: Names of the pools, in order.
        fractions: Share of each label's scans that goes to each pool (same order as
            ``splits``); the last pool takes the remainder.

    Returns:
        ``{split: sorted scan indices}``; the pools are disjoint and cover every scan.
    """
    if len(splits) != len(fractions):
        raise ValueError("splits and fractions must have the same length")
    parts: dict[str, list[np.ndarray]] = {s: [] for s in splits}
    cum = np.cumsum(np.asarray(fractions, dtype=np.float64))
    cum = cum / cum[-1]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(cum * len(idx)).astype(int)
        start = 0
        for s, stop in zip(splits, cuts, strict=True):
            parts[s].append(idx[start:stop])
            start = stop
    return {s: np.sort(np.concatenate(parts[s])).astype(np.int64) for s in splits}


def degrade(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply the per-sample degradation to clean images in [0, 1].

    Args:
        clean: Clean images, shape ``(n, 8, 8)``, values in [0, 1].
        rng: Generator for contrast, brightness, occlusion and noise.

    Returns:
        Degraded images, shape ``(n, 8, 8)``, float64 in [0, 1].
    """
    n, h, w = clean.shape
    contrast = rng.uniform(*CONTRAST_RANGE, size=(n, 1, 1))
    brightness = rng.uniform(*BRIGHTNESS_RANGE, size=(n, 1, 1))
    out = clean * contrast + brightness
    lo, hi = OCCLUSION_SIZE_RANGE
    sizes = rng.integers(lo, hi + 1, size=n)
    fills = rng.uniform(0.0, 1.0, size=n)
    rows = rng.integers(0, h - sizes + 1)
    cols = rng.integers(0, w - sizes + 1)
    for i in range(n):
        r, c, s = rows[i], cols[i], sizes[i]
        out[i, r : r + s, c : c + s] = fills[i]
    out = out + rng.normal(0.0, NOISE_STD, size=out.shape)
    return np.clip(out, 0.0, 1.0)


def make_images(
    scans: np.ndarray,
    scan_labels: np.ndarray,
    pool: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw one degraded image per wanted label from a split's scan pool.

    Args:
        scans: All scans, shape ``(n_scans, 8, 8)``, grey levels 0..16.
        scan_labels: Label of every scan, shape ``(n_scans,)``.
        pool: Indices of the scans this split may use.
        labels: Wanted label of every sample, shape ``(n,)``.
        rng: Generator for the scan choice and the degradation.

    Returns:
        Images of shape ``(n, 1, 8, 8)``, float32 in [0, 1].
    """
    by_label: Mapping[int, np.ndarray] = {int(c): pool[scan_labels[pool] == c] for c in np.unique(labels)}
    chosen = np.empty(len(labels), dtype=np.int64)
    for c in sorted(by_label):
        where = np.flatnonzero(labels == c)
        candidates = by_label[c]
        if len(candidates) == 0:
            raise ValueError(f"the scan pool has no image of label {c}")
        chosen[where] = candidates[rng.integers(0, len(candidates), size=len(where))]
    clean = np.clip(scans[chosen] / SCAN_MAX, 0.0, 1.0)
    out = degrade(clean, rng)
    return out[:, None, :, :].astype(np.float32)
