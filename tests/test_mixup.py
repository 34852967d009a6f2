"""Metric-guided mix-up and plain mix-up (GEOM, methods.md §4 and §6) on the toy 3-modality dataset.

The mixed batches, soft targets and losses are checked against per-sample hand computations; the
class weights against their formula; the re-measurement schedule, determinism, checkpoints and the
hyper-parameter errors directly.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import mmrobust as mr
from mmrobust.defenses.mixup import (
    LEVELS,
    MixUp,
    PlainMixUp,
    draw_lambda,
    draw_pairs,
    mix_inputs,
    mixing_probabilities,
    soft_targets,
)

K = 4


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def toy_concat(toy_data):
    model = mr.models.create("concat", toy_data.spec, seed=1)
    mr.train(model, toy_data, epochs=2, quiet=True)
    return model.eval()


# ------------------------------------------------------------------------------------------ draws
def test_lambda_is_beta_distributed_and_seeded():
    lam = draw_lambda(20000, 0.4, torch.Generator().manual_seed(0))
    assert lam.dtype == torch.float64 and float(lam.min()) >= 0 and float(lam.max()) <= 1
    assert stats.kstest(lam.numpy(), stats.beta(0.4, 0.4).cdf).pvalue > 1e-3
    assert stats.kstest(lam.numpy(), stats.beta(2.0, 2.0).cdf).pvalue < 1e-6  # the test has power
    assert torch.equal(lam, draw_lambda(20000, 0.4, torch.Generator().manual_seed(0)))
    u = draw_lambda(5000, 1.0, torch.Generator().manual_seed(1))
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3


def test_same_class_pairing_pairs_only_same_class_and_is_uniform():
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3, 1, 0, 2])  # class 3 is alone in the batch
    counts = torch.bincount(y)
    hits = torch.zeros(10, 10)
    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        b, mixed = draw_pairs(y, "same-class", g)
        assert bool(mixed.all())
        assert torch.equal(y[b], y)
        alone = counts[y] == 1
        assert torch.equal(b[alone], torch.arange(10)[alone])
        assert bool((b[~alone] != torch.arange(10)[~alone]).all())  # never itself when it has a classmate
        hits[torch.arange(10), b] += 1
    # partner uniform over the other members of the class: class 0 = {0, 2, 5, 8}, so 1/3 each
    freq = hits[0, [2, 5, 8]] / 3000
    assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.04)


def test_any_class_pairing_is_a_shuffle_and_selection_follows_the_probabilities():
    y = torch.arange(K).repeat(2500)
    g = torch.Generator().manual_seed(0)
    b, mixed = draw_pairs(y, "any-class", g)
    assert bool(mixed.all()) and torch.equal(b.sort().values, torch.arange(y.numel()))
    assert float((y[b] != y).double().mean()) > 0.6  # partners from other classes too
    p = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64)
    b, mixed = draw_pairs(y, "any-class", g, p)
    frac = torch.stack([mixed[y == c].double().mean() for c in range(K)])
    assert torch.allclose(frac, p, atol=0.03)
    assert torch.equal(b[~mixed], torch.arange(y.numel())[~mixed])  # unselected: own partner
    with pytest.raises(mr.InputError, match="pairing 'nearest'"):
        draw_pairs(y, "nearest", g)


# ------------------------------------------------------------------------------------------ weights
def test_mixing_probabilities_follow_the_formula():
    conv = [0.9, 0.5, 1.0, 0.8, math.nan]
    raw = np.array([0.1**2, 0.5**2, 0.0, 0.2**2])
    expect = np.append(raw / raw.max(), 1.0)  # NaN class: always mixed
    got = mixing_probabilities(conv, "convexity", beta=2.0)
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-12)
    np.testing.assert_allclose(mixing_probabilities(conv, "convexity", 2.0, min_prob=0.2).numpy(),
                               0.2 + 0.8 * expect, rtol=1e-12)
    dens = [0.5, 0.25, 1.0]
    np.testing.assert_allclose(mixing_probabilities(dens, "density", beta=1.0).numpy(), [0.5, 1.0, 0.25])
    np.testing.assert_allclose(mixing_probabilities(dens, "density", beta=3.0).numpy(), [0.125, 1.0, 1 / 64])
    assert torch.equal(mixing_probabilities(conv[:4], "convexity", beta=0.0), torch.ones(4, dtype=torch.float64))
    assert torch.equal(mixing_probabilities([1.0, 1.0], "convexity"), torch.ones(2, dtype=torch.float64))
    assert torch.equal(mixing_probabilities([0.3, 0.9], "none"), torch.ones(2, dtype=torch.float64))
    for bad, match in (({"weighting": "entropy"}, "weighting 'entropy'"), ({"beta": -1.0}, "beta"),
                       ({"min_prob": 2.0}, "min_prob")):
        with pytest.raises(mr.InputError, match=match):
            mixing_probabilities(conv, **{"weighting": "convexity", **bad})


# ------------------------------------------------------------------------------------------ mixing
def test_input_mix_is_the_convex_combination_with_the_drawn_lambda(toy_late, toy_batch):
    model = copy.deepcopy(toy_late)
    x, _ = toy_batch
    n = x["image"].shape[0]
    g = torch.Generator().manual_seed(0)
    b, lam = torch.randperm(n, generator=g), torch.rand(n, generator=g)
    lam[:5] = 1.0
    b[:5] = torch.arange(5) + 1
    with torch.no_grad():
        x_mix, emb = mix_inputs(model, x, b, lam)
        table = model.encoders["text"].embedding.weight
        for i in range(n):  # per-sample reference
            j, w = int(b[i]), float(lam[i])
            for m in ("image", "audio"):
                assert torch.allclose(x_mix[m][i], w * x[m][i] + (1 - w) * x[m][j], atol=1e-6)
            ta, tb = x["text"][i], x["text"][j]
            assert torch.allclose(emb["text"][i], w * table[ta] + (1 - w) * table[tb], atol=1e-6)
            assert torch.equal(x_mix["text"][i] != 0, (ta != 0) | (tb != 0))  # union of real positions
        # λ = 1 reproduces the clean forward pass (x_mix also never leaves the valid range)
        z_mix = model.encode(x_mix, embeddings=emb)
        z = model.encode(x)
        for m in model.modalities:
            assert torch.allclose(z_mix[m][:5], z[m][:5], atol=1e-6)
        assert float(x_mix["image"].min()) >= 0 and float(x_mix["image"].max()) <= 1


def test_soft_targets_sum_to_one_and_are_hand_computed():
    g = torch.Generator().manual_seed(0)
    ya, yb = torch.randint(K, (50,), generator=g), torch.randint(K, (50,), generator=g)
    lam = torch.rand(50, generator=g)
    t = soft_targets(ya, yb, lam, K)
    assert torch.allclose(t.sum(1), torch.ones(50)) and bool((t >= 0).all())
    for i in range(50):
        ref = torch.zeros(K)
        ref[ya[i]] += lam[i]
        ref[yb[i]] += 1 - lam[i]
        assert torch.allclose(t[i], ref, atol=1e-7)
    same = soft_targets(ya, ya, lam, K)
    assert torch.equal(same, F.one_hot(ya, K).float())


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fusion", ["late", "concat"])
def test_objective_loss_matches_a_per_sample_reference(level, fusion, toy_late, toy_concat, toy_batch):
    model = copy.deepcopy(toy_late if fusion == "late" else toy_concat).train()
    x, y = toy_batch
    u = 0.5
    obj = MixUp(0.7, level=level, pairing="any-class", weighting="none", epochs=2,
                train={"unimodal_loss": u}).objective()
    loss, logits = obj(model, x, y, torch.Generator().manual_seed(3))
    pairs = obj.draw(y, torch.Generator().manual_seed(3))  # the objective's draws, reproduced
    b, lam = pairs.b, pairs.lam
    n = y.numel()

    def mixed(t):  # per-sample loop
        return torch.stack([lam[i] * t[i] + (1 - lam[i]) * t[b[i]] for i in range(n)])

    target = torch.zeros(n, K)
    target[torch.arange(n), y] += lam
    target[torch.arange(n), y[b]] += 1 - lam
    with torch.no_grad():
        if level == "input":
            xm = {m: mixed(x[m]) for m in ("image", "audio")}
            xm["text"] = torch.where(x["text"] != 0, x["text"], x["text"][b])
            z = model.encode(xm, embeddings={"text": mixed(model.embed("text", x["text"]))})
            ref_logits = model.logits_from_embeddings(z)
        else:
            z0 = model.encode(x)
            z = {m: mixed(t) for m, t in z0.items()}
            ref_logits = (model.logits_from_embeddings(z) if level == "modality"
                          else model.head_from_fused(mixed(model.fuse(z0)[0])))
        branches = model.branch_logits(z, model.fuse(z)[1])

    def soft_ce(lg):
        return float(-(target * lg.log_softmax(1)).sum(1).mean())

    ref = soft_ce(ref_logits) + u * sum(soft_ce(v) for v in branches.values()) / len(branches)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert bool(pairs.mixed.all()) and float(pairs.lam.min()) >= 0 and float(pairs.lam.max()) <= 1


def test_class_weights_select_which_samples_are_mixed(toy_batch):
    _, y = toy_batch
    obj = MixUp(weighting="convexity", epochs=3).objective()
    obj.mix_prob = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    pairs = obj.draw(y, torch.Generator().manual_seed(0))
    assert torch.equal(pairs.mixed, y == 0)
    assert bool((pairs.lam[y != 0] == 1).all())


# ------------------------------------------------------------------------------------------ schedule
@pytest.mark.parametrize("weighting", ["convexity", "density"])
def test_measurement_is_the_geometry_metric_on_validation(weighting, toy_late, toy_data):
    val = toy_data.val
    d = MixUp(weighting=weighting, pairs_per_class=50, k=5, epochs=3)
    got = d.objective(seed=4).measure(toy_late, val)
    rep = mr.metrics.geometry_report(toy_late, val, pairs_per_class=50, k=5, seed=4, small_classes="shrink")
    per = [getattr(rep.spaces[m], weighting).per_class for m in toy_late.modalities]
    np.testing.assert_allclose(got, np.mean(per, axis=0), rtol=1e-12)
    one = MixUp(weighting=weighting, space="audio", pairs_per_class=50, k=5, epochs=3).objective(seed=4)
    np.testing.assert_allclose(one.measure(toy_late, val), getattr(rep.spaces["audio"], weighting).per_class)


def test_weights_are_recomputed_every_E_epochs(toy_data):
    d = MixUp(weighting="convexity", beta=2.0, every=2, epochs=5, pairs_per_class=50)
    model = d.apply(mr.models.create("late", toy_data.spec), toy_data, seed=0)
    hist = model.defense_info["weights"]
    assert [h["epoch"] for h in hist] == [2, 4]
    for h in hist:
        values = [math.nan if v is None else v for v in h["values"]]
        np.testing.assert_allclose(h["mix_prob"], mixing_probabilities(values, "convexity", 2.0).numpy())
    assert 0 < model.defense_info["mixed_fraction"] <= 1
    plain = MixUp(weighting="none", every=2, epochs=3).apply(mr.models.create("late", toy_data.spec), toy_data)
    assert plain.defense_info["weights"] == [] and plain.defense_info["mixed_fraction"] == 1.0


# ------------------------------------------------------------------------------------------ the defence
def test_same_seed_same_model_and_input_untouched(toy_data, tmp_path):
    fresh = mr.models.create("concat", toy_data.spec)
    before = copy.deepcopy(fresh)
    d = mr.defenses.create("mixup", level="modality", pairing="same-class", weighting="density", every=1, epochs=2)
    a = d.apply(fresh, toy_data, seed=0)
    b = d.apply(fresh, toy_data, seed=0)
    c = d.apply(fresh, toy_data, seed=1)
    assert same_weights(a, b) and not same_weights(a, c)
    assert a.defense_info["weights"] == b.defense_info["weights"]
    assert same_weights(fresh, before) and a is not fresh
    assert not a.training and a.config["defense"] == {"name": "mixup", "params": d.params()}
    # checkpoint round trip: same logits, same record
    mr.models.save(a, tmp_path / "mixup.pt")
    loaded = mr.models.load(tmp_path / "mixup.pt")
    x, _ = toy_data.test.batch(torch.arange(32))
    with torch.no_grad():
        assert torch.allclose(loaded(x), a(x), atol=1e-6)
    assert loaded.config["defense"]["name"] == "mixup"
    assert loaded.defense_info["weights"] == a.defense_info["weights"]


def test_plain_mixup_is_mixup_with_the_plain_switches(toy_data):
    assert {"mixup", "plain_mixup"} <= set(mr.defenses.names())
    fresh = mr.models.create("late", toy_data.spec)
    plain = mr.defenses.create("plain_mixup", alpha=0.5, epochs=2)
    assert isinstance(plain, PlainMixUp) and plain.params() == {"alpha": 0.5, "epochs": 2, "train": {}}
    same = MixUp(0.5, level="input", pairing="any-class", weighting="none", epochs=2)
    a, b = plain.apply(fresh, toy_data, seed=0), same.apply(fresh, toy_data, seed=0)
    assert same_weights(a, b)
    assert a.config["defense"]["name"] == "plain_mixup"


def test_unimodal_text_model_mixes_through_embeddings(toy_data):
    model = mr.models.create("unimodal", toy_data.spec, modality="text")
    out = PlainMixUp(epochs=2).apply(model, toy_data, seed=0)
    assert out.modalities == ["text"] and out.defense_info["best_val_accuracy"] > 0.3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha must be a finite number > 0.*0.0"),
        ({"alpha": -1}, "alpha.*-1"),
        ({"alpha": float("nan")}, "alpha"),
        ({"level": "pixel"}, "unknown level 'pixel'"),
        ({"pairing": "same"}, "unknown pairing 'same'"),
        ({"weighting": "entropy"}, "unknown weighting 'entropy'"),
        ({"beta": -0.5}, "beta must be.*-0.5"),
        ({"min_prob": 1.5}, "min_prob.*1.5"),
        ({"every": 0}, "every must be an integer >= 1, got 0"),
        ({"every": 20, "epochs": 20}, "every=20 must be smaller than epochs=20"),
        ({"pairs_per_class": 0}, "pairs_per_class"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"train": {"lr": -1.0}}, "invalid train settings: lr"),
        ({"train": {"bogus": 1}}, "bogus"),
        ({"train": {"seed": 1}}, r"train\['seed'\] is set by the defence"),
        ({"train": {"epochs": 3}}, r"train\['epochs'\]"),
    ],
)
def test_bad_hyperparameters_are_clear(kwargs, match):
    with pytest.raises(mr.InputError, match=match):
        mr.defenses.create("mixup", **kwargs)


def test_bad_model_or_data_is_clear(toy_data, toy_late):
    with pytest.raises(mr.InputError, match="unknown space 'video'"):
        MixUp(space="video", epochs=3).apply(toy_late, toy_data)
    with pytest.raises(mr.InputError, match="DatasetBundle"):
        MixUp(epochs=3).apply(toy_late, toy_data.train)
    with pytest.raises(mr.InputError, match="MultimodalModel"):
        MixUp(epochs=3).apply(torch.nn.Linear(2, 2), toy_data)
    with pytest.raises(mr.InputError, match="no hyper-parameter 'lambda_'"):
        mr.defenses.create("mixup", lambda_=0.5)
