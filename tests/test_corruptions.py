"""Random corruptions (``corruption`` condition): every kind × severity on the toy 3-modality data
(image (1, 8, 8), log-mel-like audio (1, 8, 16), text (6,)) and on a toy waveform (1, 400).

The generic tests walk the corruption-kind registry, so a newly registered kind is checked for the
contract (range, dtype, shape, untouched modalities, determinism, severity monotonicity, batch
independence) before anyone writes a dedicated test for it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mmrobust as mr
from mmrobust.attacks import EvalContext
from mmrobust.attacks.corruptions import CORRUPTIONS, SEVERITIES, Corruption, all_kinds, corruption_grid, kinds_for
from mmrobust.attacks.corruptions.audio import TOP_DB
from mmrobust.attacks.corruptions.base import nested_sizes
from mmrobust.spec import DatasetSpec, ModalitySpec

WAVE_T = 400
#: Kinds whose change from the clean input is non-decreasing in the severity for *every* sample
#: (nested hits, patches and masks; noise scaled along one fixed direction).
PER_SAMPLE_MONOTONE = {
    "gaussian_noise", "occlusion", "contrast", "brightness", "salt_pepper",
    "noise", "gain", "time_mask", "freq_mask", "background",
    "char_swap", "token_dropout", "token_replace",
}


def wave_spec() -> DatasetSpec:
    return DatasetSpec(
        modalities=(
            ModalitySpec("audio", "audio", (1, WAVE_T), low=-1.0, high=1.0),
            ModalitySpec("image", "image", (1, 8, 8), low=0.0, high=1.0),
        ),
        num_classes=3,
    )


def wave_batch(n: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Quiet tones plus a little noise (peak < 0.5, so gains up to 20 dB of attenuation never clip)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(WAVE_T, dtype=torch.float32)
    f = 0.01 + 0.1 * torch.rand(n, 1, 1, generator=g)
    wave = 0.3 * torch.sin(2 * math.pi * f * t) + 0.05 * torch.randn(n, 1, WAVE_T, generator=g)
    return {"audio": wave.clamp(-0.49, 0.49), "image": torch.rand(n, 1, 8, 8, generator=g)}


@pytest.fixture(scope="module")
def models(toy_data):
    """Untrained models: corruptions only read ``model.spec`` (training is needed for evaluate only)."""
    torch.manual_seed(0)
    return {"toy": mr.models.create("late", toy_data.spec).eval(), "wave": mr.models.create("late", wave_spec()).eval()}


@pytest.fixture(scope="module")
def batches(toy_data):
    return {"toy": toy_data.test.batch(torch.arange(len(toy_data.test)))[0], "wave": wave_batch()}


CASES = [("toy", m, k) for m, k in ((m, k) for m in ("image", "audio", "text") for k in all_kinds(m))] + [
    ("wave", "audio", k) for k in all_kinds("audio")
]
CASE_IDS = [f"{s}-{m}-{k}" for s, m, k in CASES]


def ctx(seed: int = 0) -> EvalContext:
    return EvalContext(stats={}, generator=torch.Generator().manual_seed(seed))


def run(models, batches, setup, m, kind, severity, seed=0, x=None):
    cond = mr.attacks.create("corruption", modalities=m, kind=kind, severity=severity)
    x = batches[setup] if x is None else x
    n = next(iter(x.values())).shape[0]
    return cond.apply(models[setup], x, torch.zeros(n, dtype=torch.long), ctx(seed))


# ------------------------------------------------------------------------------ registry and grid
def test_registered_condition_and_stable_id():
    c = mr.attacks.create("corruption", modalities="image", kind="gaussian_noise", severity=3)
    assert isinstance(c, Corruption) and c.family == "corruption"
    assert c.id == "corruption[image|kind=gaussian_noise,severity=3]"
    assert c.describe().items() >= {
        "condition": c.id, "family": "corruption", "name": "corruption", "modalities": "image",
        "kind": "gaussian_noise", "severity": 3,
    }.items()
    assert getattr(c, "label", c.id) == c.id  # no defaults to hide: tables show kind and severity
    assert mr.attacks.create("corruption", modalities=["audio"], kind="noise", severity=5).id == (
        "corruption[audio|kind=noise,severity=5]"
    )


def test_kinds_for_and_grid(toy_data):
    spec = toy_data.spec
    assert kinds_for(spec["image"]) == ["gaussian_noise", "blur", "occlusion", "contrast", "brightness", "salt_pepper"]
    assert kinds_for(spec["audio"]) == ["noise", "time_shift", "gain", "time_mask", "freq_mask", "background"]
    assert kinds_for(spec["text"]) == ["char_swap", "char_delete", "token_dropout", "token_replace"]
    assert kinds_for(wave_spec()["audio"]) == kinds_for(spec["audio"])
    assert kinds_for(ModalitySpec("f", "features", (5,))) == []
    # no pad id: the kinds that write padding are unavailable; a one-id vocabulary cannot be replaced
    nopad = ModalitySpec("t", "text", (6,), dtype="int64", vocab_size=12)
    assert kinds_for(nopad) == ["char_swap", "token_replace"]
    assert "token_replace" not in kinds_for(ModalitySpec("t", "text", (6,), dtype="int64", vocab_size=2, pad_id=0))
    assert kinds_for(ModalitySpec("a", "audio", (1, 8, 16))) == []  # a spectrogram needs its dB range
    assert kinds_for(ModalitySpec("a", "audio", (1, 99))) == kinds_for(spec["audio"])  # unbounded waveform: fine
    grid = corruption_grid(spec)
    assert len(grid) == (6 + 6 + 4) * 5 and len(set(grid)) == len(grid)
    assert grid[0] == ("image", "gaussian_noise", 1) and grid[-1] == ("text", "token_replace", 5)
    assert corruption_grid(spec["audio"], severities=(1, 3)) == [("audio", k, s) for k in kinds_for(spec["audio"])
                                                                 for s in (1, 3)]
    assert {m for m, _, _ in corruption_grid(spec, modalities="text")} == {"text"}
    model = mr.models.create("late", spec)
    for m, k, s in grid:  # every listed triple builds and passes check()
        mr.attacks.create("corruption", modalities=m, kind=k, severity=s).check(model)


# ------------------------------------------------------------------------------ contract, per kind
@pytest.mark.parametrize(("setup", "m", "kind"), CASES, ids=CASE_IDS)
def test_range_dtype_shape_untouched_info(models, batches, setup, m, kind):
    x = batches[setup]
    spec = models[setup].spec[m]
    for s in SEVERITIES:
        out = run(models, batches, setup, m, kind, s)
        a = out.x[m]
        assert a.shape == x[m].shape and a.dtype == x[m].dtype and not a.requires_grad
        if spec.is_tokens:
            assert int(a.min()) >= 0 and int(a.max()) < spec.vocab_size
        else:
            assert torch.isfinite(a).all()
            assert float(a.min()) >= spec.low and float(a.max()) <= spec.high
        for other in x:
            if other != m:
                assert out.x[other] is x[other]  # the very same tensor, bit-identical
        assert x[m] is batches[setup][m] and out.drop == () and out.embeddings == {}
        assert set(out.info) == {f"change/{m}"} and out.info[f"change/{m}"].shape == (a.shape[0],)
        if spec.is_tokens:
            ref = (a != x[m]).float().mean(1)
        else:
            ref = (a.double() - x[m].double()).flatten(1).norm(dim=1).float()
        torch.testing.assert_close(out.info[f"change/{m}"], ref)


@pytest.mark.parametrize(("setup", "m", "kind"), CASES, ids=CASE_IDS)
def test_deterministic_given_seed(models, batches, setup, m, kind):
    for s in (1, 5):
        a = run(models, batches, setup, m, kind, s, seed=3).x[m]
        b = run(models, batches, setup, m, kind, s, seed=3).x[m]
        c = run(models, batches, setup, m, kind, s, seed=4).x[m]
        assert torch.equal(a, b)
        if CORRUPTIONS.get(kind).random:
            assert not torch.equal(a, c)
        else:
            assert torch.equal(a, c)


@pytest.mark.parametrize(("setup", "m", "kind"), CASES, ids=CASE_IDS)
def test_sample_does_not_depend_on_the_rest_of_the_batch(models, batches, setup, m, kind):
    x = batches[setup]
    other = {k: v.clone() for k, v in x.items()}
    if other[m].is_floating_point():
        other[m][1:] = other[m][1:].flip(0) * 0.5 + (0.0 if setup == "wave" else 0.2)
    else:
        other[m][1:] = other[m][1:].flip(0)
    a = run(models, batches, setup, m, kind, 4, seed=7).x[m]
    b = run(models, batches, setup, m, kind, 4, seed=7, x=other).x[m]
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize(("setup", "m", "kind"), CASES, ids=CASE_IDS)
def test_severity_monotone(models, batches, setup, m, kind):
    changes = torch.stack([run(models, batches, setup, m, kind, s).info[f"change/{m}"] for s in SEVERITIES])
    if setup == "wave" and kind == "time_shift":
        # Any shift of a few samples decorrelates a waveform, so its l2 change saturates: check the shift instead.
        x = batches[setup][m]
        lags = []
        for s in SEVERITIES:
            a = run(models, batches, setup, m, kind, s).x[m]
            lag = [next(d for d in range(1, WAVE_T) if torch.equal(a[i, :, d:], x[i, :, :-d])
                        or torch.equal(a[i, :, :-d], x[i, :, d:])) for i in range(a.shape[0])]
            lags.append(lag[0])
            assert len(set(lag)) == 1  # the same amount for every sample
        assert lags == sorted(set(lags)) and len(lags) == 5
        return
    means = changes.mean(1)
    assert bool((means[1:] > means[:-1]).all()), means  # strictly growing on average
    assert float(means[0]) > 0
    if kind in PER_SAMPLE_MONOTONE:
        assert bool((changes[1:] >= changes[:-1] - 1e-5).all())  # coupled draws: per-sample monotone


# ------------------------------------------------------------------------------ references
def test_text_kinds_against_brute_force(models, batches):
    x = batches["toy"]["text"]
    pad = 0
    for s in SEVERITIES:
        swap = run(models, batches, "toy", "text", "char_swap", s).x["text"]
        dele = run(models, batches, "toy", "text", "char_delete", s).x["text"]
        drop = run(models, batches, "toy", "text", "token_dropout", s).x["text"]
        repl = run(models, batches, "toy", "text", "token_replace", s).x["text"]
        for i in range(x.shape[0]):
            src = x[i].tolist()
            words = [t for t in src if t != pad]
            # swaps: pads stay put; the content is the same multiset, permuted by disjoint adjacent swaps
            sw = swap[i].tolist()
            assert [a == pad for a in sw] == [a == pad for a in src] and sorted(sw) == sorted(src)
            diff = [j for j in range(len(src)) if sw[j] != src[j]]
            assert all(sw[j] == src[j + 1] and sw[j + 1] == src[j] for j in diff[::2])
            # deletion: a subsequence of the content, shifted left, padded at the end
            de = dele[i].tolist()
            kept = [t for t in de if t != pad]
            assert de == kept + [pad] * (len(de) - len(kept))
            it = iter(words)
            assert all(t in it for t in kept)  # subsequence
            # dropout: only content positions, replaced by padding in place
            dr = drop[i].tolist()
            assert all(d == a or (d == pad and a != pad) for d, a in zip(dr, src, strict=True))
            # replacement: a changed token is a different non-pad id; pads untouched
            rp = repl[i].tolist()
            assert all(r == a or (r != pad and a != pad) for r, a in zip(rp, src, strict=True))
    # at p = 1 every candidate pair is swapped (toy sequences: 5 content tokens, then 1 pad)
    full = run(models, batches, "toy", "text", "char_swap", 5).x["text"]
    assert (full[:, 5] == pad).all()


def test_token_replace_covers_every_other_id(models, batches):
    one = {k: v[:1].expand(4000, *v.shape[1:]).clone() for k, v in batches["toy"].items()}
    out = run(models, batches, "toy", "text", "token_replace", 5, x=one).x["text"]
    orig = int(one["text"][0, 0])
    assert set(out[:, 0].tolist()) == set(range(1, 12))  # every non-pad id (the original: unhit samples)
    changed = out[:, 0][out[:, 0] != orig]
    counts = np.delete(np.bincount(changed.numpy(), minlength=12)[1:], orig - 1)
    assert counts.min() > 0.6 * counts.mean()  # roughly uniform over the 10 other ids
    assert abs(len(changed) / 4000 - 0.6) < 0.05  # p = 0.6 at severity 5


def test_audio_snr_and_gain_are_exact(models, batches):
    spec_w = wave_spec()["audio"]
    x = batches["wave"]["audio"]
    for kind in ("noise", "background"):
        for s, snr in zip(SEVERITIES, CORRUPTIONS.get(kind).levels, strict=True):
            a = run(models, batches, "wave", "audio", kind, s).x["audio"]
            noise = a - x
            if snr >= 10:  # no clipping at these SNRs: the achieved SNR is the target
                got = 10 * torch.log10(x.pow(2).mean((1, 2)) / noise.pow(2).mean((1, 2)))
                torch.testing.assert_close(got, torch.full_like(got, snr), atol=1e-3, rtol=0)
    for s, g in zip(SEVERITIES, CORRUPTIONS.get("gain").levels, strict=True):
        a = run(models, batches, "wave", "audio", "gain", s).x["audio"]
        ratio = 20 * torch.log10(a.norm(dim=(1, 2)) / x.norm(dim=(1, 2)))
        quiet = ratio < 0
        torch.testing.assert_close(ratio[quiet], torch.full_like(ratio[quiet], -g), atol=1e-4, rtol=0)
        assert bool((ratio[~quiet] <= g + 1e-4).all()) and quiet.any() and (~quiet).any()
    assert spec_w.low == -1.0
    # spectrogram: the gain is a shift by g / TOP_DB of the range; noise is mixed in the power domain
    xs = batches["toy"]["audio"] * 0.5  # ≤ −40 dB: adding noise never reaches the 0 dB ceiling
    toy = {**batches["toy"], "audio": xs}
    a = run(models, batches, "toy", "audio", "gain", 2, x=toy).x["audio"]
    d = a - xs
    inside = (a > 0) & (a < 1)
    torch.testing.assert_close(d[inside].abs(), torch.full_like(d[inside], 6.0 / TOP_DB), atol=1e-6, rtol=0)
    a = run(models, batches, "toy", "audio", "noise", 3, x=toy).x["audio"]
    power = lambda v: torch.pow(10.0, (v.double() - 1) * TOP_DB / 10)  # noqa: E731
    added = (power(a) - power(xs)).flatten(1).mean(1)
    target = power(xs).flatten(1).mean(1) / 10 ** (10.0 / 10)
    torch.testing.assert_close(added, target, rtol=1e-3, atol=0)


def test_masks_shifts_and_patches(models, batches):
    x = batches["toy"]
    for s in SEVERITIES:
        tm = run(models, batches, "toy", "audio", "time_mask", s).x["audio"]
        masked = (tm != x["audio"]).any(2).squeeze(1)  # (N, T): masked frames (value 0 = silence)
        assert bool((tm.transpose(-1, -2)[masked.unsqueeze(1)] == 0).all())
        widths = masked.sum(1)
        full = nested_sizes(16, CORRUPTIONS.get("time_mask").levels)[s - 1]  # 1, 2, 4, 5, 7 frames
        assert int(widths.max()) == full and bool((widths >= 1).all())  # clipped at the ends only
        fm = run(models, batches, "toy", "audio", "freq_mask", s).x["audio"]
        bands = (fm == 0).all(3).squeeze(1) & (x["audio"] != 0).any(3).squeeze(1)
        assert bands.any(1).all()  # every sample lost a band
        oc = run(models, batches, "toy", "image", "occlusion", s).x["image"]
        hit = (oc != x["image"]).squeeze(1)
        rows, cols = hit.any(2), hit.any(1)
        assert int(rows.sum(1).max()) == s and int(cols.sum(1).max()) == s  # 8 px image: side s px
        for i in range(4):  # contiguous rectangle of one value
            r, c = rows[i].nonzero().flatten(), cols[i].nonzero().flatten()
            if len(r):
                assert int(r[-1] - r[0]) + 1 == len(r) and int(c[-1] - c[0]) + 1 == len(c)
                patch = oc[i, 0, int(r[0]) : int(r[-1]) + 1, int(c[0]) : int(c[-1]) + 1]
                assert torch.all(patch == patch[0, 0])
    # waveform frequency mask = a band-stop: the output spectrum has a band of exact zeros
    xw = batches["wave"]["audio"]
    a = run(models, batches, "wave", "audio", "freq_mask", 3).x["audio"]
    spec = torch.fft.rfft(a.double(), dim=-1).abs().squeeze(1)
    zeros, width = (spec < 1e-4).sum(1), math.ceil(0.3 * (WAVE_T // 2 + 1))  # 61 of the 201 bins
    assert int(zeros.max()) == width and int(zeros.min()) >= width // 2  # centred band, clipped at the ends
    assert float(torch.fft.rfft(xw.double(), dim=-1).abs().min()) > 1e-4  # the clean input had no such band


def test_blur_contrast_brightness_formulas(models, batches):
    x = batches["toy"]["image"]
    b = run(models, batches, "toy", "image", "brightness", 3).x["image"]
    torch.testing.assert_close(b, (x + 0.3).clamp(0, 1))
    c = run(models, batches, "toy", "image", "contrast", 2).x["image"]
    mu = x.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(c, mu + 0.45 * (x - mu))
    bl = run(models, batches, "toy", "image", "blur", 3).x["image"]  # σ = 1 px, radius 3, replicate
    k = torch.exp(-torch.arange(-3.0, 4.0) ** 2 / 2)
    k = k / k.sum()
    ref = torch.zeros_like(x)
    for i in range(8):
        for j in range(8):
            for di in range(-3, 4):
                for dj in range(-3, 4):
                    ii, jj = min(max(i + di, 0), 7), min(max(j + dj, 0), 7)
                    ref[:, :, i, j] += k[di + 3] * k[dj + 3] * x[:, :, ii, jj]
    torch.testing.assert_close(bl, ref, atol=1e-6, rtol=0)
    sp = run(models, batches, "toy", "image", "salt_pepper", 5).x["image"]
    hit = sp != x
    assert bool(((sp[hit] == 0) | (sp[hit] == 1)).all())
    assert 0.15 < float(hit.float().mean()) < 0.35  # p = 0.27 (minus dots equal to the pixel)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True, "3", None])
def test_bad_severity(severity):
    with pytest.raises(mr.InputError, match=r"severity must be an integer in 1\.\.5"):
        mr.attacks.create("corruption", modalities="image", kind="blur", severity=severity)


def test_unknown_kind_suggests():
    with pytest.raises(mr.InputError, match=r"unknown kind 'gausian_noise'\. Did you mean 'gaussian_noise'") as e:
        mr.attacks.create("corruption", modalities="image", kind="gausian_noise", severity=1)
    assert "audio: noise, time_shift" in str(e.value) and "text: char_swap" in str(e.value)
    with pytest.raises(mr.InputError, match="unknown kind 'xyz'"):
        mr.attacks.create("corruption", modalities="image", kind="xyz", severity=1)
    with pytest.raises(TypeError, match="severity"):
        mr.attacks.create("corruption", modalities="image", kind="blur")  # severity is required


def test_kind_modality_mismatch(toy_data, models):
    model = models["toy"]
    with pytest.raises(mr.InputError, match=r"'blur' is an image corruption and 'audio' is an audio modality.*"
                       r"kinds for audio modality 'audio': noise, time_shift, gain"):
        mr.evaluate(model, toy_data.test,
                    [mr.attacks.create("corruption", modalities="audio", kind="blur", severity=1)])
    with pytest.raises(mr.InputError, match="Did you mean 'gaussian_noise'"):
        mr.attacks.create("corruption", modalities="image", kind="noise", severity=1).check(model)
    with pytest.raises(mr.InputError, match="Did you mean 'noise'"):
        mr.attacks.create("corruption", modalities="audio", kind="gaussian_noise", severity=1).check(model)
    with pytest.raises(mr.InputError, match="kinds for text modality 'text': char_swap"):
        mr.attacks.create("corruption", modalities=["text"], kind="gain", severity=1).apply(
            model, batches_of(toy_data), torch.zeros(2, dtype=torch.long), ctx())
    with pytest.raises(mr.InputError, match="unknown modality 'video'"):
        mr.attacks.create("corruption", modalities="video", kind="blur", severity=1).check(model)
    feat = mr.models.create("late", DatasetSpec((ModalitySpec("f", "features", (5,)),
                                                 ModalitySpec("g", "features", (3,))), num_classes=2))
    with pytest.raises(mr.InputError, match="no corruption kind exists for features modality 'f'"):
        mr.attacks.create("corruption", modalities="f", kind="gaussian_noise", severity=1).check(feat)


def batches_of(data):
    return data.test.batch(torch.arange(2))[0]


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_severity_5_hurts_on_average(toy_data, toy_late):
    conds = [mr.attacks.create("corruption", modalities=m, kind=k, severity=5)
             for m, k, _ in corruption_grid(toy_data.spec, severities=(5,))]
    res = mr.evaluate(toy_late, toy_data.test, conds, seed=1)
    clean = res.accuracy("clean")
    accs = [res.accuracy(c.id) for c in conds]
    assert np.mean(accs) <= clean
    assert min(accs) < clean  # at least one kind really hurts
    rows = res.rows()[1:]
    assert [r["kind"] for r in rows] == [c.kind for c in conds] and {r["severity"] for r in rows} == {5}
    for c in conds:
        assert res.samples[f"info/{c.id}/change/{c.modalities[0]}"].shape == (res.n,)
    again = mr.evaluate(toy_late, toy_data.test, conds[:3], seed=1)
    for c in conds[:3]:
        assert np.array_equal(again.samples[f"pred/{c.id}"], res.samples[f"pred/{c.id}"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_result_on_gpu(models, batches):
    for setup, m, kind in CASES:
        cpu = run(models, batches, setup, m, kind, 4).x[m]
        gpu_x = {k: v.cuda() for k, v in batches[setup].items()}
        gpu = run(models, batches, setup, m, kind, 4, x=gpu_x).x[m]
        assert gpu.device.type == "cuda"
        if cpu.is_floating_point():
            torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
        else:
            assert torch.equal(gpu.cpu(), cpu)
