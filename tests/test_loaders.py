"""Real-data loaders on tiny files written in each format: AV-MNIST (.npy), MOSI/MOSEI pickles, .npz, HDF5.

Every loader: shapes, spec kinds and ranges, split sizes, labels, training-split statistics, the
seeded split's determinism, and a clear InputError/CacheError for each kind of bad input.
"""

from __future__ import annotations

import json
import pickle
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import mmrobust as mr
from mmrobust.datasets import DATASETS, compute_stats
from mmrobust.datasets.loaders import load_affect, load_arrays, load_avmnist
from mmrobust.datasets.loaders._common import stratified_split
from mmrobust.errors import CacheError, InputError, MissingDependencyError, UnknownNameError

N_TRAIN, N_TEST = 60, 20


def check_bundle(data: mr.datasets.DatasetBundle) -> None:
    """Invariants every loader's bundle satisfies."""
    stats = compute_stats(data.train.inputs, data.spec)
    for s in (data.train, data.val, data.test):
        assert s.spec == data.spec
        for m in data.spec.names:  # every split carries the training statistics
            assert s.stats[m] is data.train.stats[m]
        for m in data.spec:
            assert tuple(s.inputs[m.name].shape[1:]) == m.shape
            assert s.inputs[m.name].dtype == (torch.int64 if m.is_tokens else torch.float32)
            if len(s) and m.low is not None:
                assert float(s.inputs[m.name].min()) >= m.low and float(s.inputs[m.name].max()) <= m.high
    for m in data.spec:
        if not m.is_tokens:
            torch.testing.assert_close(data.train.stats[m.name].mean, stats[m.name].mean)
    assert data.meta["sizes"] == {"train": len(data.train), "val": len(data.val), "test": len(data.test)}


# ============================================================================ AV-MNIST (.npy folder)
def write_avmnist(root: Path, *, image_shape=(784,), scale=255.0, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "image/train_data.npy": rng.integers(0, 256, (N_TRAIN, *image_shape)).astype(np.float32) * scale / 255,
        "image/test_data.npy": rng.integers(0, 256, (N_TEST, *image_shape)).astype(np.float32) * scale / 255,
        "audio/train_data.npy": rng.integers(0, 256, (N_TRAIN, 112, 112)).astype(np.float32) * scale / 255,
        "audio/test_data.npy": rng.integers(0, 256, (N_TEST, 112, 112)).astype(np.float32) * scale / 255,
        "train_labels.npy": np.arange(N_TRAIN) % 10,
        "test_labels.npy": rng.integers(0, 10, N_TEST),
    }
    for rel, a in arrays.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, a)
    return arrays


@pytest.fixture
def avmnist(tmp_path):
    root = tmp_path / "avmnist"
    return root, write_avmnist(root)


