"""Audio modality of MM-Digits: spoken digit words synthesised with ``espeak-ng``, in noise.

Each split owns a pool of clips. A clip is one English digit word ("zero".."nine") spoken by
``espeak-ng`` with a voice (accent + speaker variant), a speed and a pitch; the speaker variants
of the train, val and test splits are disjoint, so test audio always comes from unseen speakers.
Every distinct clip is synthesised once (the ``espeak-ng`` processes run in a thread pool),
resampled from 22,050 Hz to 16 kHz, trimmed of silence and peak-normalised.

Each sample then takes a clip of its label from its split's pool, places it at a random offset
in a 1.0 s window and adds background noise at a random SNR: a random mix of white and pink
noise and "babble" (other clips of the pool, at random offsets). The sample is either this noisy
waveform, shape ``(1, 16000)`` in [-1, 1], or its log-mel spectrogram (Hann window, ``n_fft``
512, hop 250, 32 mel bands over 0..8 kHz, dB re a fixed reference clipped to [-80, 0] and mapped
linearly to [0, 1]), shape ``(1, 32, 64)``.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mmrobust.errors import MMRobustError

# --------------------------------------------------------------------------------------------
# Tuning constants
# --------------------------------------------------------------------------------------------
#: espeak-ng accents (base voices) used; only voices that do not need mbrola.
ACCENTS: tuple[str, ...] = (
    "en-gb",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
#: Names passed to ``espeak-ng -v`` for accents whose own name drops the ``+variant`` suffix.
#: (espeak-ng 1.51 resolves ``en-gb+VARIANT`` to the plain British voice; ``en`` is the same
#: British base voice and honours the variant.)
ESPEAK_VOICE_ALIASES: dict[str, str] = {"en-gb": "en"}
#: English digit words spoken for labels 0..9.
DIGIT_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
#: Share of the sorted speaker variants given to the train / val / test splits.
VARIANT_FRACTIONS: tuple[float, float, float] = (0.6, 0.15, 0.25)
#: Speaking speed range in words per minute (inclusive), drawn per clip.
SPEED_RANGE: tuple[int, int] = (120, 220)
#: Pitch range (espeak-ng 0..99 scale, inclusive), drawn per clip.
PITCH_RANGE: tuple[int, int] = (20, 80)
#: Sample rate of the produced audio (Hz).
SAMPLE_RATE: int = 16_000
#: Length of the window every clip is placed in (samples; 1.0 s).
WINDOW: int = 16_000
#: A clip is trimmed to the span whose amplitude exceeds this fraction of its peak ...
TRIM_THRESHOLD: float = 0.02
#: ... plus this margin (samples) on each side.
TRIM_MARGIN: int = 160
#: Signal-to-noise ratio range (dB) of a sample, speech power measured over the clip.
SNR_DB_RANGE: tuple[float, float] = (5.0, 20.0)
#: Range of the share of babble power in the noise (the rest is white/pink noise).
BABBLE_SHARE_RANGE: tuple[float, float] = (0.0, 0.6)
#: Number of babble clips mixed into each sample (inclusive range).
BABBLE_CLIPS_RANGE: tuple[int, int] = (1, 3)
#: Peak level of the final mix, drawn per sample.
PEAK_RANGE: tuple[float, float] = (0.3, 0.95)
#: Log-mel parameters.
N_FFT: int = 512
HOP: int = 250
N_MELS: int = 32
N_FRAMES: int = 64
F_MIN: float = 0.0
F_MAX: float = 8000.0
#: Reference power of 0 dB: a full-scale sine through the Hann window (``(sum(w) / 2) ** 2``).
REF_POWER: float = (N_FFT / 4) ** 2
#: dB floor: values are clipped to [-TOP_DB, 0] and mapped linearly to [0, 1].
TOP_DB: float = 80.0
#: Threads running espeak-ng processes.
SYNTH_WORKERS: int = 4

LOGMEL_SHAPE: tuple[int, int, int] = (1, N_MELS, N_FRAMES)
WAVEFORM_SHAPE: tuple[int, int] = (1, WINDOW)

_VARIANT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class EspeakError(MMRobustError, RuntimeError):
    """``espeak-ng`` is missing or could not synthesise the MM-Digits audio."""


INSTALL_HINT = (
    "MM-Digits synthesises its audio with the espeak-ng speech synthesiser, which was not found "
    "on PATH. Install it (Debian/Ubuntu: `apt-get install espeak-ng`, or run "
    "`bash scripts/setup.sh`) and try again."
)


# --------------------------------------------------------------------------------------------
# espeak-ng discovery
# --------------------------------------------------------------------------------------------
def find_espeak() -> str:
    """Locate the ``espeak-ng`` executable.

    Returns:
        Path of the executable.

    Raises:
        EspeakError: if ``espeak-ng`` is not on PATH (the message says how to install it).
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakError(INSTALL_HINT)
    return exe


