"""Shared fixtures: a tiny synthetic 3-modality dataset that trains in a second."""

from __future__ import annotations

import pytest
import torch

from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset, compute_stats
from mmrobust.spec import DatasetSpec, ModalitySpec

K = 4


def toy_spec() -> DatasetSpec:
    return DatasetSpec(
        modalities=(
            ModalitySpec("image", "image", (1, 8, 8), low=0.0, high=1.0),
            ModalitySpec("audio", "audio", (1, 8, 16), low=0.0, high=1.0),
            ModalitySpec("text", "text", (6,), dtype="int64", vocab_size=12, pad_id=0, perturbable=False),
        ),
        num_classes=K,
        class_names=tuple(str(i) for i in range(K)),
        name="toy",
    )


def toy_split(n: int, seed: int, spec: DatasetSpec) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    y = y[torch.randperm(n, generator=g)]
    img = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    img[torch.arange(n), 0, 2 * y, :] += 0.6  # a bright row per class
    aud = torch.rand(n, 1, 8, 16, generator=g) * 0.3
    aud[torch.arange(n), 0, :, 4 * y] += 0.6  # a bright column per class
    txt = torch.randint(1, 12, (n, 6), generator=g)
    txt[:, 0] = y + 2
    txt[:, 5] = 0  # padding
    # make every modality imperfect: corrupt a third of each at random
    for t, scale in ((img, 1.0), (aud, 1.0)):
        bad = torch.rand(n, generator=g) < 0.3
        t[bad] = torch.rand(int(bad.sum()), *t.shape[1:], generator=g) * scale
    bad = torch.rand(n, generator=g) < 0.3
    txt[bad, 0] = torch.randint(2, 2 + K, (int(bad.sum()),), generator=g)
    return {"image": img.clamp(0, 1), "audio": aud.clamp(0, 1), "text": txt}, y


def make_toy_bundle(n_train: int = 256, n_val: int = 64, n_test: int = 96) -> DatasetBundle:
    spec = toy_spec()
    xtr, ytr = toy_split(n_train, 0, spec)
    stats = compute_stats(xtr, spec)
    sets = {"train": MultimodalDataset(xtr, ytr, spec, stats=stats, name="train")}
    for i, (s, n) in enumerate((("val", n_val), ("test", n_test))):
        x, y = toy_split(n, i + 1, spec)
        sets[s] = MultimodalDataset(x, y, spec, stats=stats, name=s)
    return DatasetBundle(sets["train"], sets["val"], sets["test"], spec, {"name": "toy", "seed": 0})


@pytest.fixture
def toy() -> DatasetBundle:
    return make_toy_bundle()


@pytest.fixture
def spec() -> DatasetSpec:
    return toy_spec()