def test_avmnist_loads_multibench_layout(avmnist):
    root, raw = avmnist
    data = mr.datasets.load("avmnist", root=root)
    check_bundle(data)
    assert data.spec.names == ["image", "audio"] and data.spec.num_classes == 10
    assert [m.kind for m in data.spec] == ["image", "audio"]
    assert data.spec["image"].shape == (1, 28, 28) and data.spec["audio"].shape == (1, 112, 112)
    assert (data.spec["image"].low, data.spec["image"].high) == (0.0, 1.0)
    # MultiBench's split sizes: 1/12 of the training file held out (5000 of 60000)
    assert (len(data.train), len(data.val), len(data.test)) == (55, 5, 20)
    # values: the file's grey levels / 255 with a channel axis, labels unchanged
    expected = torch.from_numpy(raw["image/test_data.npy"].reshape(N_TEST, 1, 28, 28) / 255).float()
    torch.testing.assert_close(data.test.inputs["image"], expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(data.test.labels, torch.from_numpy(raw["test_labels.npy"]).long())
    # train + val are exactly the training file, each sample once, labels following their samples
    audio = np.concatenate([data.train.inputs["audio"].numpy(), data.val.inputs["audio"].numpy()])[:, 0]
    order = np.argsort(np.concatenate([data.train.labels, data.val.labels]), kind="stable")
    ref = raw["audio/train_data.npy"] / 255
    ref_order = np.argsort(raw["train_labels.npy"], kind="stable")
    np.testing.assert_allclose(np.sort(audio[order].reshape(N_TRAIN, -1).sum(1)),
                               np.sort(ref[ref_order].reshape(N_TRAIN, -1).sum(1)), rtol=1e-5)
    # stratified: the 5 validation samples are 5 different digits
    assert len(set(data.val.labels.tolist())) == 5


def test_avmnist_seeded_split_is_deterministic_and_tail_matches_multibench(avmnist):
    root, raw = avmnist
    a, b = load_avmnist(root, seed=3), load_avmnist(root, seed=3)
    assert torch.equal(a.val.inputs["image"], b.val.inputs["image"]) and torch.equal(a.val.labels, b.val.labels)
    c = load_avmnist(root, seed=4)
    assert not torch.equal(a.val.inputs["image"], c.val.inputs["image"])
    tail = load_avmnist(root, val_split="tail")
    torch.testing.assert_close(tail.val.labels, torch.from_numpy(raw["train_labels.npy"][-5:]).long())
    torch.testing.assert_close(tail.train.inputs["audio"][:, 0],
                               torch.from_numpy(raw["audio/train_data.npy"][:-5] / 255).float(), rtol=0, atol=1e-7)
    assert len(load_avmnist(root, val_fraction=0.25).val) == 15


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28)])
def test_avmnist_accepts_other_image_layouts(tmp_path, avmnist, shape):
    root2 = tmp_path / "other"
    write_avmnist(root2, image_shape=shape)
    a, b = load_avmnist(avmnist[0]), load_avmnist(root2)
    assert torch.equal(a.train.inputs["image"], b.train.inputs["image"])


def test_avmnist_normalisation_options(tmp_path, avmnist):
    root, raw = avmnist
    keep = load_avmnist(root, normalize="none")
    lo = min(raw["image/train_data.npy"].min(), raw["image/test_data.npy"].min())
    hi = max(raw["image/train_data.npy"].max(), raw["image/test_data.npy"].max())
    assert (keep.spec["image"].low, keep.spec["image"].high) == (lo, hi) and hi > 1
    torch.testing.assert_close(keep.test.inputs["image"].flatten(1), torch.from_numpy(raw["image/test_data.npy"]))
    # files already in [0, 1]: "auto" keeps them, "255" divides anyway
    unit = tmp_path / "unit"
    write_avmnist(unit, scale=1.0)
    auto = load_avmnist(unit)
    assert auto.meta["scale"] == {"image": 1.0, "audio": 1.0}
    torch.testing.assert_close(auto.test.inputs["image"], load_avmnist(root).test.inputs["image"], rtol=0, atol=1e-6)
    forced = load_avmnist(unit, normalize="255")
    assert float(forced.train.inputs["image"].max()) <= 1 / 255 + 1e-7
    lim = load_avmnist(root, limit=24)
    assert len(lim.train) + len(lim.val) == 24 and len(lim.test) == 20


def _rewrite(root: Path, rel: str, a) -> None:
    np.save(root / rel, a)


@pytest.mark.parametrize(
    "rel", ["image/train_data.npy", "image/test_data.npy", "audio/train_data.npy", "audio/test_data.npy",
            "train_labels.npy", "test_labels.npy"],
)
def test_avmnist_missing_file_is_named(avmnist, rel):
    root, _ = avmnist
    (root / rel).unlink()
    with pytest.raises(InputError, match=rel.replace(".", r"\.")):
        load_avmnist(root)


