"""The MM-Digits array builder (tiny size: builds in about a second)."""

import hashlib
import io
import json
import shutil
import wave

import numpy as np
import pytest
import torch

from mmrobust.datasets.mmdigits import audio as mm_audio
from mmrobust.datasets.mmdigits import build as mm_build
from mmrobust.datasets.mmdigits import build_arrays
from mmrobust.datasets.mmdigits import image as mm_image
from mmrobust.datasets.mmdigits import text as mm_text
from mmrobust.errors import MMRobustError
from mmrobust.spec import DatasetSpec

SPLITS = ("train", "val", "test")
SIZES = {"train": 120, "val": 40, "test": 60}

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def digests(arrays):
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in arrays.items()}


@pytest.fixture(scope="module")
def tiny(mmdigits_tiny):
    return mmdigits_tiny


@pytest.fixture(scope="module")
def tiny_again():
    return build_arrays(seed=0, size="tiny")


@pytest.fixture(scope="module")
def tiny_seed1():
    return build_arrays(seed=1, size="tiny")


@needs_espeak
def test_shapes_dtypes_and_ranges(tiny):
    arrays, meta = tiny
    assert sorted(arrays) == sorted(f"{s}/{m}" for s in SPLITS for m in ("image", "audio", "text", "label"))
    vocab_size = len(meta["vocab"])
    for s in SPLITS:
        n = SIZES[s]
        img, aud, txt, lab = (arrays[f"{s}/{m}"] for m in ("image", "audio", "text", "label"))
        assert img.shape == (n, 1, 8, 8) and img.dtype == np.float32
        assert aud.shape == (n, 1, 32, 64) and aud.dtype == np.float32
        assert txt.shape == (n, 16) and txt.dtype == np.int64
        assert lab.shape == (n,) and lab.dtype == np.int64
        assert img.min() >= 0.0 and img.max() <= 1.0
        assert aud.min() >= 0.0 and aud.max() <= 1.0 and aud.std() > 0.01
        assert txt.min() >= 0 and txt.max() < vocab_size
        assert (txt != 0).any(axis=1).mean() > 0.9  # almost every sample has some characters
        assert np.isfinite(img).all() and np.isfinite(aud).all()


@needs_espeak
def test_meta_is_json_and_a_valid_spec(tiny):
    arrays, meta = tiny
    meta2 = json.loads(json.dumps(meta))
    assert meta2["builder_version"] == mm_build.BUILDER_VERSION
    assert meta2["seed"] == 0 and meta2["size"] == "tiny" and meta2["audio"] == "logmel"
    assert "1." in meta2["espeak_ng_version"]
    assert meta2["sample_rate"] == 16000
    assert meta2["num_classes"] == 10 and meta2["class_names"] == [str(i) for i in range(10)]
    assert meta2["vocab"][:2] == ["<pad>", "<unk>"] and meta2["text_length"] == 16
    assert len(meta2["languages"]) >= 10
    kinds = {m["name"]: m for m in meta2["modalities"]}
    assert [m["kind"] for m in meta2["modalities"]] == ["image", "audio", "text"]
    assert kinds["text"]["perturbable"] is False and kinds["text"]["pad_id"] == 0
    assert kinds["text"]["vocab_size"] == len(meta2["vocab"])
    spec = DatasetSpec.from_dict(meta2)
    for s in SPLITS:
        batch = {m: torch.from_numpy(arrays[f"{s}/{m}"]) for m in spec.names}
        assert spec.validate_batch(batch) == SIZES[s]


@needs_espeak
def test_same_seed_is_byte_identical_and_other_seed_differs(tiny, tiny_again, tiny_seed1):
    a, b, c = digests(tiny[0]), digests(tiny_again[0]), digests(tiny_seed1[0])
    assert a == b
    assert tiny[1] == tiny_again[1]
    for s in SPLITS:
        for m in ("image", "audio", "text", "label"):
            assert a[f"{s}/{m}"] != c[f"{s}/{m}"], (s, m)


