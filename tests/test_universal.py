"""Universal per-modality perturbation (GEOM, arXiv 2203.12122) on the toy 3-modality dataset.

The generic threat-model invariants (budget, valid range, untouched modalities, ε = 0, evaluate)
run on it from ``tests/test_attacks.py``; here: one δ shared by every sample and batch, the
projection onto the ε-ball after every update, fitting on a chosen split, determinism, strength
relative to per-sample PGD, and errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mmrobust as mr
from conftest import ctx
from mmrobust.attacks import Universal
from mmrobust.attacks.gradient import LOSSES, Objective
from mmrobust.attacks.threat import sample_norms
from mmrobust.spec import DatasetSpec, ModalitySpec

THREATS = {
    "audio-linf": {"modalities": "audio", "norm": "linf", "eps": 0.1},
    "image+audio-l2": {"modalities": ["image", "audio"], "norm": "l2", "eps": {"image": 0.5, "audio": 1.0}},
    "image+audio-joint": {"modalities": ["image", "audio"], "norm": "l2", "budget": "joint", "eps": 1.0},
}
TOL = 1e-6


def attacked(threat):
    m = threat["modalities"]
    return [m] if isinstance(m, str) else list(m)


def delta_norms(delta, threat):
    """Norms of a fitted δ {m: per-sample shape}: per modality, and joint for joint budgets."""
    per = {m: float(sample_norms(d[None], threat["norm"])[0]) for m, d in delta.items()}
    if threat.get("budget") == "joint":
        per["joint"] = math.sqrt(sum(v**2 for v in per.values()))
    return per


def eps_of(threat, key):
    return threat["eps"][key] if isinstance(threat["eps"], dict) else threat["eps"]


# ------------------------------------------------------------------------------- one shared δ
def test_same_delta_for_every_sample_and_batch_in_evaluate(toy_late, toy_data, monkeypatch):
    threat = {"modalities": ["image", "audio"], "norm": "linf", "eps": 0.15}
    atk = mr.attacks.create("universal", **threat)
    seen = []
    apply = Universal.apply

    def spy(self, model, x, y, ctx):
        out = apply(self, model, x, y, ctx)
        seen.append((x, out))
        return out

    monkeypatch.setattr(Universal, "apply", spy)
    res = mr.evaluate(toy_late, toy_data.test, [atk], batch_size=32)  # three batches
    assert len(seen) == 3 and atk.fitted_by_ == "prepare"
    delta = atk.delta_
    assert set(delta) == {"image", "audio"} and delta["audio"].shape == (1, 8, 16)
    for m in ("image", "audio"):
        assert float(delta[m].abs().max()) > 0.5 * 0.15  # δ moved
        assert float(delta[m].abs().max()) <= 0.15 + TOL
    for x, out in seen:
        for m in ("image", "audio"):
            moved = out.x[m] - x[m]
            inside = ((x[m] + delta[m]) > 0) & ((x[m] + delta[m]) < 1)  # coordinates where no clipping occurs
            assert int(inside.sum()) > 0.5 * inside.numel()
            torch.testing.assert_close(moved[inside], delta[m].expand_as(moved)[inside], rtol=0, atol=TOL)
            assert bool((moved.abs() <= delta[m].abs() + TOL).all())  # clipping only shrinks it
        assert out.x["text"] is x["text"]
    # The per-sample predictions are those of clip(x + δ) for the whole split, whatever the batch size.
    x, _ = toy_data.test.batch(torch.arange(len(toy_data.test)))
    with torch.no_grad():
        pred = toy_late({**x, **{m: (x[m] + delta[m]).clamp(0, 1) for m in delta}}).argmax(1).numpy()
    assert np.array_equal(res.samples[f"pred/{atk.id}"], pred)
    again = mr.evaluate(toy_late, toy_data.test, [mr.attacks.create("universal", **threat)], batch_size=96,
                        checks=False)
    assert np.array_equal(again.samples[f"pred/{atk.id}"], pred)


def test_text_through_embeddings(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    atk = mr.attacks.create("universal", modalities="text", norm="l2", eps=1.0, token_surface="embedding")
    atk.fit(toy_late, toy_data.test)
    with torch.no_grad():
        clean = toy_late.embed("text", x["text"])
    delta = atk.delta_["text"]
    assert delta.shape == clean.shape[1:]  # (L, D)
    out = atk.apply(toy_late, x, y, ctx(toy_data))
    assert out.x["text"] is x["text"]
    pad = x["text"] == toy_late.spec["text"].pad_id
    emb = out.embeddings["text"]
    assert torch.equal(emb[pad], clean[pad])  # pad positions are masked per sample
    torch.testing.assert_close(emb - clean, torch.where(pad[..., None], 0.0, delta.expand_as(clean)))
    assert float(out.info["norm/text"].max()) <= 1.0 + TOL
    assert float(delta.norm()) <= 1.0 + TOL


# ------------------------------------------------------------------------------------- projection
@pytest.mark.parametrize("threat", THREATS.values(), ids=THREATS.keys())
def test_projected_after_every_update_and_at_the_end(threat, toy_late, toy_data, monkeypatch):
    kw = {"epochs": 3, "batch_size": 32, "alpha": 0.5 * eps_of(threat, "audio")}  # large steps: they overshoot
    atk = mr.attacks.create("universal", **threat, **kw).fit(toy_late, toy_data.train)
    n_updates = 3 * math.ceil(len(toy_data.train) / 32)
    keys = [f"norm/{m}" for m in attacked(threat)] + (["norm/joint"] if threat.get("budget") == "joint" else [])
    assert set(atk.trace_) == {"loss", *keys}
    joint = threat.get("budget") == "joint"
    for key in keys:
        bound = eps_of(threat, key.split("/")[1]) if key != "norm/joint" else threat["eps"]
        trace = atk.trace_[key]
        assert trace.shape == (n_updates,)
        assert float(trace.max()) <= bound + TOL  # every intermediate δ lies in the ball
        if key == "norm/joint" or not joint:  # ... and reaches its boundary (the check is not vacuous)
            assert float(trace.max()) >= bound - 1e-3
    for key, v in delta_norms(atk.delta_, threat).items():
        assert v <= (threat["eps"] if key == "joint" else eps_of(threat, key)) + TOL
    # Regressions. Steps without the projection (only the final one kept): the trace catches it.
    key = "joint" if joint else attacked(threat)[-1]
    bound = threat["eps"] if joint else eps_of(threat, key)

    def unprojected_update(self, threat, delta, grads, alpha):
        d = threat.direction(grads)
        return {m: delta[m] + alpha[m] * d[m] for m in threat.modalities}

    with monkeypatch.context() as mp:
        mp.setattr(Universal, "_update", unprojected_update)
        bad = mr.attacks.create("universal", **threat, **kw).fit(toy_late, toy_data.train)
    assert float(bad.trace_[f"norm/{key}"].max()) > 1.5 * bound
    assert delta_norms(bad.delta_, threat)[key] <= bound + TOL  # the final projection alone hides it
    # No projection at all (the reference notebooks): ‖δ‖ leaves the ball.
    monkeypatch.setattr(Universal, "_project", staticmethod(lambda threat, delta: dict(delta)))
    bad = mr.attacks.create("universal", **threat, **kw).fit(toy_late, toy_data.train)
    assert delta_norms(bad.delta_, threat)[key] > 1.5 * bound
    assert float(bad.trace_[f"norm/{key}"].max()) > 1.5 * bound


# --------------------------------------------------------------------------------- fitting
def test_fit_on_another_split_is_kept_by_evaluate(toy_late, toy_data):
    atk = mr.attacks.create("universal", modalities="audio", eps=0.1)
    assert atk.fit(toy_late, toy_data.train) is atk and atk.fitted_by_ == "fit"
    fitted = atk.delta_["audio"].clone()
    res = mr.evaluate(toy_late, toy_data.test, [atk], checks=False)
    assert torch.equal(atk.delta_["audio"], fitted)  # prepare did not refit
    x, _ = toy_data.test.batch(torch.arange(len(toy_data.test)))
    with torch.no_grad():
        pred = toy_late({**x, "audio": (x["audio"] + fitted).clamp(0, 1)}).argmax(1).numpy()
    assert np.array_equal(res.samples[f"pred/{atk.id}"], pred)
    atk.reset()
    assert atk.delta_ is None and atk.fitted_by_ is None
    mr.evaluate(toy_late, toy_data.test, [atk], checks=False)
    assert atk.fitted_by_ == "prepare" and not torch.equal(atk.delta_["audio"], fitted)


def test_apply_without_fit_fits_on_the_batch(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    atk = mr.attacks.create("universal", modalities=["image", "audio"], norm="linf", eps=0.1)
    out = atk.apply(toy_late, x, y, ctx(toy_data, 5))
    assert atk.delta_ is None  # no state kept from a single batch
    # the same δ as a fit on a split holding exactly this batch, with the same generator
    ref = mr.attacks.create("universal", modalities=["image", "audio"], norm="linf", eps=0.1)
    ref.fit(toy_late, toy_data.test, torch.Generator().manual_seed(5))
    out2 = ref.apply(toy_late, x, y, ctx(toy_data, 123))  # fitted: the generator is not used any more
    for m in ("image", "audio"):
        assert torch.equal(out.x[m], out2.x[m])
    assert torch.equal(out.info["success"], out2.info["success"])


def test_fit_increases_the_mean_loss_on_its_data(toy_late, toy_data):
    atk = mr.attacks.create("universal", modalities=["image", "audio"], eps=0.2).fit(toy_late, toy_data.train)
    threat = atk.resolve(toy_late)
    x, y = toy_data.train.batch(torch.arange(len(toy_data.train)))
    obj = Objective(toy_late, x, y, threat, LOSSES["ce"])
    delta = {m: d[None] for m, d in atk.delta_.items()}
    with torch.no_grad():
        clean = float(obj.score(obj.origin)[0].mean())
        adv = float(obj.score(Universal._perturbed(obj, delta))[0].mean())
    assert adv > clean + 0.2


def test_deterministic(toy_late, toy_data):
    threat = THREATS["image+audio-joint"]
    fits = [
        mr.attacks.create("universal", **threat, epochs=3, random_start=True).fit(
            toy_late, toy_data.train, torch.Generator().manual_seed(s)
        )
        for s in (0, 0, 1)
    ]
    for m in ("image", "audio"):
        assert torch.equal(fits[0].delta_[m], fits[1].delta_[m])
        assert not torch.equal(fits[0].delta_[m], fits[2].delta_[m])
    a, b = (
        mr.evaluate(toy_late, toy_data.test, [mr.attacks.create("universal", **threat)], seed=3, checks=False)
        for _ in range(2)
    )
    key = next(k for k in a.samples if k.startswith("pred/universal"))
    assert np.array_equal(a.samples[key], b.samples[key])


# --------------------------------------------------------------------------------- strength
@pytest.mark.parametrize("threat", THREATS.values(), ids=THREATS.keys())
def test_weaker_than_or_equal_to_per_sample_pgd(threat, toy_late, toy_data):
    uni = mr.attacks.create("universal", **threat)
    pgd = mr.attacks.create("pgd", **threat)
    res = mr.evaluate(toy_late, toy_data.test, [uni, pgd], checks=False)
    assert res.accuracy(uni.id) >= res.accuracy(pgd.id)
    assert res.accuracy(pgd.id) < res.accuracy("clean")


def test_large_eps_reduces_accuracy(toy_late, toy_data):
    atk = mr.attacks.create("universal", modalities=["image", "audio"], norm="linf", eps=0.4)
    res = mr.evaluate(toy_late, toy_data.test, [atk], checks=False)
    assert res.accuracy(atk.id) < res.accuracy("clean") - 0.2
    assert float(res.samples[f"info/{atk.id}/norm/audio"].max()) <= 0.4 + TOL


def test_each_fits_one_delta_per_modality(toy_late, toy_data, toy_batch):
    atk = mr.attacks.create(
        "universal", modalities="each", eps={"image": 0.1, "audio": 0.1, "text": 0.5}, token_surface="embedding"
    )
    res = mr.evaluate(toy_late, toy_data.test, [atk], checks=False)
    shapes = {m: tuple(atk.single(m).delta_[m].shape) for m in toy_late.modalities}
    assert shapes["image"] == (1, 8, 8) and shapes["audio"] == (1, 8, 16) and shapes["text"][0] == 6
    assert all(atk.single(m).fitted_by_ == "prepare" for m in toy_late.modalities)
    assert res.accuracy(atk.id) <= res.accuracy("clean")
    x, y = toy_batch
    out = atk.apply(toy_late, x, y, ctx(toy_data))
    for m in ("image", "audio"):
        single = atk.single(m).apply(toy_late, x, y, ctx(toy_data))
        assert torch.equal(out.info[f"success/{m}"], single.info["success"])


# ---------------------------------------------------------------------------------------- errors
def test_bad_hyper_parameters():
    make = lambda **kw: mr.attacks.create("universal", modalities="audio", eps=0.1, **kw)  # noqa: E731
    for key in ("epochs", "steps", "batch_size"):
        for bad in (0, -2, 1.5, True, "3"):
            with pytest.raises(mr.InputError, match=f"universal: {key} must be an integer >= 1, got {bad!r}"):
                make(**{key: bad})
    for bad in (0.0, -1.0, math.nan, "big"):
        with pytest.raises(mr.InputError, match="universal: alpha must be a finite number > 0"):
            make(alpha=bad)
    with pytest.raises(mr.InputError, match="alpha must give one step per attacked modality"):
        make(alpha={"image": 0.01})
    with pytest.raises(mr.InputError, match="joint budget takes one step size"):
        mr.attacks.create("universal", modalities=["image", "audio"], norm="l2", budget="joint", eps=1.0,
                          alpha={"image": 0.1, "audio": 0.1})
    with pytest.raises(mr.InputError, match="random_start must be True or False"):
        make(random_start=1)


def test_bad_fit_data_and_stale_delta(toy_late, toy_data, toy_batch):
    atk = mr.attacks.create("universal", modalities="audio", eps=0.1)
    with pytest.raises(mr.InputError, match=r"fit needs a MultimodalDataset split.*got dict"):
        atk.fit(toy_late, {"audio": toy_batch[0]["audio"]})
    with pytest.raises(mr.InputError, match="empty dataset"):
        atk.fit(toy_late, toy_data.test.subset(torch.arange(0)))
    with pytest.raises(mr.InputError, match="the model needs modality 'image'"):
        atk.fit(toy_late, toy_data.test.select(["audio", "text"]))
    x, y = toy_batch
    bad = mr.datasets.MultimodalDataset({**x, "audio": x["audio"] * 3}, y, toy_data.spec, stats=toy_data.train.stats)
    with pytest.raises(mr.InputError, match="outside the valid range"):
        atk.fit(toy_late, bad)
    # a δ fitted for one model, applied to a model whose audio has another shape
    atk.fit(toy_late, toy_data.test)
    spec2 = DatasetSpec(modalities=(ModalitySpec("audio", "audio", (1, 8, 8), low=0.0, high=1.0),), num_classes=4)
    other = mr.models.create("late", spec2).eval()
    x2 = {"audio": torch.rand(5, 1, 8, 8)}
    shapes = r"fitted perturbation of 'audio' has shape \(1, 8, 16\).*needs \(1, 8, 8\)"
    with pytest.raises(mr.InputError, match=shapes):
        atk.apply(other, x2, torch.zeros(5, dtype=torch.long), ctx(toy_data))