def test_avmnist_bad_inputs(tmp_path, avmnist):
    root, raw = avmnist
    with pytest.raises(InputError, match="does not exist"):
        load_avmnist(tmp_path / "nowhere")
    with pytest.raises(InputError, match="not a folder"):
        load_avmnist(root / "train_labels.npy")
    for kw, msg in [({"normalize": "x"}, "normalize"), ({"val_split": "x"}, "val_split"),
                    ({"val_fraction": 1.5}, "val_fraction"), ({"limit": 0}, "limit"), ({"seed": -1}, "seed")]:
        with pytest.raises(InputError, match=msg):
            load_avmnist(root, **kw)
    # wrong shape
    _rewrite(root, "image/train_data.npy", np.zeros((N_TRAIN, 100), np.float32))
    with pytest.raises(InputError, match=r"image/train_data\.npy.*shape"):
        load_avmnist(root)
    _rewrite(root, "image/train_data.npy", raw["image/train_data.npy"])
    # label count mismatch
    _rewrite(root, "test_labels.npy", np.arange(N_TEST - 1) % 10)
    with pytest.raises(InputError, match=r"19 labels but audio/test_data\.npy has 20|19 labels but image"):
        load_avmnist(root)
    _rewrite(root, "test_labels.npy", raw["test_labels.npy"])
    # NaN in the audio
    bad = raw["audio/test_data.npy"].copy()
    bad[3, 5, 5] = np.nan
    _rewrite(root, "audio/test_data.npy", bad)
    with pytest.raises(InputError, match=r"audio/test_data\.npy: 1 sample\(s\) contain NaN"):
        load_avmnist(root)
    # values outside [0, 255]
    bad = raw["audio/test_data.npy"].copy()
    bad[0, 0, 0] = 300.0
    _rewrite(root, "audio/test_data.npy", bad)
    with pytest.raises(InputError, match=r"outside \[0, 255\]"):
        load_avmnist(root)
    _rewrite(root, "audio/test_data.npy", raw["audio/test_data.npy"])
    # labels that are not digits
    _rewrite(root, "train_labels.npy", np.arange(N_TRAIN) % 11)
    with pytest.raises(InputError, match=r"0\.\.9"):
        load_avmnist(root)
    _rewrite(root, "train_labels.npy", np.arange(N_TRAIN) % 10 + 0.5)
    with pytest.raises(InputError, match="integer class ids"):
        load_avmnist(root)
    # a pickled object array is refused; a truncated file is a CacheError
    np.save(root / "train_labels.npy", np.array([{"a": 1}] * N_TRAIN, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="Python objects"):
        load_avmnist(root)
    _rewrite(root, "train_labels.npy", raw["train_labels.npy"])
    blob = (root / "audio/train_data.npy").read_bytes()
    (root / "audio/train_data.npy").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CacheError, match=r"audio/train_data\.npy"):
        load_avmnist(root)


# ============================================================================ MOSI / MOSEI pickles
T, DIMS = 6, {"vision": 3, "audio": 4, "text": 5}


def affect_split(n: int, rng: np.random.Generator, scores=None) -> dict[str, np.ndarray]:
    split = {m: rng.normal(size=(n, T, d)) for m, d in DIMS.items()}
    for m in DIMS:  # front padding: the first two steps of every sample are zero
        split[m][:, :2] = 0.0
    score = rng.uniform(-3, 3, n) if scores is None else np.asarray(scores, float)
    split["labels"] = score.reshape(n, 1, 1)
    split["id"] = np.arange(n)
    return split


@pytest.fixture
def affect(tmp_path):
    rng = np.random.default_rng(0)
    data = {"train": affect_split(30, rng), "valid": affect_split(10, rng), "test": affect_split(12, rng)}
    data["train"]["text"][4] = 0.0  # an empty text: dropped as MultiBench's drop_entry does
    data["train"]["audio"][1, 3, 0] = -np.inf  # what MultiBench sets to 0
    data["train"]["vision"][2, 4, 1] = np.nan
    data["test"]["labels"][5] = 0.0
    path = tmp_path / "mosi.pkl"
    path.write_bytes(pickle.dumps(data))
    return path, data


def test_affect_loads_multibench_pickle(affect):
    path, raw = affect
    data = mr.datasets.load("mosi", path=path)
    check_bundle(data)
    assert data.spec.name == "mosi" and data.spec.names == ["vision", "audio", "text"]
    for m in data.spec:
        assert m.kind == "features" and m.shape == (T, DIMS[m.name]) and m.low is None and m.high is None
    assert (len(data.train), len(data.val), len(data.test)) == (29, 10, 12)
    assert data.meta["dropped_empty_text"] == {"train": 1, "val": 0, "test": 0}
    assert data.meta["sanitized"] == {"vision": 1, "audio": 1, "text": 0}
    keep = np.delete(np.arange(30), 4)
    # non-finite values became 0, everything else is the file's value
    ref = raw["train"]["audio"][keep].copy()
    ref[np.isinf(ref)] = 0.0
    torch.testing.assert_close(data.train.inputs["audio"], torch.from_numpy(ref).float())
    assert float(data.train.inputs["vision"][2, 4, 1]) == 0.0  # sample 2 keeps index 2 (the dropped one is 4)
    # binary labels: positive (score > 0) vs the rest, the score-0 test sample is negative
    torch.testing.assert_close(data.train.labels, torch.from_numpy(raw["train"]["labels"][keep, 0, 0] > 0).long())
    assert int(data.test.labels[5]) == 0
    assert data.spec.class_names == ("negative", "positive")
    assert mr.datasets.load("mosei", path=path).spec.name == "mosei"


