"""Build the MM-Digits arrays (image, audio, text, label for train / val / test).

MM-Digits follows the AV-MNIST recipe extended to three modalities: unimodal samples that share a
digit label are paired into one multimodal sample. Every modality is degraded enough to be
clearly imperfect on its own, with independent noise, so fusing them pays off.

Everything is derived from ``numpy.random.default_rng`` streams seeded by
``SeedSequence(seed, spawn_key=(stream, split))``, one per modality and split, so a build is
byte-identical for the same seed, whatever the order in which the espeak-ng processes finish.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmrobust.datasets.mmdigits import audio as _audio
from mmrobust.datasets.mmdigits import image as _image
from mmrobust.datasets.mmdigits import text as _text
from mmrobust.errors import ConfigError

BUILDER_VERSION = "1"
SPLITS: tuple[str, ...] = ("train", "val", "test")
NUM_CLASSES = 10
SIZES: tuple[str, ...] = ("full", "tiny")
AUDIO_REPRESENTATIONS: tuple[str, ...] = ("logmel", "waveform")

#: Samples per split.
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "full": {"train": 3000, "val": 600, "test": 1000},
    "tiny": {"train": 120, "val": 40, "test": 60},
}
#: Clips drawn per digit for each split's audio pool.
CLIPS_PER_LABEL: dict[str, dict[str, int]] = {
    "full": {"train": 80, "val": 30, "test": 50},
    "tiny": {"train": 3, "val": 3, "test": 3},
}
#: Speaker variants kept per split (``None``: all the split's share).
VARIANT_LIMIT: dict[str, int | None] = {"full": None, "tiny": 2}
#: Accents used (a prefix of :data:`audio.ACCENTS`).
N_ACCENTS: dict[str, int] = {"full": len(_audio.ACCENTS), "tiny": 2}

# Independent random streams, addressed by (stream, split) positions in these tuples.
_STREAMS: tuple[str, ...] = ("scans", "variants", "labels", "image", "clips", "audio", "text")


def _rng(seed: int, stream: str, split: str | None = None) -> np.random.Generator:
    key: tuple[int, ...] = (_STREAMS.index(stream),)
    if split is not None:
        key = (*key, SPLITS.index(split))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Labels 0..9 each (as nearly as possible) equally often, in shuffled order."""
    return rng.permutation(np.arange(n, dtype=np.int64) % NUM_CLASSES).astype(np.int64)


def _modalities(audio: str, vocab_size: int) -> list[dict[str, Any]]:
    if audio == "logmel":
        audio_entry = {
            "shape": list(_audio.LOGMEL_SHAPE),
            "low": 0.0,
            "high": 1.0,
            "description": (
                f"log-mel spectrogram ({_audio.N_MELS} mel bands x {_audio.N_FRAMES} frames, "
                f"[-{_audio.TOP_DB:g}, 0] dB mapped to [0, 1]) of a spoken English digit word "
                "(espeak-ng, unseen speakers at test time) in noise and babble"
            ),
        }
    else:
        audio_entry = {
            "shape": list(_audio.WAVEFORM_SHAPE),
            "low": -1.0,
            "high": 1.0,
            "description": (
                f"1.0 s waveform at {_audio.SAMPLE_RATE} Hz of a spoken English digit word "
                "(espeak-ng, unseen speakers at test time) in noise and babble"
            ),
        }
    return [
        {
            "name": "image",
            "kind": "image",
            "shape": list(_image.IMAGE_SHAPE),
            "dtype": "float32",
            "low": 0.0,
            "high": 1.0,
            "perturbable": True,
            "vocab_size": None,
            "pad_id": None,
            "description": (
                "8x8 handwritten digit scan (scikit-learn digits) with random contrast, "
                "an occlusion patch and Gaussian noise"
            ),
        },
        {
            "name": "audio",
            "kind": "audio",
            "dtype": "float32",
            "perturbable": True,
            "vocab_size": None,
            "pad_id": None,
            **audio_entry,
        },
        {
            "name": "text",
            "kind": "text",
            "shape": [_text.TEXT_LENGTH],
            "dtype": "int64",
            "low": 0.0,
            "high": float(vocab_size - 1),
            "perturbable": False,
            "vocab_size": vocab_size,
            "pad_id": _text.PAD_ID,
            "description": (
                f"number word in one of {len(_text.LANGUAGES)} languages with character noise, one token per character"
            ),
        },
    ]


