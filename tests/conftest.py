"""Shared fixtures: a tiny synthetic 3-modality dataset that trains in a second.

Session-wide, so each is built once per test run: ``toy_data`` (the bundle), ``toy_late`` (a
late-fusion model trained on it) and ``toy_batch`` (its whole test split as one batch). They are
shared by every test file: never change them in place (work on a ``copy.deepcopy``, or restore what
you change, as the mode-restoring tests do). ``toy`` is a fresh bundle per test.

The tiny MM-Digits build (a couple of seconds) is also made once per session: ``mmdigits_tiny``
(the arrays and meta of ``build_arrays(seed=0, size="tiny")``) and ``mmdigits_tiny_cache`` (a cache
folder holding it, as ``mr.datasets.load`` writes it; copy it before changing it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import mmrobust as mr
from mmrobust.attacks import EvalContext
from mmrobust.datasets.cache import cached_build
from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset, compute_stats
from mmrobust.datasets.mmdigits.loader import cache_path
from mmrobust.models.base import MultimodalModel
from mmrobust.spec import DatasetSpec, ModalitySpec

K = 4
#: torch's thread count before the session fixture below sets 1 (what a user's process runs with).
DEFAULT_THREADS = torch.get_num_threads()


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


def ctx(data: DatasetBundle, seed: int = 0) -> EvalContext:
    """An evaluation context with the training statistics of ``data`` and a generator seeded with ``seed``."""
    return EvalContext(stats=data.train.stats, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    # Tiny models on 2 shared cores: intra-op threading only adds contention (up to 10x slower).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def toy() -> DatasetBundle:
    return make_toy_bundle()


@pytest.fixture(scope="session")
def toy_data() -> DatasetBundle:
    return make_toy_bundle()


#: The encoder widths the session's toy models were designed with (the library defaults are narrower);
#: tests that rely on a trained toy model's behaviour pin them rather than follow the defaults.
TOY_ENCODERS = {"image": {"width": 32}, "audio": {"width": 16}}


@pytest.fixture(scope="session")
def toy_late(toy_data: DatasetBundle) -> MultimodalModel:
    model = mr.models.create("late", toy_data.spec, encoder_kwargs=TOY_ENCODERS)
    mr.train(model, toy_data, epochs=4, quiet=True)
    return model.eval()


@pytest.fixture(scope="session")
def toy_batch(toy_data: DatasetBundle) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return toy_data.test.batch(torch.arange(len(toy_data.test)))


@pytest.fixture
def spec() -> DatasetSpec:
    return toy_spec()


@pytest.fixture(scope="session")
def mmdigits_tiny() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from mmrobust.datasets.mmdigits import build_arrays

    return build_arrays(seed=0, size="tiny")


@pytest.fixture(scope="session")
def mmdigits_tiny_cache(tmp_path_factory: pytest.TempPathFactory, mmdigits_tiny: Any) -> Path:
    folder = tmp_path_factory.mktemp("mmdigits-cache")
    cached_build(cache_path(0, "tiny", "logmel", folder), lambda: mmdigits_tiny)
    return folder


def copy_of(folder: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A private copy of a fixture folder, for tests that change what is inside."""
    out = tmp_path_factory.mktemp(name) / folder.name
    shutil.copytree(folder, out)
    return out