def test_affect_label_conventions(tmp_path):
    rng = np.random.default_rng(1)
    scores = [-3.4, -2.5, -0.6, 0.0, 0.4, 0.5, 1.5, 2.6, 3.8]
    expected = [0, 1, 2, 3, 3, 3, 5, 6, 6]  # round (halves to even), clip to [-3, 3], shift by 3
    data = {s: affect_split(9, rng, scores) for s in ("train", "valid", "test")}
    path = tmp_path / "scores.pkl"
    path.write_bytes(pickle.dumps(data))
    seven = load_affect(path, labels="7class")
    assert seven.train.labels.tolist() == expected and seven.spec.num_classes == 7
    assert seven.spec.class_names == ("-3", "-2", "-1", "0", "+1", "+2", "+3")
    nonzero = load_affect(path, labels="binary_nonzero")
    assert nonzero.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert nonzero.meta["dropped_zero_score"]["train"] == 1
    # several entries per sample (e.g. MOSEI sentiment + emotions): the first one is the sentiment
    for s in data.values():
        s["labels"] = np.concatenate([s["labels"], np.full((9, 1, 6), -1.0)], axis=2)
    path.write_bytes(pickle.dumps(data))
    assert load_affect(path, labels="7class").test.labels.tolist() == expected


def test_affect_options(affect):
    path, raw = affect
    sub = load_affect(path, modalities=["audio", "text"], seq_len=4)
    assert sub.spec.names == ["audio", "text"] and sub.spec["text"].shape == (4, DIMS["text"])
    torch.testing.assert_close(sub.test.inputs["text"], torch.from_numpy(raw["test"]["text"][:, -4:]).float())
    z = load_affect(path, z_norm=True)
    x = z.test.inputs["vision"].double()
    assert float(x[:, :2].abs().max()) == 0.0  # padded steps stay 0
    torch.testing.assert_close(x[:, 2:].mean(1), torch.zeros(12, DIMS["vision"], dtype=torch.double), atol=1e-6, rtol=0)
    torch.testing.assert_close(x[:, 2:].std(1, unbiased=False), torch.ones(12, DIMS["vision"], dtype=torch.double),
                               atol=1e-5, rtol=0)
    keep_all = load_affect(path, drop_empty_text=False)
    assert len(keep_all.train) == 30
    with pytest.raises(InputError, match=r"\['train'\]\['vision'\]: 1 sample\(s\) contain NaN"):
        load_affect(path, sanitize=False)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_affect_restricted_unpickler_reads_numpy_pickles(affect, protocol):
    path, raw = affect
    path.write_bytes(pickle.dumps(raw, protocol=protocol))
    assert len(load_affect(path).test) == 12


def test_affect_refuses_foreign_objects_unless_trusted(affect):
    path, raw = affect
    raw["train"]["id"] = [Fraction(1, 3)] * 30
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(InputError, match=r"fractions\.Fraction.*trusted=True"):
        load_affect(path)
    assert len(load_affect(path, trusted=True).train) == 29