def build_arrays(seed: int = 0, size: str = "full", audio: str = "logmel") -> tuple[dict[str, np.ndarray], dict]:
    """Build the MM-Digits arrays.

    Args:
        seed: Non-negative seed; the same seed gives byte-identical arrays.
        size: ``"full"`` (3000 / 600 / 1000 samples) or ``"tiny"`` (120 / 40 / 60 samples from
            a small clip pool; builds in about a second, for tests).
        audio: ``"logmel"`` (``(1, 32, 64)`` in [0, 1]) or ``"waveform"`` (``(1, 16000)`` in
            [-1, 1]).

    Returns:
        ``(arrays, meta)``. ``arrays`` has the keys ``"{split}/{image,audio,text,label}"`` for
        the splits train, val and test (float32 image and audio, int64 text and label);
        ``meta`` is a JSON-serialisable description of the build (versions, parameters,
        vocabulary, voices and scan counts per split, modality specs, class names).

    Raises:
        ConfigError: (a ``ValueError``) for an unknown ``size`` or ``audio`` or a bad seed.
        EspeakError: (a ``RuntimeError``) when ``espeak-ng`` is missing.
    """
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; allowed values: {', '.join(SIZES)}")
    if audio not in AUDIO_REPRESENTATIONS:
        raise ConfigError(f"unknown audio representation {audio!r}; allowed values: {', '.join(AUDIO_REPRESENTATIONS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)

    exe = _audio.find_espeak()
    version = _audio.espeak_version(exe)

    # image scan pools (disjoint, stratified)
    scans, scan_labels = _image.load_scans()
    scan_pools = _image.split_scans(scan_labels, _rng(seed, "scans"), SPLITS)

    # speaker variants (disjoint) and the clip plan of every split
    variants = _audio.split_variants(
        _audio.list_variants(exe), _rng(seed, "variants"), SPLITS, limit=VARIANT_LIMIT[size]
    )
    accents = _audio.ACCENTS[: N_ACCENTS[size]]
    plans: dict[str, list[_audio.ClipSpec]] = {}
    for split in SPLITS:
        voices = [f"{a}+{v}" for a in accents for v in variants[split]]
        plans[split] = _audio.plan_clips(voices, CLIPS_PER_LABEL[size][split], _rng(seed, "clips", split))
    all_specs = [s for split in SPLITS for s in plans[split]]
    all_clips = _audio.synthesise(exe, all_specs)
    clip_of = dict(zip(all_specs, all_clips, strict=True))

    vocab = _text.build_vocab()
    arrays: dict[str, np.ndarray] = {}
    voices_used: dict[str, list[str]] = {}
    clip_counts: dict[str, int] = {}
    for split in SPLITS:
        ok = [(s, clip_of[s]) for s in plans[split] if clip_of[s] is not None]
        if not ok:
            raise _audio.EspeakError(f"espeak-ng produced no usable clip for the {split} split")
        clips = [c for _, c in ok if c is not None]
        clip_labels = np.asarray([s.label for s, _ in ok], dtype=np.int64)
        voices_used[split] = sorted({s.voice for s, _ in ok})
        clip_counts[split] = len(clips)

        labels = _balanced_labels(SPLIT_SIZES[size][split], _rng(seed, "labels", split))
        images = _image.make_images(scans, scan_labels, scan_pools[split], labels, _rng(seed, "image", split))
        waves = _audio.make_waveforms(clips, clip_labels, labels, _rng(seed, "audio", split))
        sounds = _audio.logmel(waves) if audio == "logmel" else waves
        tokens, _ = _text.make_texts(labels, _rng(seed, "text", split), vocab)

        arrays[f"{split}/image"] = np.ascontiguousarray(images, dtype=np.float32)
        arrays[f"{split}/audio"] = np.ascontiguousarray(sounds, dtype=np.float32)
        arrays[f"{split}/text"] = np.ascontiguousarray(tokens, dtype=np.int64)
        arrays[f"{split}/label"] = np.ascontiguousarray(labels, dtype=np.int64)

    meta: dict[str, Any] = {
        "name": "mmdigits",
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "size": size,
        "audio": audio,
        "espeak_ng_version": version,
        "sample_rate": _audio.SAMPLE_RATE,
        "mel": {
            "n_fft": _audio.N_FFT,
            "hop": _audio.HOP,
            "n_mels": _audio.N_MELS,
            "n_frames": _audio.N_FRAMES,
            "f_min": _audio.F_MIN,
            "f_max": _audio.F_MAX,
            "window": "hann",
            "ref_power": _audio.REF_POWER,
            "top_db": _audio.TOP_DB,
        },
        "vocab": vocab,
        "text_length": _text.TEXT_LENGTH,
        "languages": list(_text.LANGUAGES),
        "accents": list(accents),
        "variants": {s: list(variants[s]) for s in SPLITS},
        "voices": voices_used,
        "clips": clip_counts,
        "image_scans": {s: len(scan_pools[s]) for s in SPLITS},
        "split_sizes": dict(SPLIT_SIZES[size]),
        "modalities": _modalities(audio, len(vocab)),
        "num_classes": NUM_CLASSES,
        "class_names": [str(c) for c in range(NUM_CLASSES)],
    }
    return arrays, meta
