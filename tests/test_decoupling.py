"""MUROAN's sparse decoupling attack (our operationalisation, methods.md §1.1) on the toy dataset."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import mmrobust as mr
from conftest import ctx
from mmrobust.attacks import ATTACKS, EvalContext, GradientAttack, asr_curve
from mmrobust.attacks.decoupling import Decoupling, mask_schedule
from mmrobust.datasets.dataset import compute_stats
from mmrobust.spec import DatasetSpec, ModalitySpec

BOTH = ["image", "audio"]
DIMS = {"image": 64, "audio": 128}


@pytest.fixture(scope="module")
def clean_wrong(toy_late, toy_batch):
    x, y = toy_batch
    with torch.no_grad():
        return toy_late(x).argmax(1) != y


def run(model, data, batch, seed=0, **kw):
    x, y = batch
    return mr.attacks.create("decoupling", **kw).apply(model, x, y, ctx(data, seed))


def changed(out, x, m):
    return (out.x[m] != x[m]).reshape(x[m].shape[0], -1).sum(1)


# ---------------------------------------------------------------------------------- registry
def test_registered_as_a_sparse_attack_not_a_gradient_attack():
    atk = mr.attacks.create("decoupling", modalities="audio", rho_max=0.02)
    assert isinstance(atk, Decoupling) and atk.family == "attack"
    assert not issubclass(ATTACKS.get("decoupling"), GradientAttack)  # ℓ∞/ℓ2 registry tests skip it
    assert atk.id == (
        "decoupling[audio|objective=ce,rho_max=0.02,s0=1,growth=1.5,steps=5,step_size=0.25,search=saliency,v0=gradient]"
    )
    emb = mr.attacks.create("decoupling", modalities=BOTH, objective="embedding", distance="cos")
    assert emb.params()["distance"] == "cos" and "fill" not in emb.params()


# ----------------------------------------------------------------------------------- threat
@pytest.mark.parametrize("mods", ["audio", "image", BOTH], ids=["audio", "image", "both"])
def test_sparse_budget_range_and_untouched(mods, toy_late, toy_data, toy_batch, clean_wrong):
    x, y = toy_batch
    rho_max = 0.08
    out = run(toy_late, toy_data, toy_batch, modalities=mods, rho_max=rho_max)
    attacked = [mods] if isinstance(mods, str) else mods
    d_total = sum(DIMS[m] for m in attacked)
    counts = {m: changed(out, x, m) for m in attacked}
    total = sum(counts.values())
    # ρ is exactly the brute-force fraction of changed coordinates, overall and per modality
    assert torch.equal(out.info["rho"], total.double() / d_total)
    for m in attacked:
        assert torch.equal(out.info[f"rho/{m}"], counts[m].double() / DIMS[m])
        a = out.x[m]
        assert a.shape == x[m].shape and a.dtype == x[m].dtype and not a.requires_grad
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0  # the spec's valid range
    assert int(total.max()) <= math.floor(rho_max * d_total) and float(out.info["rho"].max()) <= rho_max
    for m in toy_late.modalities:
        if m not in attacked:
            assert out.x[m] is x[m]  # unattacked modalities: the very same tensor
    assert set(out.info) == {"success", "rho", "loss"} | {f"rho/{m}" for m in attacked}
    assert all(v.shape == (len(y),) for v in out.info.values())
    with torch.no_grad():
        wrong = toy_late(out.x).argmax(1) != y
    assert torch.equal(out.info["success"], wrong)  # flags agree with re-evaluating the returned batch
    assert int(wrong.sum()) > int(clean_wrong.sum())
    # already misclassified: untouched, success at ρ = 0
    assert bool(out.info["success"][clean_wrong].all()) and float(out.info["rho"][clean_wrong].max()) == 0.0
    assert bool((total[~clean_wrong] > 0).all())  # every other sample had coordinates changed


def test_v0_rules_put_new_coordinates_at_the_range_ends(toy_late, toy_data, toy_batch):
    x, _ = toy_batch
    for v0 in ("far", "gradient"):
        out = run(toy_late, toy_data, toy_batch, modalities=BOTH, rho_max=0.05, steps=0, v0=v0)
        for m in BOTH:
            diff = out.x[m] != x[m]
            moved = out.x[m][diff]
            assert bool(((moved == 0.0) | (moved == 1.0)).all())  # without steps v = v₀, a range end
            if v0 == "far":  # the end farther from x
                far = torch.where(x[m] >= 0.5, 0.0, 1.0)
                assert torch.equal(moved, far[diff])


def test_first_success_is_kept(toy_late, toy_data, toy_batch):
    """A shorter schedule is a prefix of the longer one: its successes are the same samples, same x'."""
    d = DIMS["image"] + DIMS["audio"]
    sched = mask_schedule(d, 0.1, 1, 1.5)
    k = sched[len(sched) // 2]
    full = run(toy_late, toy_data, toy_batch, modalities=BOTH, rho_max=0.1)
    short = run(toy_late, toy_data, toy_batch, modalities=BOTH, rho_max=k / d)
    s_full, s_short = full.info["success"], short.info["success"]
    assert bool((s_full | ~s_short).all()) and int(s_full.sum()) > int(s_short.sum())
    for m in BOTH:
        assert torch.equal(full.x[m][s_short], short.x[m][s_short])
    assert float(short.info["rho"].max()) <= k / d


def test_budget_below_one_coordinate_changes_nothing(toy_late, toy_data, toy_batch, clean_wrong):
    x, _ = toy_batch
    out = run(toy_late, toy_data, toy_batch, modalities="image", rho_max=0.01)  # ⌊0.64⌋ = 0 coordinates
    assert torch.equal(out.x["image"], x["image"]) and float(out.info["rho"].max()) == 0.0
    assert torch.equal(out.info["success"], clean_wrong)


def test_mask_schedule():
    assert mask_schedule(1000, 0.02, 2, 2.0) == [2, 4, 8, 16, 20]
    assert mask_schedule(192, 0.1, 1, 1.5) == [1, 2, 3, 5, 8, 12, 18, 19]
    assert mask_schedule(100, 0.05, 10, 3.0) == [5]  # s0 above the cap
    assert mask_schedule(64, 0.01, 1, 2.0) == []
    s = mask_schedule(2112, 0.05, 1, 1.2)
    assert s[-1] == 105 and all(b > a for a, b in itertools.pairwise(s))


# ------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("search", ["saliency", "random"])
def test_deterministic(search, toy_late, toy_data, toy_batch):
    a = run(toy_late, toy_data, toy_batch, seed=5, modalities=BOTH, search=search, rho_max=0.05)
    b = run(toy_late, toy_data, toy_batch, seed=5, modalities=BOTH, search=search, rho_max=0.05)
    for m in BOTH:
        assert torch.equal(a.x[m], b.x[m])
    assert all(torch.equal(a.info[k], b.info[k]) for k in a.info)
    c = run(toy_late, toy_data, toy_batch, seed=6, modalities=BOTH, search=search, rho_max=0.05)
    same = torch.equal(a.x["audio"], c.x["audio"]) and torch.equal(a.x["image"], c.x["image"])
    assert same == (search == "saliency")  # only the random baseline uses the generator


def test_saliency_beats_random_at_equal_budget(toy_late, toy_data, toy_batch, clean_wrong):
    grid = [0.01, 0.02, 0.05, 0.1]
    curves = {}
    for search in ("saliency", "random"):
        out = run(toy_late, toy_data, toy_batch, modalities=BOTH, rho_max=0.1, search=search)
        curves[search], _ = asr_curve(out.info["rho"], out.info["success"], grid, clean_correct=~clean_wrong)
    assert bool((curves["saliency"] >= curves["random"]).all())
    assert int((curves["saliency"] > curves["random"] + 0.05).sum()) >= 3


def test_evaluate_records_per_sample_results(toy_late, toy_data, toy_batch):
    atk = mr.attacks.create("decoupling", modalities=BOTH, rho_max=0.05)
    res = mr.evaluate(toy_late, toy_data.test, [atk])
    out = atk.apply(toy_late, *toy_batch, ctx(toy_data, 0))  # evaluate seeds the single batch with seed 0
    assert np.array_equal(res.samples[f"info/{atk.id}/rho"], out.info["rho"].numpy())
    ok = res.samples[f"info/{atk.id}/success"]
    assert np.array_equal(~res.correct(atk.id), ok)
    asr, _ = asr_curve(res.samples[f"info/{atk.id}/rho"], ok, [0.05], clean_correct=res.correct("clean"))
    assert asr[0] == pytest.approx(res.rows()[-1]["attack_success_rate"])


# -------------------------------------------------------------------------------- objectives
@pytest.mark.parametrize(
    "kw",
    [
        {"objective": "ce"},
        {"objective": "embedding", "distance": "l2"},
        {"objective": "embedding", "distance": "cos"},
        {"objective": "cross_modal", "fill": "mean"},
        {"objective": "cross_modal", "fill": "drop"},
    ],
    ids=["ce", "emb-l2", "emb-cos", "cross-mean", "cross-drop"],
)
def test_objectives_increase(kw, toy_late, toy_data, toy_batch):
    x, y = toy_batch
    atk = mr.attacks.create("decoupling", modalities="image", rho_max=0.2, **kw)
    out = atk.apply(toy_late, x, y, ctx(toy_data))
    c = ctx(toy_data)
    adv = atk.objective_value(toy_late, x, out.x, y, c)
    clean = atk.objective_value(toy_late, x, x, y, c)
    torch.testing.assert_close(out.info["loss"], adv)
    moved = out.info["rho"] > 0
    assert float(adv.mean()) > float(clean.mean())
    assert float((adv - clean)[moved].median()) > 0
    if kw["objective"] == "embedding":
        assert float(clean.abs().max()) < 1e-6  # Φ(x) vs itself
        assert bool((adv[moved] > 0).all())
    if kw["objective"] == "cross_modal":
        # brute force: the reference is the prediction with the image neutralised
        ref_cond = mr.attacks.create("missing", modalities="image", fill=kw["fill"])
        ref_out = ref_cond.apply(toy_late, x, y, c)
        with torch.no_grad():
            ref = toy_late(ref_out.x, drop=ref_out.drop).argmax(1)
            pred = toy_late(out.x).argmax(1)
        assert torch.equal(out.info["decoupled"], pred != ref)
        assert int(out.info["decoupled"].sum()) > int((toy_late(x).argmax(1) != ref).sum())
        # brute force: −log(p_y + p_r), or −log p_y where the clean streams vote for the label
        with torch.no_grad():
            p = toy_late(out.x).softmax(1)
        rows = torch.arange(len(y))
        mass = p[rows, y] + torch.where(ref == y, 0.0, p[rows, ref])
        torch.testing.assert_close(adv, -mass.log(), rtol=1e-4, atol=1e-5)
        assert bool((ref != y).any())  # both branches are exercised
        ce = mr.attacks.create("decoupling", modalities="image", objective="ce")
        agree = ref == y
        torch.testing.assert_close(adv[agree], ce.objective_value(toy_late, x, out.x, y, c)[agree])


def test_unbounded_modality_uses_training_statistics():
    spec = DatasetSpec(
        modalities=(
            ModalitySpec("image", "image", (1, 8, 8), low=0.0, high=1.0),
            ModalitySpec("feat", "features", (12,)),
        ),
        num_classes=3,
    )
    g = torch.Generator().manual_seed(0)
    x = {"image": torch.rand(20, 1, 8, 8, generator=g), "feat": torch.randn(20, 12, generator=g) * 2 + 1}
    y = torch.randint(0, 3, (20,), generator=g)
    stats = compute_stats(x, spec)
    model = mr.models.create("late", spec).eval()
    atk = mr.attacks.create("decoupling", modalities="feat", rho_max=0.5, s0=2)
    out = atk.apply(model, x, y, EvalContext(stats=stats, generator=torch.Generator().manual_seed(0)))
    lo = stats["feat"].mean - 3 * stats["feat"].std
    hi = stats["feat"].mean + 3 * stats["feat"].std
    moved = out.x["feat"] != x["feat"]
    assert bool(moved.any())
    assert bool(((out.x["feat"] >= lo - 1e-6) & (out.x["feat"] <= hi + 1e-6))[moved].all())
    with pytest.raises(mr.InputError, match=r"unbounded valid range.*statistics"):
        atk.apply(model, x, y, EvalContext(stats={}, generator=torch.Generator()))


# ------------------------------------------------------------------------------------ asr curve
def test_asr_curve_by_hand():
    rho = np.array([0.0, 0.01, 0.02, 0.04, 0.04, 0.05])
    ok = np.array([True, True, True, True, False, True])
    # sample 0 was misclassified before any change: not in the denominator (5 samples)
    asr, med = asr_curve(rho, ok, [0.0, 0.01, 0.03, 0.05])
    np.testing.assert_allclose(asr, [0 / 5, 1 / 5, 2 / 5, 4 / 5])
    assert med == 0.04  # sorted minimal ρ of the 5: 0.01, 0.02, 0.04, 0.05, inf
    asr2, med2 = asr_curve(torch.tensor(rho), torch.tensor(ok), torch.tensor([0.03]), clean_correct=np.ones(6, bool))
    np.testing.assert_allclose(asr2, [3 / 6])
    assert med2 == pytest.approx(0.03)  # 0, .01, .02, .04, .05, inf -> (0.02 + 0.04) / 2
    _, med3 = asr_curve([0.1, 0.2, 0.3], [True, False, False], [0.5])
    assert med3 == math.inf  # fewer than half succeed
    asr4, med4 = asr_curve([0.0], [True], [0.1])
    assert math.isnan(asr4[0]) and math.isnan(med4)
    with pytest.raises(mr.InputError, match="one length"):
        asr_curve([0.1, 0.2], [True], [0.1])


# --------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"objective": "kl"}, "unknown objective 'kl'; choose one of ce, embedding, cross_modal"),
        ({"rho_max": 0.0}, r"rho_max must be a fraction in \(0, 1\], got 0.0"),
        ({"rho_max": 1.5}, "rho_max must be a fraction"),
        ({"rho_max": True}, "rho_max must be a fraction"),
        ({"s0": 0}, "s0 must be an integer >= 1"),
        ({"s0": 2.5}, "s0 must be an integer >= 1"),
        ({"growth": 1.0}, "growth must be a finite number > 1, got 1.0"),
        ({"growth": math.inf}, "growth must be a finite number > 1"),
        ({"steps": -1}, "steps must be an integer >= 0, got -1"),
        ({"step_size": 0}, "step_size must be a finite number > 0"),
        ({"search": "beam"}, "unknown search 'beam'; choose one of saliency, random"),
        ({"v0": "mid"}, "unknown v0 'mid'"),
        ({"distance": "l1"}, "unknown distance 'l1'"),
        ({"fill": "noise"}, "unknown fill 'noise'"),
        ({"modalities": ["all", "audio"]}, "'all' cannot appear inside a list"),
        ({"modalities": []}, "modalities must be a non-empty list"),
    ],
)
def test_bad_hyper_parameters(kw, match):
    with pytest.raises(mr.InputError, match=match):
        mr.attacks.create("decoupling", **{"modalities": "audio", **kw})