def test_affect_bad_inputs(tmp_path, affect):
    path, raw = affect

    def write(obj):
        path.write_bytes(pickle.dumps(obj))

    with pytest.raises(InputError, match="does not exist"):
        load_affect(tmp_path / "missing.pkl")
    with pytest.raises(InputError, match="unknown key 'speech'"):
        load_affect(path, modalities=["vision", "speech"])
    for kw, msg in [({"labels": "3class"}, "labels must be"), ({"seq_len": 0}, "seq_len"),
                    ({"modalities": "text"}, "modalities"), ({"sanitize": 1}, "sanitize")]:
        with pytest.raises(InputError, match=msg):
            load_affect(path, **kw)
    write([1, 2])
    with pytest.raises(InputError, match="expected a dict"):
        load_affect(path)
    write({"train": raw["train"], "test": raw["test"]})
    with pytest.raises(InputError, match="no 'valid' split"):
        load_affect(path)
    # "val" is accepted for "valid"
    write({"train": raw["train"], "val": raw["valid"], "test": raw["test"]})
    assert len(load_affect(path).val) == 10
    bad = {**raw, "test": {**raw["test"], "labels": raw["test"]["labels"][:-1]}}
    write(bad)
    with pytest.raises(InputError, match=r"\['test'\]\['labels'\]: 11 labels for 12 samples"):
        load_affect(path)
    bad = {**raw, "test": {**raw["test"], "audio": raw["test"]["audio"][:-2]}}
    write(bad)
    with pytest.raises(InputError, match="'vision' has 12 samples but 'audio' has 10"):
        load_affect(path)
    bad = {**raw, "valid": {**raw["valid"], "text": raw["valid"]["text"][:, :, :2]}}
    write(bad)
    with pytest.raises(InputError, match=r"per-sample shape \(6, 2\) differs"):
        load_affect(path)
    labels = raw["valid"]["labels"].copy()
    labels[0] = np.nan
    write({**raw, "valid": {**raw["valid"], "labels": labels}})
    with pytest.raises(InputError, match=r"label\(s\) are NaN"):
        load_affect(path)
    write(raw)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(CacheError, match=r"mosi\.pkl"):
        load_affect(path)
    path.write_text("not a pickle at all")
    with pytest.raises(CacheError, match=r"mosi\.pkl"):
        load_affect(path)


# ============================================================================ .npz / HDF5
def flat_arrays(n: int = 90, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "photo": rng.random((n, 3, 4, 4)).astype(np.float32),  # 3 axes -> image
        "tokens": rng.integers(0, 7, (n, 5)),  # integer, 1 axis -> text
        "sensor": rng.normal(size=(n, 6)).astype(np.float64),  # -> features
        "labels": np.arange(n) % 3,
    }


def test_npz_flat_seeded_split_with_inferred_kinds(tmp_path):
    arrays = flat_arrays()
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    data = mr.datasets.load("npz", path=path)
    check_bundle(data)
    kinds = {m.name: m.kind for m in data.spec}
    assert kinds == {"photo": "image", "tokens": "text", "sensor": "features"}
    assert data.meta["inferred"] == ["photo", "tokens", "sensor"] and data.meta["layout"] == "seeded"
    assert (data.spec["photo"].low, data.spec["photo"].high) == (float(arrays["photo"].min()),
                                                                 float(arrays["photo"].max()))
    assert data.spec["sensor"].low is None and data.spec["tokens"].vocab_size == 7
    assert data.spec["tokens"].pad_id is None and not data.spec["tokens"].perturbable
    assert data.spec.num_classes == 3 and data.spec.name == "data"
    # sizes: val 10 %, test 20 %, stratified (3 balanced classes -> 3/3/3 and 6/6/6)
    assert (len(data.train), len(data.val), len(data.test)) == (63, 9, 18)
    assert np.bincount(data.val.labels.numpy()).tolist() == [3, 3, 3]
    assert np.bincount(data.test.labels.numpy()).tolist() == [6, 6, 6]
    # each sample lands in exactly one split, with its own label
    sensor = torch.cat([data.train.inputs["sensor"], data.val.inputs["sensor"], data.test.inputs["sensor"]])
    lab = torch.cat([data.train.labels, data.val.labels, data.test.labels])
    ref = torch.from_numpy(arrays["sensor"]).float()
    match = (sensor[:, None] == ref[None]).all(-1)
    assert match.sum(1).eq(1).all() and match.sum(0).eq(1).all()
    assert torch.equal(lab, torch.from_numpy(arrays["labels"][match.float().argmax(1).numpy()]))
    # deterministic from the seed
    again, other = load_arrays(path), load_arrays(path, seed=1)
    assert torch.equal(again.test.inputs["sensor"], data.test.inputs["sensor"])
    assert not torch.equal(other.test.inputs["sensor"], data.test.inputs["sensor"])