def espeak_version(exe: str) -> str:
    """The version line printed by ``espeak-ng --version`` (data path removed)."""
    out = _run_text([exe, "--version"])
    line = out.strip().splitlines()[0] if out.strip() else ""
    return line.split("Data at:")[0].strip()


def _run_text(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except OSError as exc:  # pragma: no cover - depends on the machine
        raise EspeakError(f"could not run {cmd[0]}: {exc}. {INSTALL_HINT}") from exc
    if proc.returncode != 0:
        raise EspeakError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode("utf-8", errors="replace")


def list_variants(exe: str) -> list[str]:
    """Sorted speaker variants (the files of espeak-ng's ``voices/!v`` folder).

    Variants whose names are not plain identifiers (e.g. containing spaces) are skipped: they
    cannot be named in a ``-v accent+variant`` argument.

    Args:
        exe: The ``espeak-ng`` executable.

    Returns:
        Sorted variant names such as ``["Alex", ..., "f2", ..., "m3", ...]``.
    """
    names: set[str] = set()
    match = re.search(r"Data at:\s*(.+)", _run_text([exe, "--version"]))
    folder = os.path.join(match.group(1).strip(), "voices", "!v") if match else ""
    if folder and os.path.isdir(folder):
        names = {n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))}
    else:  # fall back to the listing of the variant voices
        for line in _run_text([exe, "--voices=variant"]).splitlines()[1:]:
            for field in line.split():
                if field.startswith("!v/"):
                    names.add(field[3:])
    variants = sorted(n for n in names if _VARIANT_NAME.match(n))
    if not variants:
        raise EspeakError("espeak-ng lists no speaker variants (voices/!v is empty)")
    return variants


def split_variants(
    variants: Sequence[str],
    rng: np.random.Generator,
    splits: Sequence[str] = ("train", "val", "test"),
    fractions: Sequence[float] = VARIANT_FRACTIONS,
    limit: int | None = None,
) -> dict[str, list[str]]:
    """Split speaker variants into disjoint groups, one per split.

    Args:
        variants: Sorted variant names.
        rng: Generator that shuffles them.
        splits: Split names, in order.
        fractions: Share of the variants per split (the last takes the remainder).
        limit: Keep at most this many variants per split (small builds).

    Returns:
        ``{split: sorted variant names}``, pairwise disjoint, each non-empty.
    """
    if len(variants) < len(splits):
        raise EspeakError(f"need at least {len(splits)} speaker variants, found {len(variants)}")
    order = [variants[i] for i in rng.permutation(len(variants))]
    cum = np.cumsum(np.asarray(fractions, dtype=np.float64))
    cuts = np.round(cum / cum[-1] * len(order)).astype(int)
    out: dict[str, list[str]] = {}
    start = 0
    for k, (s, stop) in enumerate(zip(splits, cuts, strict=True)):
        # every split gets at least one variant and leaves one for each later split
        stop = max(int(stop), start + 1)
        stop = min(stop, len(order) - (len(splits) - k - 1))
        part = order[start:stop]
        if limit is not None:
            part = part[:limit]
        out[s] = sorted(part)
        start = stop
    return out


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    """One espeak-ng utterance.

    Attributes:
        label: Digit 0..9.
        voice: ``accent+variant``, e.g. ``"en-us+m3"``.
        speed: Words per minute.
        pitch: espeak-ng pitch (0..99).
    """

    label: int
    voice: str
    speed: int
    pitch: int

    @property
    def word(self) -> str:
        """The spoken word."""
        return DIGIT_WORDS[self.label]

    def command(self, exe: str) -> list[str]:
        """The espeak-ng command line that speaks this clip to stdout."""
        accent, _, variant = self.voice.partition("+")
        voice = ESPEAK_VOICE_ALIASES.get(accent, accent) + (f"+{variant}" if variant else "")
        return [exe, "-v", voice, "-s", str(self.speed), "-p", str(self.pitch), "--stdout", self.word]


def plan_clips(voices: Sequence[str], per_label: int, rng: np.random.Generator) -> list[ClipSpec]:
    """Draw the clip specifications of one split's pool.

    Args:
        voices: Voices (``accent+variant``) of the split.
        per_label: Clips drawn per digit (duplicates are removed).
        rng: Generator for voice, speed and pitch.

    Returns:
        Distinct clip specs, in a deterministic order.
    """
    specs: dict[ClipSpec, None] = {}
    for label in range(len(DIGIT_WORDS)):
        v = rng.integers(0, len(voices), size=per_label)
        sp = rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1, size=per_label)
        pt = rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1, size=per_label)
        for i in range(per_label):
            specs[ClipSpec(label, voices[int(v[i])], int(sp[i]), int(pt[i]))] = None
    return list(specs)


