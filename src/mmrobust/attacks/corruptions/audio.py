"""Audio corruptions: additive noise at an SNR, time shift, gain, time/frequency masking, background mix.

Two representations are supported; the **last axis is always time**:

* **waveform** — a spec with one or two axes, (T,) or (C, T), e.g. MM-Digits ``audio="waveform"``
  (1, 16000) in [−1, 1]. Noise and backgrounds are added to the samples, gain multiplies them,
  silence is 0 (clipped into the valid range).
* **log-mel spectrogram** — a spec with three or more axes, (C, F, T) (frequency on the
  second-to-last axis), e.g. MM-Digits (1, 32, 64) in [0, 1]. The values are taken to be decibels
  mapped linearly from [−:data:`TOP_DB`, 0] dB onto [low, high] (exactly MM-Digits' convention:
  low = −80 dB, high = 0 dB). Then a gain of g dB is the shift v + g/TOP_DB·(high − low), and
  noise or a background at an SNR of s dB is mixed **in the power domain**: P = 10^(dB/10), the
  noise power spectrogram is scaled so that mean(P_noise) = mean(P) / 10^(s/10) over the sample,
  and the mixture P + P_noise goes back to dB, clipped to [−TOP_DB, 0] and re-normalised. Silence
  is ``low`` (−80 dB). Spectrogram kinds need a bounded valid range.

SNRs are per sample: the signal power is the sample's own mean power (mean of x² for a waveform,
mean of P for a spectrogram), so a sample's corruption never depends on the rest of the batch.
Time and frequency masking follow SpecAugment (Park et al., *SpecAugment: A Simple Data
Augmentation Method for Automatic Speech Recognition*, Interspeech 2019, arXiv 1904.08779).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
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

#: Decibel span of a normalised log-mel spectrogram: [low, high] stands for [−TOP_DB, 0] dB.
TOP_DB: float = 80.0
#: Normalised frequency range (cycles per sample) of background tones: 50 Hz..2 kHz at 16 kHz.
TONE_RANGE: tuple[float, float] = (50 / 16_000, 2_000 / 16_000)


def is_spectrogram(spec: ModalitySpec) -> bool:
    """True for (C, F, T) log-mel specs, False for (T,) / (C, T) waveforms."""
    return len(spec.shape) >= 3


def silence(spec: ModalitySpec) -> float:
    """The value of silence: ``low`` for a spectrogram, 0 clipped into the range for a waveform."""
    if is_spectrogram(spec):
        assert spec.low is not None
        return float(spec.low)
    v = 0.0
    if spec.low is not None:
        v = max(v, float(spec.low))
    if spec.high is not None:
        v = min(v, float(spec.high))
    return v


def silenced(x: Tensor, mask: Tensor, spec: ModalitySpec) -> Tensor:
    """``x`` with :func:`silence` where ``mask`` (broadcastable to ``x``) is True."""
    return torch.where(mask, torch.full_like(x, silence(spec)), x)


def to_power(v: Tensor, spec: ModalitySpec) -> Tensor:
    """Normalised log-mel values -> power (1 = 0 dB), in float64 for a clean round trip."""
    assert spec.high is not None
    db = (v.double() - spec.high) / value_range(spec) * TOP_DB
    return torch.pow(10.0, db / 10.0)


def from_power(p: Tensor, spec: ModalitySpec) -> Tensor:
    """Power -> normalised log-mel values, clipped to [−TOP_DB, 0] dB, i.e. to [low, high]."""
    assert spec.high is not None
    db = (10.0 * torch.log10(p.clamp_min(1e-30))).clamp(-TOP_DB, 0.0)
    return (spec.high + db / TOP_DB * value_range(spec)).float()


def mix_power(x: Tensor, noise: Tensor, snr_db: float, spec: ModalitySpec) -> Tensor:
    """Mix a non-negative noise power spectrogram into log-mel ``x`` at ``snr_db`` per sample."""
    p = to_power(x, spec)
    ps = p.flatten(1).mean(1)
    pn = noise.double().flatten(1).mean(1).clamp_min(1e-30)
    scale = per_sample(ps / pn / 10.0 ** (snr_db / 10.0), x)
    return clip(from_power(p + scale * noise.double(), spec), spec).to(x.dtype)


def mix_wave(x: Tensor, noise: Tensor, snr_db: float, spec: ModalitySpec) -> Tensor:
    """Add waveform ``noise`` to ``x`` scaled to ``snr_db`` per sample (signal power = mean x²), clipped."""
    ps = x.float().pow(2).flatten(1).mean(1)
    pn = noise.float().pow(2).flatten(1).mean(1).clamp_min(1e-30)
    scale = per_sample((ps / pn / 10.0 ** (snr_db / 10.0)).sqrt(), x)
    return clip(x.float() + scale * noise.float(), spec).to(x.dtype)


class AudioKind(CorruptionKind):
    """Base of the audio kinds: spectrograms need a bounded range."""

    modality: ClassVar[str] = "audio"

    def supports(self, spec: ModalitySpec) -> str | None:
        """Refuse non-audio specs and spectrograms without a bounded valid range."""
        reason = super().supports(spec)
        if reason is None and is_spectrogram(spec) and not bounded(spec):
            reason = f"{self.name!r} on a log-mel spectrogram needs a bounded valid range for {spec.name!r}"
        return reason


@CORRUPTIONS.register()
class Noise(AudioKind):
    """Stationary white noise at a target SNR (dB), per sample.

    Waveform: Gaussian white noise z ~ N(0, I) scaled so that mean(noise²) = mean(x²)/10^(SNR/10).
    Spectrogram: a flat noise power spectrogram with exponential per-bin fluctuations (the
    periodogram statistics of white noise), mixed in the power domain (see the module docstring).
    """

    name: ClassVar[str] = "noise"
    levels: ClassVar[tuple[float, ...]] = (20.0, 15.0, 10.0, 5.0, 0.0)
    unit: ClassVar[str] = "SNR in dB"
    summary: ClassVar[str] = "white noise at a target signal-to-noise ratio"

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        snr = self.level(severity)
        if is_spectrogram(spec):
            u = rand(x.shape, generator, x)
            return mix_power(x, -torch.log1p(-u), snr, spec)  # Exp(1) = −log(1 − U)
        return mix_wave(x, randn(x.shape, generator, x), snr, spec)


@CORRUPTIONS.register()
class TimeShift(AudioKind):
    """Shift along time by ``ceil(f·T)`` steps, direction random per sample; silence comes in.

    The signal is not rolled around: what leaves the window is lost and the vacated steps are
    silence. Draws per sample: the direction.
    """

    name: ClassVar[str] = "time_shift"
    levels: ClassVar[tuple[float, ...]] = (0.05, 0.1, 0.2, 0.3, 0.4)
    unit: ClassVar[str] = "shift as a fraction of the time axis"
    summary: ClassVar[str] = "signal delayed or advanced, silence padded"

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        n, t = x.shape[0], x.shape[-1]
        sign = torch.where(rand((n,), generator, x) < 0.5, -1, 1)
        shift = sign * self.size(t, severity)  # (N,)
        src = torch.arange(t, device=x.device)[None, :] - shift[:, None]  # (N, T)
        valid = (src >= 0) & (src < t)
        lead = (n, *([1] * (x.dim() - 2)), t)
        idx = src.clamp(0, t - 1).view(lead).expand_as(x)
        out = torch.gather(x, -1, idx)
        return silenced(out, ~valid.view(lead), spec)


@CORRUPTIONS.register()
class Gain(AudioKind):
    """Loudness change of ±g dB, sign random per sample.

    Waveform: x' = clip(x · 10^(±g/20)) (amplification saturates at the range ends). Spectrogram:
    x' = clip(x ± g/TOP_DB · (high − low)). Draws per sample: the sign.
    """

    name: ClassVar[str] = "gain"
    levels: ClassVar[tuple[float, ...]] = (3.0, 6.0, 10.0, 15.0, 20.0)
    unit: ClassVar[str] = "gain magnitude g in dB (random sign)"
    summary: ClassVar[str] = "louder or quieter"

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        n = x.shape[0]
        sign = per_sample(torch.where(rand((n,), generator, x) < 0.5, -1.0, 1.0), x)
        g = sign * self.level(severity)
        if is_spectrogram(spec):
            return clip(x + g / TOP_DB * value_range(spec), spec).to(x.dtype)
        return clip(x * torch.pow(10.0, g / 20.0), spec).to(x.dtype)


@CORRUPTIONS.register()
class TimeMask(AudioKind):
    """SpecAugment-style time mask: ``ceil(f·T)`` consecutive steps set to silence.

    The band is centred on a uniformly random time step and clipped at the ends, so a sample's
    masks are nested across severities. Draws per sample: the centre.
    """

    name: ClassVar[str] = "time_mask"
    levels: ClassVar[tuple[float, ...]] = (0.05, 0.1, 0.2, 0.3, 0.4)
    unit: ClassVar[str] = "masked fraction of the time axis"
    summary: ClassVar[str] = "a stretch of time silenced"

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        n, t = x.shape[0], x.shape[-1]
        u = rand((n,), generator, x)
        mask = self.band_mask(u, t, severity).view(n, *([1] * (x.dim() - 2)), t)
        return silenced(x, mask, spec)


@CORRUPTIONS.register()
class FreqMask(AudioKind):
    """SpecAugment-style frequency mask: a band of ``ceil(f·F)`` frequencies removed.

    Spectrogram: ``ceil(f·F)`` consecutive mel bands (second-to-last axis) set to silence.
    Waveform: the same fraction of the real-FFT bins of the whole window zeroed (a band-stop
    filter), then clipped to the range. The band is centred on a uniformly random frequency and
    clipped at the ends (nested across severities). Draws per sample: the centre.
    """

    name: ClassVar[str] = "freq_mask"
    levels: ClassVar[tuple[float, ...]] = (0.1, 0.2, 0.3, 0.4, 0.5)
    unit: ClassVar[str] = "masked fraction of the frequency axis"
    summary: ClassVar[str] = "a frequency band removed"

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        n = x.shape[0]
        u = rand((n,), generator, x)
        if is_spectrogram(spec):
            f = x.shape[-2]
            mask = self.band_mask(u, f, severity).view(n, *([1] * (x.dim() - 3)), f, 1)
            return silenced(x, mask, spec)
        t = x.shape[-1]
        spectrum = torch.fft.rfft(x.float(), dim=-1)
        nb = spectrum.shape[-1]
        mask = self.band_mask(u, nb, severity)
        spectrum = spectrum.masked_fill(mask.view(n, *([1] * (x.dim() - 2)), nb), 0)
        return clip(torch.fft.irfft(spectrum, n=t, dim=-1), spec).to(x.dtype)


@CORRUPTIONS.register()
class Background(AudioKind):
    """A synthetic non-stationary background (hum and coloured noise) mixed in at a target SNR (dB).

    The background is drawn from the generator, never taken from another sample. Per sample:
    a noise floor with a 1/f^α power spectrum (α ~ U[0.5, 1.5], pink-ish), two tones (random
    frequencies, relative amplitudes U[0.5, 2]), and a slow amplitude modulation
    1 + 0.8·sin(2π r t / T + φ) with r ~ U[0.5, 3] cycles per window; it is then scaled to the SNR
    like :class:`Noise`. Waveform: tones of 50 Hz..2 kHz at 16 kHz (:data:`TONE_RANGE`, in cycles
    per sample) plus FFT-shaped coloured noise. Spectrogram: the same recipe in the power domain
    (spectral envelope (k+1)^−α over the F bands plus two one-band-wide Gaussian peaks, times the
    modulation over time, times exponential per-bin fluctuations), mixed in the power domain.
    """

    name: ClassVar[str] = "background"
    levels: ClassVar[tuple[float, ...]] = (20.0, 15.0, 10.0, 5.0, 0.0)
    unit: ClassVar[str] = "SNR in dB"
    summary: ClassVar[str] = "synthetic hum + coloured noise with a slow swell"

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        n, t = x.shape[0], x.shape[-1]
        lead = (n, *([1] * (x.dim() - 1)))
        spectro = is_spectrogram(spec)
        dt = torch.float64 if spectro else torch.float32  # float64 for the power-domain round trip
        # per sample: α, modulation rate, modulation phase, 2 tone positions, 2 tone amplitudes, tone phase
        p = rand((n, 8), generator, x).to(dt)
        alpha = (0.5 + p[:, 0]).view(lead)
        tt = torch.arange(t, dtype=dt, device=x.device) / t
        rate, phase = (0.5 + 2.5 * p[:, 1]).view(lead), (2 * math.pi * p[:, 2]).view(lead)
        mod = 1 + 0.8 * torch.sin(2 * math.pi * rate * tt + phase)
        amps = 0.5 + 1.5 * p[:, 5:7]
        if spectro:
            fb = x.shape[-2]
            k = torch.arange(fb, dtype=dt, device=x.device).view(1, *([1] * (x.dim() - 3)), fb, 1)
            env = (k + 1) ** (-alpha)  # (N, 1.., F, 1)
            level = env.flatten(1).mean(1).view(lead)  # per sample: peaks relative to the mean envelope
            for j in range(2):
                centre = (p[:, 3 + j] * fb).view(lead)
                env = env + amps[:, j].view(lead) * level * torch.exp(-0.5 * (k - centre) ** 2)
            u = rand(x.shape, generator, x).to(dt)
            noise = env * mod * -torch.log1p(-u)
            return mix_power(x, noise, self.level(severity), spec)
        spectrum = torch.fft.rfft(randn(x.shape, generator, x), dim=-1)
        freq = torch.arange(spectrum.shape[-1], dtype=dt, device=x.device).clamp_min(1.0)
        coloured = torch.fft.irfft(spectrum * freq ** (-alpha / 2), n=t, dim=-1)
        coloured = coloured / coloured.pow(2).flatten(1).mean(1).sqrt().clamp_min(1e-12).view(lead)
        lo, hi = TONE_RANGE
        steps = torch.arange(t, dtype=dt, device=x.device)
        tones = torch.zeros_like(coloured)
        for j in range(2):
            fj = (lo + (hi - lo) * p[:, 3 + j]).view(lead)
            phase_j = (2 * math.pi * p[:, 7] + j).view(lead)
            tones = tones + amps[:, j].view(lead) * math.sqrt(2) * torch.sin(2 * math.pi * fj * steps + phase_j)
        noise = mod * (coloured + tones)
        return mix_wave(x, noise, self.level(severity), spec)