def test_stratified_split_sizes_and_classes():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    parts = stratified_split(y, [0.1, 0.3], seed=7)
    assert [p.size for p in parts] == [10, 30, 60]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(100))
    for p, f in zip(parts, (0.1, 0.3, 0.6), strict=True):  # each class within one sample of its share
        assert (np.abs(np.bincount(y[p], minlength=4) - f * np.bincount(y)) <= 1).all()
    assert all(np.array_equal(a, b) for a, b in zip(parts, stratified_split(y, [0.1, 0.3], seed=7), strict=True))


@pytest.mark.parametrize("codes", [["train", "val", "test"], [0, 1, 2], [b"train", b"valid", b"test"]])
def test_npz_split_array(tmp_path, codes):
    arrays = flat_arrays(30)
    which = np.arange(30) % 3
    arrays["split"] = np.array([codes[i] for i in which])
    path = tmp_path / "split.npz"
    np.savez(path, **arrays)
    data = load_arrays(path)
    assert data.meta["layout"] == "split-array" and "split" not in data.spec.names
    for i, s in enumerate((data.train, data.val, data.test)):
        torch.testing.assert_close(s.inputs["sensor"], torch.from_numpy(arrays["sensor"][which == i]).float())
        assert s.labels.tolist() == arrays["labels"][which == i].tolist()
    # no validation entries: the validation split is carved from train
    arrays["split"] = np.where(which == 1, 0, which)
    np.savez(path, **arrays)
    carved = load_arrays(path, val_fraction=0.25)
    assert (len(carved.train), len(carved.val), len(carved.test)) == (15, 5, 10)


def per_split_arrays(val: bool = True) -> dict[str, np.ndarray]:
    out = {}
    for s, n in (("train", 40), ("val", 10), ("test", 12)):
        if s == "val" and not val:
            continue
        a = flat_arrays(n, seed=n)
        for k, v in a.items():
            out[f"{s}/{k}"] = v
    return out


def test_npz_per_split_layout_and_overrides(tmp_path):
    arrays = per_split_arrays()
    arrays = {k: (v * 255).astype(np.uint8) if k.endswith("photo") else v for k, v in arrays.items()}
    arrays.update({f"{s}/wave": np.linspace(-1, 1, 8 * n).reshape(n, 8) for s, n in (("train", 40), ("val", 10),
                                                                                       ("test", 12))})
    path = tmp_path / "splits.npz"
    np.savez(path, **arrays)
    data = load_arrays(
        path,
        modalities={"photo": {"kind": "image", "scale": 255, "low": 0, "high": 1}, "tokens": {"pad_id": 0,
                    "vocab_size": 10}, "wave": "audio"},
        class_names=["a", "b", "c"],
    )
    check_bundle(data)
    assert data.meta["layout"] == "per-split" and data.meta["val"] == "file"
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 12)
    assert data.spec["photo"].low == 0.0 and data.spec["photo"].high == 1.0
    torch.testing.assert_close(data.test.inputs["photo"], torch.from_numpy(arrays["test/photo"] / 255).float())
    assert data.spec["wave"].kind == "audio" and data.spec["wave"].shape == (1, 8)
    assert (data.spec["wave"].low, data.spec["wave"].high) == (-1.0, 1.0)
    assert data.spec["tokens"].pad_id == 0 and data.spec["tokens"].vocab_size == 10
    assert data.spec.class_names == ("a", "b", "c") and data.meta["inferred"] == ["tokens"]  # kind not given
    # without val/: carved from train, seeded
    np.savez(path, **per_split_arrays(val=False))
    carved = load_arrays(path, val_fraction=0.25, seed=2)
    assert (len(carved.train), len(carved.val), len(carved.test)) == (30, 10, 12) and carved.meta["val"] == "seeded"


def test_npz_nan_policy(tmp_path):
    arrays = flat_arrays(30)
    arrays["sensor"][[1, 4], 2] = [np.nan, np.inf]
    path = tmp_path / "nan.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=r"nan\.npz:sensor \((train|val|test) split\): [12] sample\(s\) contain NaN"):
        load_arrays(path)
    data = load_arrays(path, nan="zero")
    assert data.meta["nan_replaced"] == {"photo": 0, "tokens": 0, "sensor": 2}
    assert all(bool(torch.isfinite(s.inputs["sensor"]).all()) for s in data.splits.values())