def test_errors_against_the_model(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    with pytest.raises(mr.InputError, match=r"unknown modality 'video'; the model has \['image', 'audio', 'text'\]"):
        mr.evaluate(toy_late, toy_data.test, [mr.attacks.create("decoupling", modalities="video")])
    with pytest.raises(mr.InputError, match="'text' holds token ids"):
        mr.attacks.create("decoupling", modalities=["audio", "text"]).check(toy_late)
    assert mr.attacks.create("decoupling", modalities="all").resolve(toy_late) == BOTH  # continuous ones
    two = mr.models.create("late", toy_data.spec, modalities=BOTH)
    with pytest.raises(mr.InputError, match=r"cross_modal.*at least one modality left unattacked"):
        mr.attacks.create("decoupling", modalities="all", objective="cross_modal").check(two)
    concat = mr.models.create("concat", toy_data.spec)
    with pytest.raises(mr.UnsupportedError, match="cannot drop modalities"):
        mr.attacks.create("decoupling", modalities="audio", objective="cross_modal", fill="drop").check(concat)
    atk = mr.attacks.create("decoupling", modalities="audio")
    with pytest.raises(mr.InputError, match="labels must lie in"):
        atk.apply(toy_late, x, y + 10, ctx(toy_data))
    with pytest.raises(mr.InputError, match="outside the valid range"):
        atk.apply(toy_late, {**x, "audio": x["audio"] + 2}, y, ctx(toy_data))


def test_mode_and_parameters_restored(toy_late, toy_data, toy_batch):
    seen = []
    hook = toy_late.encoders["audio"].register_forward_pre_hook(lambda mod, _: seen.append(mod.training))
    toy_late.train()
    try:
        run(toy_late, toy_data, toy_batch, modalities="audio", rho_max=0.02)
    finally:
        hook.remove()
        was = [m.training for m in toy_late.modules()]
        flags = [p.requires_grad for p in toy_late.parameters()]
        toy_late.eval()
    assert seen and not any(seen) and all(was) and all(flags)