@needs_espeak
def test_balanced_labels(tiny):
    arrays, _ = tiny
    for s in SPLITS:
        counts = np.bincount(arrays[f"{s}/label"], minlength=10)
        assert np.all(counts == SIZES[s] // 10), (s, counts)
        assert not np.array_equal(arrays[f"{s}/label"], np.sort(arrays[f"{s}/label"]))  # shuffled


@needs_espeak
def test_speaker_variants_are_disjoint_between_splits(tiny, tiny_seed1):
    for _, meta in (tiny, tiny_seed1):
        used = {s: {v.split("+", 1)[1] for v in meta["voices"][s]} for s in SPLITS}
        assert all(used[s] for s in SPLITS)
        assert not used["train"] & used["val"]
        assert not used["train"] & used["test"]
        assert not used["val"] & used["test"]
        for s in SPLITS:
            assert used[s] <= set(meta["variants"][s])


def test_image_scans_are_disjoint_between_splits():
    _, labels = mm_image.load_scans()
    for seed in (0, 1):
        pools = mm_image.split_scans(labels, mm_build._rng(seed, "scans"), SPLITS)
        sets = {s: set(pools[s].tolist()) for s in SPLITS}
        assert not sets["train"] & sets["val"]
        assert not sets["train"] & sets["test"]
        assert not sets["val"] & sets["test"]
        assert set().union(*sets.values()) == set(range(len(labels)))
        for s in SPLITS:  # stratified: every split holds every digit
            assert set(labels[pools[s]].tolist()) == set(range(10))


@needs_espeak
def test_image_scan_counts_in_meta(tiny):
    counts = tiny[1]["image_scans"]
    assert sum(counts.values()) == 1797
    assert counts["train"] > counts["test"] > counts["val"] > 0


@needs_espeak
def test_waveform_representation():
    arrays, meta = build_arrays(seed=0, size="tiny", audio="waveform")
    assert meta["audio"] == "waveform"
    audio_spec = next(m for m in meta["modalities"] if m["name"] == "audio")
    assert audio_spec["shape"] == [1, 16000] and audio_spec["low"] == -1.0
    for s in SPLITS:
        w = arrays[f"{s}/audio"]
        assert w.shape == (SIZES[s], 1, 16000) and w.dtype == np.float32
        assert w.min() >= -1.0 and w.max() <= 1.0 and np.abs(w).max() > 0.1


def test_unknown_audio_or_size_raises_value_error():
    with pytest.raises(ValueError, match="logmel"):
        build_arrays(seed=0, size="tiny", audio="mp3")
    with pytest.raises(ValueError, match="tiny"):
        build_arrays(seed=0, size="huge")
    with pytest.raises(ValueError, match="seed"):
        build_arrays(seed=-1, size="tiny")


def test_missing_espeak_raises_helpful_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(MMRobustError, match="espeak-ng") as info:
        build_arrays(seed=0, size="tiny")
    assert isinstance(info.value, RuntimeError)
    assert "apt-get install espeak-ng" in str(info.value)


def test_text_vocab_and_words():
    vocab = mm_text.build_vocab()
    assert vocab == mm_text.build_vocab()
    assert vocab[0] == "<pad>" and vocab[1] == "<unk>" and "_" in vocab
    assert vocab[2:] == sorted(vocab[2:])
    assert len(mm_text.LANGUAGES) >= 10
    for words in mm_text.NUMBER_WORDS.values():
        assert len(words) == 10
        for w in words:
            ids = mm_text.encode(w, vocab)
            assert ids.shape == (16,) and mm_text.UNK_ID not in ids
            assert "".join(vocab[i] for i in ids if i) == w
    assert mm_text.NUMBER_WORDS["fr"][7] == "sept" and mm_text.NUMBER_WORDS["fi"][4] == "neljä"


def test_mel_filterbank_and_logmel():
    fb = mm_audio.mel_filterbank()
    assert fb.shape == (32, 257)
    assert np.allclose(fb.sum(1), 1.0) and (fb >= 0).all()
    centres = (fb * np.arange(257)).sum(1)
    assert np.all(np.diff(centres) > 0)
    t = np.arange(16000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    spec = mm_audio.logmel(np.stack([tone, np.zeros(16000)]))
    assert spec.shape == (2, 1, 32, 64)
    assert spec[1].max() == 0.0  # silence sits at the -80 dB floor
    band = spec[0, 0].mean(1).argmax()
    assert abs(centres[band] * 16000 / 512 - 1000) < 200


def test_parse_wav_reads_a_streamed_header():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(np.array([0, 16384, -16384, 32767], dtype="<i2").tobytes())
    data = bytearray(buf.getvalue())
    data[4:8] = (0x7FFFF024).to_bytes(4, "little")  # espeak-ng's placeholder sizes
    data[40:44] = (0x7FFFF000).to_bytes(4, "little")
    rate, x = mm_audio.parse_wav(bytes(data))
    assert rate == 22050
    assert np.allclose(x, [0.0, 0.5, -0.5, 32767 / 32768])