def test_npz_bad_inputs(tmp_path):
    path = tmp_path / "bad.npz"

    def load_with(arrays, **kw):
        np.savez(path, **arrays)
        return load_arrays(path, **kw)

    good = flat_arrays(30)
    with pytest.raises(InputError, match="no labels array 'labels'"):
        load_with({k: v for k, v in good.items() if k != "labels"})
    with pytest.raises(InputError, match="29 labels for 30 samples"):
        load_with({**good, "labels": good["labels"][:-1]})
    with pytest.raises(InputError, match="'photo' has 30 samples but 'tokens' has 28"):
        load_with({**good, "tokens": good["tokens"][:-2]})
    with pytest.raises(InputError, match="unknown key 'depth'"):
        load_with(good, modalities=["photo", "depth"])
    with pytest.raises(InputError, match="unknown spec field 'range'"):
        load_with(good, modalities={"photo": {"range": (0, 1)}})
    with pytest.raises(InputError, match="kind 'video'"):
        load_with(good, modalities={"photo": "video"})
    with pytest.raises(InputError, match=r"values lie in .* outside the given range \[0, 0.5\]"):
        load_with(good, modalities={"photo": {"low": 0, "high": 0.5}})
    with pytest.raises(InputError, match="vocab_size must be"):
        load_with(good, modalities={"tokens": {"vocab_size": 3}})
    with pytest.raises(InputError, match="token ids must be integers"):
        load_with(good, modalities={"sensor": "text"})
    with pytest.raises(InputError, match="single class"):
        load_with({**good, "labels": np.zeros(30, int)})
    with pytest.raises(InputError, match="num_classes=2"):
        load_with(good, num_classes=2)
    with pytest.raises(InputError, match="labels must be >= 0"):
        load_with({**good, "labels": good["labels"] - 1})
    with pytest.raises(InputError, match="unknown split value"):
        load_with({**good, "split": np.array(["train", "dev", "test"] * 10)})
    with pytest.raises(InputError, match="val_fraction"):
        load_with(good, val_fraction=-0.1)
    with pytest.raises(InputError, match="< 1"):
        load_with(good, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(InputError, match="Python objects"):
        np.savez(path, **good, meta=np.array([{}] * 30, dtype=object))
        load_arrays(path, modalities=["meta", "photo"])
    per = per_split_arrays()
    with pytest.raises(InputError, match=r"per-sample shape \(5, 6\) differs"):
        load_with({**per, "val/sensor": np.zeros((10, 5, 6))})
    with pytest.raises(InputError, match="no test/ split"):
        load_with({k: v for k, v in per.items() if not k.startswith("test/")})
    # files that are not what they claim
    with pytest.raises(InputError, match="cannot tell the format"):
        (tmp_path / "data.bin").write_bytes(b"x")
        load_arrays(tmp_path / "data.bin")
    with pytest.raises(InputError, match="format must be"):
        load_arrays(path, format="csv")
    (tmp_path / "fake.npz").write_text("hello")
    with pytest.raises(CacheError, match=r"fake\.npz is not a \.npz archive"):
        load_arrays(tmp_path / "fake.npz")
    np.savez(path, **good)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 200])
    with pytest.raises(CacheError, match=r"bad\.npz"):
        load_arrays(path)


def test_registry_lists_loaders_and_rejects_unknown_options(tmp_path):
    assert {"avmnist", "mosi", "mosei", "npz", "hdf5"} <= set(mr.datasets.names())
    np.savez(tmp_path / "d.npz", **flat_arrays(30))
    with pytest.raises(InputError, match=r"no hyper-parameter 'val_frac'.*Did you mean 'val_fraction'"):
        mr.datasets.load("npz", path=tmp_path / "d.npz", val_frac=0.1)
    with pytest.raises(UnknownNameError):
        DATASETS.get("avmnits")