def parse_wav(data: bytes) -> tuple[int, np.ndarray]:
    """Decode the 16-bit PCM WAV that ``espeak-ng --stdout`` writes.

    The stream's RIFF and data sizes are placeholders (it is written before the length is
    known), so the data chunk is read to the end of the bytes.

    Args:
        data: The WAV bytes.

    Returns:
        ``(sample_rate, samples)`` with samples as float64 in [-1, 1] (first channel).
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise EspeakError("espeak-ng did not write a WAV stream")
    pos = 12
    rate, channels, bits = 0, 1, 16
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
        elif cid == b"data":
            if bits != 16 or rate <= 0:
                raise EspeakError(f"unexpected WAV format ({bits} bit, {rate} Hz)")
            raw = data[body:]
            frame = 2 * channels
            raw = raw[: len(raw) - len(raw) % frame]
            pcm = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)[:, 0]
            return rate, pcm.astype(np.float64) / 32768.0
        pos = body + size + (size & 1)
    raise EspeakError("espeak-ng's WAV stream has no data chunk")


def _prepare(rate: int, x: np.ndarray) -> np.ndarray | None:
    """Resample to 16 kHz, trim silence, crop to the window and peak-normalise."""
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly  # 2 s to import: only when MM-Digits is built, not on import mmrobust

        g = np.gcd(rate, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, rate // g)
    a = np.abs(x)
    peak = float(a.max()) if a.size else 0.0
    if peak < 1e-4:
        return None
    loud = np.flatnonzero(a > TRIM_THRESHOLD * peak)
    start = max(int(loud[0]) - TRIM_MARGIN, 0)
    stop = min(int(loud[-1]) + 1 + TRIM_MARGIN, len(x))
    x = x[start:stop][:WINDOW]
    return (x / np.abs(x).max()).astype(np.float32)


def _synthesise_one(exe: str, spec: ClipSpec) -> np.ndarray | None:
    try:
        proc = subprocess.run(spec.command(exe), capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or b"Error" in proc.stderr:
        return None
    try:
        rate, x = parse_wav(proc.stdout)
    except EspeakError:
        return None
    return _prepare(rate, x)


def synthesise(exe: str, specs: Sequence[ClipSpec], workers: int = SYNTH_WORKERS) -> list[np.ndarray | None]:
    """Synthesise clips with espeak-ng processes run from a thread pool.

    Each distinct spec is synthesised once; the result does not depend on the order in which
    the processes finish.

    Args:
        exe: The ``espeak-ng`` executable.
        specs: Clips to speak.
        workers: Threads (each runs one espeak-ng process at a time).

    Returns:
        One entry per spec (same order): the clip at 16 kHz, float32 peak-normalised, trimmed to
        at most one window, or ``None`` where synthesis failed.
    """
    unique = list(dict.fromkeys(specs))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda s: _synthesise_one(exe, s), unique))
    by_spec = dict(zip(unique, results, strict=True))
    return [by_spec[s] for s in specs]


# --------------------------------------------------------------------------------------------
# Per-sample mixing
# --------------------------------------------------------------------------------------------
def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x * x)))
    return x / rms if rms > 0 else x


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.shape[0], dtype=np.float64)
    f[0] = 1.0
    return _unit_rms(np.fft.irfft(spec / np.sqrt(f), n=n))


def _place(dst: np.ndarray, clip: np.ndarray, offset: int, gain: float = 1.0) -> None:
    """Add ``gain * clip`` into ``dst`` starting at ``offset`` (may hang over either end)."""
    lo, hi = max(offset, 0), min(offset + len(clip), len(dst))
    if hi > lo:
        dst[lo:hi] += gain * clip[lo - offset : hi - offset]


def make_waveforms(
    clips: Sequence[np.ndarray],
    clip_labels: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw one noisy 1 s waveform per wanted label from a split's clip pool.

    Args:
        clips: The split's clips (16 kHz, peak 1, at most one window long).
        clip_labels: Label of every clip.
        labels: Wanted label of every sample, shape ``(n,)``.
        rng: Generator for the clip choice, offset, noise and level.

    Returns:
        Waveforms of shape ``(n, 1, 16000)``, float32 in [-1, 1].
    """
    clip_labels = np.asarray(clip_labels)
    by_label = {int(c): np.flatnonzero(clip_labels == c) for c in range(len(DIGIT_WORDS))}
    out = np.empty((len(labels), 1, WINDOW), dtype=np.float32)
    for i, y in enumerate(labels):
        candidates = by_label[int(y)]
        if len(candidates) == 0:
            raise EspeakError(f"the clip pool has no clip of digit {int(y)}")
        k = int(candidates[rng.integers(len(candidates))])
        clip = clips[k].astype(np.float64)
        speech = np.zeros(WINDOW)
        _place(speech, clip, int(rng.integers(0, WINDOW - len(clip) + 1)))
        # background: white/pink mix
        colour = rng.uniform()
        bg = _unit_rms(colour * _unit_rms(rng.standard_normal(WINDOW)) + (1 - colour) * _pink(rng, WINDOW))
        # babble: other clips of the pool at random offsets and gains
        babble = np.zeros(WINDOW)
        n_babble = int(rng.integers(BABBLE_CLIPS_RANGE[0], BABBLE_CLIPS_RANGE[1] + 1))
        for _ in range(n_babble):
            j = int(rng.integers(len(clips)))
            if j == k and len(clips) > 1:  # babble comes from other clips
                j = (j + 1) % len(clips)
            other = clips[j]
            off = int(rng.integers(-len(other) // 2, WINDOW - len(other) // 2 + 1))
            _place(babble, other.astype(np.float64), off, float(rng.uniform(0.3, 1.0)))
        share = rng.uniform(*BABBLE_SHARE_RANGE)
        if not np.any(babble):
            share = 0.0
        noise = np.sqrt(1.0 - share) * bg + np.sqrt(share) * _unit_rms(babble)
        snr = rng.uniform(*SNR_DB_RANGE)
        p_speech = float(np.mean(clip * clip))
        mix = speech + noise * np.sqrt(p_speech / 10.0 ** (snr / 10.0))
        level = rng.uniform(*PEAK_RANGE)
        mix = mix * (level / max(float(np.abs(mix).max()), 1e-12))
        out[i, 0] = np.clip(mix, -1.0, 1.0)
    return out


# --------------------------------------------------------------------------------------------
# Log-mel
# --------------------------------------------------------------------------------------------
def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> np.ndarray:
    """Triangular mel filters, each normalised to unit sum (a weighted mean of bin powers).

    Args:
        n_mels: Number of bands.
        n_fft: FFT size.
        sample_rate: Sample rate (Hz).
        f_min: Lowest edge (Hz).
        f_max: Highest edge (Hz).

    Returns:
        Filter matrix of shape ``(n_mels, n_fft // 2 + 1)``.
    """
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    fb = np.zeros((n_mels, freqs.size))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rise = (freqs - lo) / (mid - lo)
        fall = (hi - freqs) / (hi - mid)
        fb[m] = np.maximum(0.0, np.minimum(rise, fall))
        if fb[m].sum() == 0.0:  # band narrower than a bin: take the nearest bin
            fb[m, int(np.argmin(np.abs(freqs - mid)))] = 1.0
    return fb / fb.sum(axis=1, keepdims=True)


def logmel(waves: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Log-mel spectrograms of 1 s waveforms.

    The waveform is reflect-padded by ``(N_FFT + (N_FRAMES - 1) * HOP - WINDOW) / 2`` samples
    on each side so that exactly :data:`N_FRAMES` frames cover it.

    Args:
        waves: Waveforms, shape ``(n, 1, 16000)`` or ``(n, 16000)``.
        chunk: Samples processed at once (memory bound).

    Returns:
        Spectrograms of shape ``(n, 1, N_MELS, N_FRAMES)``, float32 in [0, 1] (0 = -80 dB,
        1 = 0 dB re :data:`REF_POWER`).
    """
    x2 = np.asarray(waves, dtype=np.float64).reshape(len(waves), -1)
    total = N_FFT + (N_FRAMES - 1) * HOP
    pad = total - x2.shape[1]
    left = pad // 2
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    fb = mel_filterbank()
    out = np.empty((len(x2), 1, N_MELS, N_FRAMES), dtype=np.float32)
    for s in range(0, len(x2), chunk):
        xs = np.pad(x2[s : s + chunk], ((0, 0), (left, pad - left)), mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(xs, N_FFT, axis=1)[:, ::HOP]
        power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (b, frames, bins)
        mel = power @ fb.T  # (b, frames, mels)
        db = 10.0 * np.log10(np.maximum(mel, 1e-20) / REF_POWER)
        db = np.clip(db, -TOP_DB, 0.0)
        out[s : s + chunk, 0] = ((db + TOP_DB) / TOP_DB).transpose(0, 2, 1)
    return out
