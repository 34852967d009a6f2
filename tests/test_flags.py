"""Reliability flags (methods.md §8): broken models raise the right flag, sound ones raise none."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmrobust as mr
from mmrobust.reliability import FLAG_DOCS, ReliabilityChecks


class Quantised(nn.Module):
    """Rounds its input to 5 levels before the wrapped encoder: a zero gradient almost everywhere."""

    def __init__(self, enc: nn.Module) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, x):
        return self.enc(torch.round(x * 4) / 4)


class InferenceDropout(nn.Module):
    """Dropout that stays on in eval mode (a randomised defence)."""

    def __init__(self, enc: nn.Module) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, x):
        return self.enc(F.dropout(x, 0.3, training=True))


class NanGradient(nn.Module):
    """Finite outputs, NaN input gradients (the ``where(sqrt)`` trap)."""

    def __init__(self, enc: nn.Module) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, x):
        return self.enc(x + torch.where(x > 2, torch.sqrt(x - 2), torch.zeros_like(x)))


def wrapped(model, modality, cls):
    m = copy.deepcopy(model)
    m.encoders[modality] = cls(m.encoders[modality])
    return m.eval()


def pgd(modality, eps=0.1, **kw):
    return mr.attacks.create("pgd", modalities=modality, eps=eps, steps=10, token_surface="embedding", **kw)


def names(result, condition=None):
    return {f["name"] + (f"({f['modality']})" if f["modality"] else "") for f in result.flags
            if condition is None or f["condition"] == condition}


def test_every_flag_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "flags.md").read_text()
    for name in FLAG_DOCS:
        assert f"`{name}`" in doc, name


def test_sound_model_raises_no_flag(toy_late, toy_data):
    conds = [pgd(m, eps) for m in toy_late.modalities for eps in (0.05, 0.2)]
    conds.append(mr.attacks.create("pgd", modalities="each", eps=0.1, steps=10, token_surface="embedding"))
    res = mr.evaluate(toy_late, toy_data.test, conds)
    assert res.flags == []
    assert all(r["flags"] == "" for r in res.rows())


def test_quantisation_raises_zero_gradients_on_that_modality(toy_late, toy_data):
    q = wrapped(toy_late, "image", Quantised)
    atk_img, atk_aud = pgd("image"), pgd("audio")
    res = mr.evaluate(q, toy_data.test, [atk_img, atk_aud])
    assert "zero_gradients(image)" in names(res, atk_img.id)
    assert names(res, atk_aud.id) == set()
    row = next(r for r in res.rows() if r["condition"] == atk_img.id)
    assert "zero_gradients(image)" in row["flags"]
    assert "zero_gradients" in res.flag_report()


def test_inference_dropout_raises_randomised_model(toy_late, toy_data):
    d = wrapped(toy_late, "audio", InferenceDropout)
    res = mr.evaluate(d, toy_data.test, [pgd("image")])
    assert "randomised_model" in names(res, "")
    # model-level flags sit on the clean row
    assert "randomised_model" in res.rows()[0]["flags"]
    # without attacks the model checks still run
    assert "randomised_model" in names(mr.evaluate(d, toy_data.test, []))


def test_nan_gradients_flagged(toy_late, toy_data):
    nan = wrapped(toy_late, "audio", NanGradient)
    res = mr.evaluate(nan, toy_data.test, [pgd("audio")], checks=ReliabilityChecks())
    assert "nonfinite_gradients(audio)" in names(res)


def test_probability_outputs_flagged(toy_late, toy_data):
    p = copy.deepcopy(toy_late)
    p.head = nn.Sequential(p.head, nn.Softmax(dim=1))
    # late fusion's head sits after the fused logits; check the raw outputs first
    with torch.no_grad():
        out = p(toy_data.test.batch(torch.arange(8))[0])
    if not torch.allclose(out.sum(1), torch.ones(8)):
        pytest.skip("this fusion does not route through model.head")
    assert "probability_outputs" in names(mr.evaluate(p, toy_data.test, []))


def test_weak_attack_is_beaten_by_noise(toy_late, toy_data):
    weak = mr.attacks.create("pgd", modalities="image", eps=0.6, steps=1, alpha=1e-6, random_start=False)
    res = mr.evaluate(toy_late, toy_data.test, [weak])
    assert "noise_beats_attack" in names(res, weak.id)
    assert mr.evaluate(toy_late, toy_data.test, [weak], checks=False).flags == []


def test_unbounded_attack_fails_when_every_modality_is_masked(toy_data):
    two = toy_data.spec.subset(["image", "audio"])
    m = mr.models.create("late", two)
    mr.train(m, toy_data, epochs=2, quiet=True)
    for k in ("image", "audio"):
        m.encoders[k] = Quantised(m.encoders[k])
    m.eval()
    res = mr.evaluate(m, toy_data.test, [pgd("image")])
    assert "unbounded_attack_fails" in names(res, "")
    assert "zero_gradients(image)" in names(res)


def test_monotone_check_on_rows():
    chk = ReliabilityChecks()
    base = {"family": "attack", "modalities": "audio", "norm": "linf", "steps": 10, "n": 200}
    rows = [
        {**base, "condition": "pgd[a|eps=0.1]", "eps": 0.1, "accuracy": 0.60},
        {**base, "condition": "pgd[a|eps=0.2]", "eps": 0.2, "accuracy": 0.70},  # rises: flagged
        {**base, "condition": "pgd[a|eps=0.3]", "eps": 0.3, "accuracy": 0.695},  # falls: fine
        {**base, "condition": "pgd[a|eps=0.3,n=l2]", "eps": 0.3, "norm": "l2", "accuracy": 0.99},  # other group
    ]
    flags = chk.monotone_flags(rows)
    assert [(f.name, f.condition) for f in flags] == [("non_monotone", "pgd[a|eps=0.2]")]
    assert flags[0].value == pytest.approx(0.10)
    # a rise of half a sample's worth is tolerated, as are rises within the tolerance
    rows[1]["accuracy"] = 0.605
    rows[2]["accuracy"] = 0.60
    assert chk.monotone_flags(rows) == []
    # more steps must not help the model either
    steps = [{**base, "condition": f"pgd[s={s}]", "steps": s, "eps": 0.1, "accuracy": a}
             for s, a in ((5, 0.5), (20, 0.58))]
    assert [f.name for f in chk.monotone_flags(steps)] == ["non_monotone"]