def test_hdf5_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py -> ImportError
    (tmp_path / "d.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(MissingDependencyError, match="pip install h5py"):
        mr.datasets.load("hdf5", path=tmp_path / "d.h5")
    with pytest.raises(ImportError):
        load_arrays(tmp_path / "d.h5")


def test_hdf5_matches_npz(tmp_path):
    h5py = pytest.importorskip("h5py")
    arrays = flat_arrays(45)
    arrays["split"] = np.array([b"train", b"val", b"test"] * 15)
    np.savez(tmp_path / "d.npz", **arrays)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        for k, v in arrays.items():
            f[k] = v
    a, b = load_arrays(tmp_path / "d.npz"), mr.datasets.load("hdf5", path=tmp_path / "d.h5")
    assert {m.name: m for m in a.spec} == {m.name: m for m in b.spec}  # HDF5 lists its arrays alphabetically
    assert b.spec.names == ["photo", "sensor", "tokens"]
    for s in ("train", "val", "test"):
        for m in a.spec.names:
            assert torch.equal(a.splits[s].inputs[m], b.splits[s].inputs[m])
        assert torch.equal(a.splits[s].labels, b.splits[s].labels)
    # groups train/ val/ test/
    with h5py.File(tmp_path / "g.h5", "w") as f:
        for k, v in per_split_arrays().items():
            f[k] = v
    g = load_arrays(tmp_path / "g.h5")
    assert g.meta["layout"] == "per-split" and (len(g.train), len(g.val), len(g.test)) == (40, 10, 12)
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match=r"broken\.h5"):
        load_arrays(tmp_path / "broken.h5")


# ============================================================================ runs and the CLI on your data
def test_run_config_reads_your_npz_file_end_to_end(tmp_path):
    """`dataset: {name: npz, path: ...}` in a run config: trained, attacked, corrupted, recorded with a checksum."""
    from mmrobust.bench.config import validate_config
    from mmrobust.bench.runner import run

    path = tmp_path / "mine.npz"
    np.savez(path, **flat_arrays(120))
    cfg = validate_config({
        "name": "mine", "dataset": {"name": "npz", "path": str(path), "seed": 1},
        "models": [{"name": "late", "kwargs": {"embed_dim": 8}}], "train": {"epochs": 1},
        "threats": {"attacks": [{"name": "fgsm", "modalities": ["photo"], "eps": [0.1]}],
                    "corruptions": None, "certify": None, "missing": {"fills": ["zeros"]}},
    })
    folder = run(cfg, tmp_path / "runs", quiet=True)
    rows = (folder / "results.csv").read_text()
    assert "fgsm[photo" in rows and "missing[sensor" in rows
    summary = json.loads((folder / "summary.json").read_text())
    data = mr.datasets.load("npz", path=path, seed=1)
    assert summary["dataset"]["checksum"] == data.meta["checksum"] and len(data.meta["checksum"]) == 64
    assert summary["dataset"]["seed"] is None or summary["dataset"]["seed"] == 1
    np.savez(path, **flat_arrays(120, seed=5))  # other data, same file name: another checksum
    assert mr.datasets.load("npz", path=path, seed=1).meta["checksum"] != summary["dataset"]["checksum"]


@pytest.mark.parametrize(
    "dataset, message",
    [
        ({"name": "npz"}, "npz reads your data: give the path of its file"),
        ({"name": "avmnist"}, "avmnist reads your data: give the path of its folder"),
        ({"name": "npz", "path": "/nonexistent/x.npz"}, "dataset (npz):"),
        ({"name": "mmdigits", "path": "x.npz"}, "mmdigits is built offline"),
        ({"name": "npz", "path": "x.npz", "size": "tiny"}, "size: options of mmdigits, not of npz"),
        ({"name": "npz", "path": "x.npz", "options": {"path": "y.npz"}}, "options repeats ['path']"),
        ({"name": "cifar"}, "dataset.name"),
    ],
)
def test_bad_dataset_entries_are_one_clear_error(dataset, message):
    from mmrobust.bench.config import validate_config
    from mmrobust.bench.runner import dataset_of
    from mmrobust.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        dataset_of(validate_config({"dataset": dataset}))
    assert message in str(e.value)


def test_cli_train_and_evaluate_read_your_files(tmp_path, avmnist, capsys):
    from mmrobust.cli import main

    root, _ = avmnist
    ckpt = tmp_path / "av.pt"
    assert main(["train", "--model", "late", "--dataset", "avmnist", "--data-path", str(root), "--epochs", "1",
                 "--out", str(ckpt), "--quiet"]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", str(ckpt), "--dataset", "avmnist", "--data-path", str(root), "--missing", "each",
                 "--out", str(out), "--quiet"]) == 0
    assert "missing[audio" in (out / "results.csv").read_text()
    assert main(["evaluate", str(ckpt), "--dataset", "avmnist", "--out", str(out)]) == 2
    assert "avmnist reads your data" in capsys.readouterr().err
