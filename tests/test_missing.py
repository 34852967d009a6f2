import math

import numpy as np
import pytest
import torch

import mmrobust as mr
from conftest import ctx
from mmrobust.attacks import Missing


@pytest.mark.parametrize("fill", ["zeros", "mean", "noise", "drop"])
def test_fills_touch_only_the_missing_modality(toy, toy_late, fill):
    x, y = toy.test.batch(torch.arange(8))
    out = Missing("audio", fill=fill).apply(toy_late, x, y, ctx(toy))
    for m in ("image", "text"):
        assert out.x[m] is x[m]  # untouched modalities: the very same tensors
    if fill == "drop":
        assert "audio" not in out.x and out.drop == ("audio",)
    else:
        a = out.x["audio"]
        assert a.shape == x["audio"].shape and a.dtype == x["audio"].dtype
        assert a.min() >= 0 and a.max() <= 1  # valid range respected
        assert out.drop == ()


def test_fill_values(toy, toy_late):
    x, y = toy.test.batch(torch.arange(8))
    zeros = Missing(["audio", "text"], fill="zeros").apply(toy_late, x, y, ctx(toy)).x
    assert torch.all(zeros["audio"] == 0) and torch.all(zeros["text"] == 0)  # pad id 0
    mean = Missing(["audio", "text"], fill="mean").apply(toy_late, x, y, ctx(toy)).x
    torch.testing.assert_close(mean["audio"][3], toy.train.inputs["audio"].mean(0))
    assert torch.equal(mean["text"][0], toy.train.stats["text"].mode)
    n1 = Missing("text", fill="noise").apply(toy_late, x, y, ctx(toy, 1)).x["text"]
    n2 = Missing("text", fill="noise").apply(toy_late, x, y, ctx(toy, 1)).x["text"]
    assert torch.equal(n1, n2) and bool((n1 != 0).all())  # deterministic, never padding


def test_evaluate_reports_per_sample_and_summary(toy, toy_late):
    conds = [Missing(m, fill=f) for m in toy_late.modalities for f in ("zeros", "mean", "drop")]
    res = mr.evaluate(toy_late, toy.test, conds)
    assert res.n == len(toy.test)
    rows = res.rows()
    assert [r["condition"] for r in rows] == ["clean"] + [c.id for c in conds]
    clean = res.correct("clean")
    for r, c in zip(rows[1:], conds, strict=True):
        corr = res.correct(c.id)
        assert r["accuracy"] == pytest.approx(corr.mean())
        assert r["fill"] == c.fill
        assert r["attack_success_rate"] == pytest.approx((clean & ~corr).sum() / clean.sum())
    assert rows[0]["accuracy"] == pytest.approx(mr.train.__globals__["accuracy"](toy_late, toy.test))
    assert "missing[audio|fill=drop]" in res.table()
    # same seed, same per-sample outcome
    res2 = mr.evaluate(toy_late, toy.test, conds)
    for k, v in res.samples.items():
        assert np.array_equal(v, res2.samples[k])


def test_evaluate_samples_file(toy, toy_late, tmp_path):
    res = mr.evaluate(toy_late, toy.test, [Missing("image", fill="drop")])
    res.save_samples(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        assert set(z.files) == {"index", "label", "pred__clean", "pred__missing[image|fill=drop]"}


def test_missing_errors(toy):
    concat = mr.models.create("concat", toy.spec)
    with pytest.raises(mr.UnsupportedError, match="cannot drop"):
        mr.evaluate(concat, toy.test, [Missing("audio", fill="drop")])
    with pytest.raises(mr.InputError, match="unknown modality 'video'"):
        mr.evaluate(concat, toy.test, [Missing("video")])
    with pytest.raises(mr.InputError, match="unknown fill 'median'"):
        Missing("audio", fill="median")
    with pytest.raises(mr.InputError, match="every modality"):
        mr.evaluate(concat, toy.test, [Missing(["audio", "image", "text"])])
    with pytest.raises(mr.UnknownNameError, match="unknown attack 'pgdd'"):
        mr.attacks.create("pgdd")
    with pytest.raises(mr.InputError, match="duplicate conditions"):
        mr.evaluate(concat, toy.test, [Missing("audio"), Missing("audio")])


def test_attack_success_rate_nan_without_correct_samples(toy):
    from mmrobust.evaluate import _row

    clean = np.zeros(4, bool)
    r = _row({"condition": "c", "family": "missing"}, clean, clean)
    assert math.isnan(r["attack_success_rate"])
