"""Robustness metrics (methods.md §7) against brute-force references.

* minimal ε by bisection vs a dense ε grid of the same attack on a linear model (where FGSM / PGD
  success is monotone in ε), batched per-sample radii vs one attack call per radius, and the
  per-sample threat vs the ordinary scalar-ε attack for every registered gradient attack;
* AUC vs a hand-written trapezoid, ASR denominators, worst-case logic, the modality × perturbation
  matrix and effective robustness on synthetic results;
* every metric's ``update``/``compute`` over batches equals its functional twin on all the data, and
  the states reduce to the same numbers in two gloo processes as in one.
"""

from __future__ import annotations

import inspect
import math
import multiprocessing as mp

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp
from torch import nn

import mmrobust as mr
from mmrobust.analysis import MinimalEpsSearch, minimal_eps
from mmrobust.attacks import ATTACKS, EvalContext, GradientAttack
from mmrobust.errors import InputError
from mmrobust.evaluate import EvaluationResult
from mmrobust.metrics import (
    Accuracy,
    AccuracyCurve,
    AttackSuccessRate,
    BaselineCurve,
    EffectiveRobustness,
    MinimalEps,
    ModalityPerturbationMatrix,
    RobustAccuracy,
    RobustnessSummary,
    WorstCaseAccuracy,
)
from mmrobust.metrics import functional as F
from mmrobust.metrics import results as R
from mmrobust.spec import DatasetSpec, ModalitySpec


# ------------------------------------------------------------------------------------------ fixtures
def linear_setup(n: int = 64):
    """A 2-class model that is linear in its inputs (two feature modalities in [0, 1]) and a batch.

    For 2 classes and CE, ∇_x L has the fixed sign pattern of (w_other − w_y), so FGSM and PGD
    (no random start) move along a fixed direction and their success is monotone in ε.
    """
    spec = DatasetSpec(
        modalities=(
            ModalitySpec("a", "features", (6,), low=0.0, high=1.0),
            ModalitySpec("b", "features", (4,), low=0.0, high=1.0),
        ),
        num_classes=2,
        name="linear",
    )
    model = mr.models.create("late", spec, embed_dim=3)
    g = torch.Generator().manual_seed(0)
    for m, d in (("a", 6), ("b", 4)):
        lin = nn.Linear(d, 3)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(3, d, generator=g))
            lin.bias.zero_()
        model.encoders[m] = lin
    model.eval()
    x = {"a": torch.rand(n, 6, generator=g), "b": torch.rand(n, 4, generator=g)}
    with torch.no_grad():
        pred = model(x).argmax(1)
    flip = torch.rand(n, generator=g) < 0.15
    y = torch.where(flip, 1 - pred, pred)
    return model, x, y


@pytest.fixture(scope="module")
def linear():
    return linear_setup()


def success_at(model, x, y, name, eps, **kw):
    """Brute force: the ordinary attack at one scalar ε; misclassified flags (N,)."""
    atk = mr.attacks.create(name, eps=eps, **kw)
    out = atk.apply(model, x, y, EvalContext(stats={}, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        return model(out.x, embeddings=out.embeddings or None).argmax(1) != y


# ------------------------------------------------------------------------------------------ minimal ε
GRID_CASES = {
    "fgsm-linf-a": ("fgsm", {"modalities": "a", "norm": "linf"}, 1.0),
    "fgm-l2-ab": ("fgsm", {"modalities": ["a", "b"], "norm": "l2"}, 2.0),
    "pgd-linf-b": ("pgd", {"modalities": "b", "norm": "linf", "steps": 5, "random_start": False}, 1.0),
}


@pytest.mark.parametrize("case", list(GRID_CASES))
def test_bisection_matches_dense_grid(linear, case):
    model, x, y = linear
    name, kw, eps_max = GRID_CASES[case]
    iters = 12
    res = MinimalEpsSearch(name, eps_max=eps_max, iterations=iters, **kw).search(model, x, y)
    grid = torch.linspace(0, eps_max, 161, dtype=torch.float64)
    succ = torch.stack([success_at(model, x, y, name, float(e), **kw) for e in grid], 1)  # (N, G)
    clean_ok = res.clean_correct
    assert bool(succ[clean_ok].cummax(1).values.eq(succ[clean_ok]).all()), "reference attack must be monotone"
    # misclassified clean: minimal ε = 0
    assert bool((res.upper[~clean_ok] == 0).all()) and bool((res.lower[~clean_ok] == 0).all())
    spacing = float(grid[1] - grid[0])
    width = eps_max / 2**iters
    broken = succ.any(1)
    for i in torch.nonzero(clean_ok).squeeze(1).tolist():
        lo, hi = float(res.lower[i]), float(res.upper[i])
        if not broken[i]:
            assert hi == math.inf and lo == eps_max
            continue
        assert 0 <= lo < hi <= eps_max and hi - lo <= width + 1e-12
        g_star = float(grid[succ[i].nonzero()[0, 0]])
        # the smallest grid ε that succeeds lies within one grid step above the bracket
        assert lo - 1e-5 <= g_star <= hi + spacing + 1e-5
        # the grid fails everywhere below the bracket and succeeds everywhere above it
        assert not bool(succ[i][grid < lo - 1e-5].any())
        assert bool(succ[i][grid > hi + 1e-5].all())
    assert int(torch.isfinite(res.upper[clean_ok]).sum()) > 40  # most samples are broken within eps_max
    assert res.calls == 1 + iters  # batched: one attack call per bisection iteration
    # the robust-accuracy curve implied by the brackets sandwiches the grid's robust accuracy
    grid_acc = (clean_ok[:, None] & ~succ).double().mean(0)
    away = torch.ones_like(grid, dtype=torch.bool)
    for i in torch.nonzero(clean_ok & torch.isfinite(res.upper)).squeeze(1).tolist():
        away &= (grid < res.lower[i] - 1e-5) | (grid > res.upper[i] + 1e-5)  # outside every bracket
    assert torch.allclose(res.robust_accuracy(grid)[away], grid_acc[away])
    assert bool((res.robust_accuracy(grid, "lower") <= grid_acc + 1e-12).all())


DETERMINISTIC = {
    "fgsm": {"norm": "linf"},
    "pgd": {"norm": "l2", "steps": 4, "random_start": False},
    "apgd": {"norm": "linf", "steps": 6, "random_start": False},
}


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_batched_radii_equal_one_call_per_radius(linear, name):
    model, x, y = linear
    kw = {"modalities": ["a", "b"], **DETERMINISTIC[name]}
    batched = MinimalEpsSearch(name, eps_max=1.5, iterations=6, **kw)
    grouped = MinimalEpsSearch(name, eps_max=1.5, iterations=6, mode="grouped", **kw)
    assert batched.mode == "batched"
    rb, rg = batched.search(model, x, y), grouped.search(model, x, y)
    assert torch.equal(rb.lower, rg.lower) and torch.equal(rb.upper, rg.upper)
    assert rb.calls <= 1 + 6 < rg.calls  # one call per step vs one per distinct radius


def per_sample_attacks():
    out = []
    for n in ATTACKS.names():
        cls = ATTACKS.get(n)
        if isinstance(cls, type) and issubclass(cls, GradientAttack) and cls.per_sample_threat:
            out.append(n)
    return out


THREATS = {
    "audio-linf": {"modalities": "audio", "norm": "linf"},
    "image+audio-l2": {"modalities": ["image", "audio"], "norm": "l2"},
    "joint-l2": {"modalities": ["image", "audio"], "norm": "l2", "budget": "joint"},
}


@pytest.mark.parametrize("threat", list(THREATS))
@pytest.mark.parametrize("name", per_sample_attacks())
def test_per_sample_radii_equal_scalar_attack(toy_data, toy_late, name, threat):
    """Registry walk: the per-sample threat with all radii = ε reproduces the attack at ε bit for bit."""
    data, model = toy_data, toy_late
    cls = ATTACKS.get(name)
    kw = dict(THREATS[threat])
    if kw["norm"] not in cls.norms or kw.get("budget", "per_modality") not in cls.budgets:
        pytest.skip(f"{name} does not support {threat}")
    if "steps" in inspect.signature(cls.__init__).parameters:
        kw["steps"] = 3
    if "queries" in inspect.signature(cls.__init__).parameters:
        kw["queries"] = 30
    if "version" in inspect.signature(cls.__init__).parameters:  # the standard evaluation: its first attack
        kw.update(version="fast", attacks=["apgd-ce"])
    x, y = data.test.batch(torch.arange(48))
    eps = 0.08 if kw["norm"] == "linf" else 0.8
    search = MinimalEpsSearch(name, eps_max=1.0, **kw)
    ctx = EvalContext(stats={}, generator=torch.Generator().manual_seed(3))
    ours = search._batched(search.template, model, x, y, torch.full((48,), eps, dtype=torch.float64), ctx)
    ref = mr.attacks.create(name, eps=eps, **kw)
    out = ref.apply(model, x, y, EvalContext(stats={}, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        theirs = model(out.x).argmax(1) != y
    assert torch.equal(ours, theirs)


def test_each_and_weights(linear):
    model, x, y = linear
    kw = {"norm": "linf", "iterations": 10}
    each = MinimalEpsSearch("fgsm", modalities="each", eps_max=1.0, **kw).search(model, x, y)
    singles = [MinimalEpsSearch("fgsm", modalities=m, eps_max=1.0, **kw).search(model, x, y) for m in ("a", "b")]
    # success under "each" is the OR of the single-modality attacks: its threshold is their minimum
    assert torch.equal(each.upper, torch.minimum(singles[0].upper, singles[1].upper))
    # radius 2ε on modality a: the threshold in ε halves (up to one bracket width)
    w = MinimalEpsSearch("fgsm", modalities="a", eps_max=1.0, weights={"a": 2.0}, **kw).search(model, x, y)
    fin = torch.isfinite(singles[0].upper) & (singles[0].upper < 1.0) & singles[0].clean_correct
    assert int(fin.sum()) > 5
    assert torch.allclose(w.upper[fin], singles[0].upper[fin] / 2, atol=1.0 / 2**10 + 1e-9)
    # weights with "each": batched per-sample radii agree with one call per radius
    both = {"a": 2.0, "b": 0.5}
    rb = MinimalEpsSearch("fgsm", modalities="each", eps_max=1.0, weights=both, **kw).search(model, x, y)
    rg = MinimalEpsSearch("fgsm", modalities="each", eps_max=1.0, weights=both, mode="grouped", **kw).search(
        model, x, y
    )
    assert torch.equal(rb.upper, rg.upper) and not torch.equal(rb.upper, each.upper)


def test_minimal_eps_factory_dataset_and_determinism(toy_data, toy_late):
    data, model = toy_data, toy_late
    sub = data.test.subset(torch.arange(40))
    search = MinimalEpsSearch("pgd", modalities="audio", eps_max=0.3, iterations=4, steps=5)  # random start
    a = search.run(model, sub, batch_size=32, seed=1)
    b = search.run(model, sub, batch_size=32, seed=1)
    assert torch.equal(a.upper, b.upper) and torch.equal(a.index, torch.arange(len(sub)))
    assert a.upper.shape == (len(sub),) and bool((a.lower <= a.upper).all())
    # a callable factory (grouped mode) with the same deterministic attack gives the same brackets
    x, y = data.test.batch(torch.arange(24))
    make = lambda e: mr.attacks.create("fgsm", modalities="image", eps=e)  # noqa: E731
    r1 = MinimalEpsSearch(make, eps_max=0.5, iterations=5).search(model, x, y)
    r2 = MinimalEpsSearch("fgsm", modalities="image", eps_max=0.5, iterations=5).search(model, x, y)
    assert torch.equal(r1.upper, r2.upper) and torch.equal(r1.lower, r2.lower)
    # functional twin and metric
    r3 = minimal_eps(model, x, y, "fgsm", modalities="image", eps_max=0.5, iterations=5)
    assert torch.equal(r3.upper, r2.upper)
    m = MinimalEps()
    m.update(r2)
    assert m.compute().median() == r2.median()


def test_minimal_eps_validation():
    with pytest.raises(InputError, match="do not pass eps"):
        MinimalEpsSearch("pgd", eps_max=1.0, eps=0.1)
    with pytest.raises(InputError, match="eps_max"):
        MinimalEpsSearch("pgd", eps_max=-1.0)
    with pytest.raises(InputError, match="iterations"):
        MinimalEpsSearch("pgd", eps_max=1.0, iterations=0)
    with pytest.raises(InputError, match="batched"):
        MinimalEpsSearch(lambda e: None, eps_max=1.0, mode="batched")
    with pytest.raises(InputError, match="not a gradient attack"):
        MinimalEpsSearch("missing", eps_max=1.0, modalities="audio")
    with pytest.raises(InputError, match="joint"):
        MinimalEpsSearch("pgd", eps_max=1.0, norm="l2", budget="joint", weights={"a": 1.0})


# ------------------------------------------------------------------------------------------ accuracy / ASR
def test_asr_denominators_and_twins():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    clean = torch.tensor([0, 1, 2, 0, 0, 0, 1, 1])  # correct: 0,1,2,3,7 (5 of 8)
    adv = torch.tensor([1, 1, 0, 0, 1, 2, 0, 0])  # broken: 0,2,7 ; fixed by the attack: 4,5,6
    assert float(F.accuracy(clean, y)) == 5 / 8
    assert float(F.accuracy(adv, y)) == 5 / 8  # 1,3,4,5,6
    assert float(F.robust_accuracy(clean, adv, y)) == 2 / 8  # 1,3
    assert float(F.attack_success_rate(clean, adv, y)) == 3 / 5  # over originally correct only
    logits = torch.nn.functional.one_hot(adv, 3).float()
    assert float(F.attack_success_rate(clean, logits, y)) == 3 / 5
    assert math.isnan(float(F.attack_success_rate(torch.tensor([1]), torch.tensor([1]), torch.tensor([0]))))
    # metrics pool counts over batches (not a mean of per-batch rates); batch 2 has no correct sample
    asr, summ = AttackSuccessRate(), RobustnessSummary()
    for sl in (slice(0, 5), slice(5, 7), slice(7, 8)):
        asr.update(clean[sl], adv[sl], y[sl])
        summ.update(clean[sl], adv[sl], y[sl])
    assert float(asr.compute()) == 3 / 5
    s = summ.compute()
    assert (float(s["clean_accuracy"]), float(s["accuracy"]), float(s["robust_accuracy"])) == (5 / 8, 5 / 8, 2 / 8)
    assert int(s["n"]) == 8 and float(s["attack_success_rate"]) == 3 / 5
    ra = RobustAccuracy()
    ra.update(clean, adv, y)
    assert float(ra.compute()) == float(F.robust_accuracy(clean, adv, y))
    asr.reset()
    assert math.isnan(float(asr.compute()))
    with pytest.raises(InputError, match="one entry per sample"):
        F.accuracy(clean, y[:3])
    with pytest.raises(InputError, match="integer class ids"):
        F.accuracy(clean.float(), y)


def test_worst_case_against_loops():
    g = torch.Generator().manual_seed(0)
    corr = torch.rand(50, 3, generator=g) < 0.7
    clean = torch.rand(50, generator=g) < 0.8
    ref_all = [all(bool(v) for v in row) for row in corr]
    ref_first = [next((j for j, v in enumerate(row) if not v), -1) for row in corr]
    assert F.worst_case(corr).tolist() == ref_all
    assert F.first_failure(corr).tolist() == ref_first
    named = {"image": corr[:, 0], "audio": corr[:, 1], "text": corr[:, 2]}
    assert F.worst_case(named).tolist() == ref_all
    wc = WorstCaseAccuracy(["image", "audio", "text"])
    for sl in (slice(0, 20), slice(20, 50)):
        wc.update({k: v[sl] for k, v in reversed(named.items())}, clean=clean[sl])  # key order irrelevant
    out = wc.compute()
    assert float(out["worst_case"]) == sum(ref_all) / 50 == float(F.worst_case_accuracy(corr))
    assert torch.equal(out["per_condition"], corr.double().mean(0))
    robust = [c and a for c, a in zip(clean.tolist(), ref_all, strict=True)]
    assert float(out["robust_worst_case"]) == sum(robust) / 50 == float(F.worst_case_accuracy(corr, clean))
    broken = [c and not a for c, a in zip(clean.tolist(), ref_all, strict=True)]
    assert float(out["attack_success_rate"]) == sum(broken) / int(clean.sum())
    with pytest.raises(InputError, match="expected correctness"):
        wc.update({"image": corr[:, 0]})
    wc2 = WorstCaseAccuracy(3)
    wc2.update(corr[:10], clean=clean[:10])
    wc2.update(corr[10:])
    with pytest.raises(InputError, match="every update or never"):
        wc2.compute()


# ------------------------------------------------------------------------------------------ curves
def test_auc_against_hand_trapezoid():
    x = [0.0, 0.01, 0.03, 0.1, 0.3]
    y = [0.9, 0.8, 0.55, 0.2, 0.0]
    hand = 0.0
    for i in range(4):
        hand += (x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2
    assert float(F.auc(x, y, normalize=False)) == pytest.approx(hand, abs=1e-15)
    assert float(F.auc(x, y)) == pytest.approx(hand / 0.3, abs=1e-15)
    assert float(F.auc([1, 2, 3, 4, 5], [0.5] * 5)) == pytest.approx(0.5)  # constant curve: its value
    both = F.auc(x, torch.tensor([y, [1.0] * 5]))
    assert both.shape == (2,) and float(both[1]) == pytest.approx(1.0)
    with pytest.raises(InputError, match="strictly increasing"):
        F.auc([0.0, 0.2, 0.1], [1, 1, 1])
    with pytest.raises(InputError, match="one per x"):
        F.auc([0.0, 0.1], [1.0, 0.5, 0.2])
    g = torch.Generator().manual_seed(1)
    corr = torch.rand(30, 5, generator=g) < torch.tensor(y)
    curve = AccuracyCurve(x)
    curve.update(corr[:11])
    curve.update(corr[11:])
    out = curve.compute()
    assert torch.equal(out["accuracy"], F.accuracy_curve(corr))
    assert float(out["auc"]) == pytest.approx(float(F.auc(x, F.accuracy_curve(corr))), abs=1e-15)


def test_effective_robustness_synthetic_curves():
    # baseline on a straight line r = 0.5 c − 0.1 through three reference models
    beta = BaselineCurve([0.6, 0.9, 0.7], [0.2, 0.35, 0.25])
    assert float(beta(0.8)) == pytest.approx(0.3)
    assert float(F.effective_robustness(0.8, 0.5, beta)) == pytest.approx(0.2)
    assert float(F.effective_robustness(0.8, 0.5, ([0.6, 0.9], [0.2, 0.35]))) == pytest.approx(0.2)
    assert float(F.effective_robustness(0.8, 0.5, lambda c: 0.5 * c - 0.1)) == pytest.approx(0.2)
    assert math.isnan(float(beta(0.95)))  # outside the reference models' clean range
    assert float(BaselineCurve([0.6, 0.9], [0.2, 0.35], extrapolate=True)(1.0)) == pytest.approx(0.4)
    # a logit-linear law is recovered exactly by the logit fit (Taori et al.'s trend line)
    c = torch.tensor([0.55, 0.65, 0.75, 0.85, 0.95], dtype=torch.float64)
    law = lambda a: torch.sigmoid(0.8 * torch.logit(a) - 1.2)  # noqa: E731
    fit = BaselineCurve(c, law(c), method="fit", scale="logit")
    q = torch.tensor([0.5, 0.7, 0.99], dtype=torch.float64)
    assert torch.allclose(fit(q), law(q), atol=1e-9)
    # the metric equals the functional form on the pooled accuracies
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    clean = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 1, 0])  # 80 %
    adv = torch.tensor([0, 1, 1, 0, 0, 1, 1, 0, 1, 0])  # 40 %
    er = EffectiveRobustness(beta)
    er.update(clean[:4], adv[:4], y[:4])
    er.update(clean[4:], adv[4:], y[4:])
    out = er.compute()
    assert float(out["effective_robustness"]) == pytest.approx(0.4 - 0.3)
    assert float(out["baseline"]) == pytest.approx(0.3)
    with pytest.raises(InputError, match="distinct clean"):
        BaselineCurve([0.6, 0.6, 0.7], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="baseline must be"):
        F.effective_robustness(0.8, 0.5, 3)


# ------------------------------------------------------------------------------------------ matrix / results
def synthetic_result() -> tuple[EvaluationResult, dict]:
    g = np.random.default_rng(0)
    n = 40
    label = g.integers(0, 3, n)

    def preds(p_correct):
        ok = g.random(n) < p_correct
        return np.where(ok, label, (label + 1) % 3)

    conds = [
        {"condition": "pgd[audio|eps=0.1]", "label": "pgd-a-0.1", "family": "attack", "name": "pgd",
         "modalities": "audio", "eps": 0.1},
        {"condition": "pgd[audio|eps=0.2]", "label": "pgd-a-0.2", "family": "attack", "name": "pgd",
         "modalities": "audio", "eps": 0.2},
        {"condition": "pgd[image|eps=0.1]", "family": "attack", "name": "pgd", "modalities": "image", "eps": 0.1},
        {"condition": "missing[audio|fill=zeros]", "family": "missing", "name": "missing", "modalities": "audio",
         "fill": "zeros"},
        {"condition": "corruption[image+audio|kind=gaussian_noise]", "family": "corruption", "name": "corruption",
         "modalities": "image+audio", "kind": "gaussian_noise", "severity": 3},
        {"condition": "fgsm[each|eps=0.1]", "family": "attack", "name": "fgsm", "modalities": "each", "eps": 0.1},
    ]
    samples = {"index": np.arange(n), "label": label, "pred/clean": preds(0.9)}
    for c, p in zip(conds, (0.7, 0.5, 0.6, 0.8, 0.75, 0.4), strict=True):
        samples[f"pred/{c['condition']}"] = preds(p)
    succ = {m: g.random(n) < 0.4 for m in ("image", "audio")}
    for m, s in succ.items():
        samples[f"info/fgsm[each|eps=0.1]/success/{m}"] = s
    return EvaluationResult(model="toy", seed=0, samples=samples, conditions=conds), succ


def test_matrix_from_synthetic_result():
    res, succ = synthetic_result()
    corr = lambda cid: res.samples[f"pred/{cid}"] == res.samples["label"]  # noqa: E731
    mat = R.modality_matrix(res)
    assert mat.rows == ["audio", "image", "image+audio"]
    assert mat.columns == ["pgd", "missing:zeros", "gaussian_noise", "fgsm"]
    assert mat.values.shape == (3, 4)
    both = corr("pgd[audio|eps=0.1]") & corr("pgd[audio|eps=0.2]")  # same cell: worst case per sample
    assert mat["audio", "pgd"] == pytest.approx(both.mean())
    assert mat["image", "pgd"] == pytest.approx(corr("pgd[image|eps=0.1]").mean())
    assert mat["audio", "missing:zeros"] == pytest.approx(corr("missing[audio|fill=zeros]").mean())
    assert mat["image+audio", "gaussian_noise"] == pytest.approx(
        corr("corruption[image+audio|kind=gaussian_noise]").mean()
    )
    assert mat["image", "fgsm"] == pytest.approx((~succ["image"]).mean())
    assert mat["audio", "fgsm"] == pytest.approx((~succ["audio"]).mean())
    assert math.isnan(mat["image", "missing:zeros"]) and int(mat.counts[1, 1]) == 0
    assert "gaussian_noise" in mat.table() and len(mat.to_rows()) == 3
    # the metric, fed in two halves, gives the same matrix
    metric = ModalityPerturbationMatrix(mat.rows, mat.columns)
    for sl in (slice(0, 15), slice(15, 40)):
        metric.update({
            ("audio", "pgd"): torch.as_tensor(both[sl]),
            ("image", "fgsm"): torch.as_tensor(~succ["image"][sl]),
        })
    m2 = metric.compute()
    assert m2["audio", "pgd"] == mat["audio", "pgd"] and m2["image", "fgsm"] == mat["image", "fgsm"]
    assert math.isnan(m2["image", "pgd"])
    with pytest.raises(InputError, match="outside rows"):
        metric.update({("text", "pgd"): torch.ones(3, dtype=torch.bool)})


def test_result_helpers_on_synthetic_result():
    res, succ = synthetic_result()
    rows = {r["condition"]: r for r in res.rows()}
    for s in R.summary(res):
        assert s["accuracy"] == pytest.approx(rows[s["condition"]]["accuracy"])
        assert s["attack_success_rate"] == pytest.approx(rows[s["condition"]]["attack_success_rate"], nan_ok=True)
    mw = R.modality_worst_case(res, "fgsm[each|eps=0.1]")
    assert mw["modalities"] == ["image", "audio"]
    np.testing.assert_array_equal(mw["correct"], ~(succ["image"] | succ["audio"]))
    assert mw["first_failure"].tolist() == [0 if a else (1 if b else -1) for a, b in zip(succ["image"], succ["audio"],
                                                                                          strict=True)]
    wc = R.worst_case(res, ["pgd-a-0.1", "pgd-a-0.2"])  # labels resolve to ids
    assert wc["accuracy"] == pytest.approx(
        (res.correct("pgd[audio|eps=0.1]") & res.correct("pgd[audio|eps=0.2]")).mean()
    )
    curve = R.accuracy_curve(res, name="pgd", modalities="audio")
    assert curve.x.tolist() == [0.0, 0.1, 0.2] and curve.conditions[0] == "clean"
    assert curve.accuracy[0] == pytest.approx(res.accuracy("clean"))
    hand = (0.1 * (curve.accuracy[0] + curve.accuracy[1]) + 0.1 * (curve.accuracy[1] + curve.accuracy[2])) / 2
    assert curve.auc(normalize=False) == pytest.approx(hand)
    er = R.effective_robustness(res, "pgd-a-0.1", lambda c: c - 0.5)
    assert er == pytest.approx(res.accuracy("pgd[audio|eps=0.1]") - (res.accuracy("clean") - 0.5))
    with pytest.raises(InputError, match="no per-modality success"):
        R.modality_worst_case(res, "pgd-a-0.1")
    with pytest.raises(InputError, match="share the same"):
        R.accuracy_curve(res, name="pgd")


def test_result_helpers_on_evaluate(toy_data, toy_late):
    data, model = toy_data, toy_late
    test = data.test
    conds = [
        mr.attacks.create("fgsm", modalities="each", eps=0.1, token_surface="embedding"),
        mr.attacks.create("missing", modalities="audio", fill="zeros"),
    ]
    res = mr.evaluate(model, test, conds, checks=False)
    each_id = conds[0].id
    mw = R.modality_worst_case(res, each_id)
    assert mw["modalities"] == ["image", "audio", "text"]
    # worst case over modalities from the per-modality flags = the "each" attack's own success flag
    np.testing.assert_array_equal(~mw["correct"], res.samples[f"info/{each_id}/success"].astype(bool))
    mat = R.modality_matrix(res)
    assert mat.rows == ["image", "audio", "text"] and mat.columns == ["fgsm", "missing:zeros"]
    assert mat["audio", "missing:zeros"] == pytest.approx(res.accuracy(conds[1].id))


# ------------------------------------------------------------------------------------------ base class
def test_metric_base_reset_merge_clone():
    y = torch.tensor([0, 1, 1, 0, 1])
    p = torch.tensor([0, 1, 0, 0, 0])
    a, b = Accuracy(), Accuracy()
    a.update(p[:2], y[:2])
    b.update(p[2:], y[2:])
    c = a.clone().merge(b)
    assert float(c.compute()) == float(F.accuracy(p, y)) == 3 / 5
    assert float(a.compute()) == 1.0  # merge into the clone left a untouched
    a.sync()  # no process group: a no-op
    assert float(a.compute()) == 1.0
    a.reset()
    assert math.isnan(float(a.compute()))
    with pytest.raises(InputError, match="cannot merge"):
        a.merge(AttackSuccessRate())
    m = MinimalEps()
    assert m.compute().upper.shape == (0,) and math.isnan(m.compute().median())


# ------------------------------------------------------------------------------------------ torch.distributed
def _synthetic_stream():
    """Per-sample data for every metric; 64 samples, split unevenly between two ranks."""
    g = torch.Generator().manual_seed(7)
    n = 64
    y = torch.randint(0, 3, (n,), generator=g)
    clean = torch.where(torch.rand(n, generator=g) < 0.8, y, (y + 1) % 3)
    adv = torch.where(torch.rand(n, generator=g) < 0.5, y, (y + 2) % 3)
    corr = torch.rand(n, 3, generator=g) < 0.6
    sweep = torch.rand(n, 4, generator=g) < torch.tensor([0.9, 0.7, 0.4, 0.1])
    lower = torch.rand(n, generator=g, dtype=torch.float64)
    upper = torch.where(torch.rand(n, generator=g) < 0.2, math.inf, lower + 0.01)
    return {"y": y, "clean": clean, "adv": adv, "corr": corr, "sweep": sweep, "lower": lower, "upper": upper}


def _metrics():
    return {
        "acc": Accuracy(),
        "asr": AttackSuccessRate(),
        "summary": RobustnessSummary(),
        "worst": WorstCaseAccuracy(3),
        "curve": AccuracyCurve([0.0, 0.1, 0.2, 0.4]),
        "matrix": ModalityPerturbationMatrix(["image", "audio"], ["pgd"]),
        "er": EffectiveRobustness(([0.0, 1.0], [0.0, 0.5])),
        "meps": MinimalEps(),
    }


def _feed(ms, d, sl, meps=True):
    ms["acc"].update(d["clean"][sl], d["y"][sl])
    ms["asr"].update(d["clean"][sl], d["adv"][sl], d["y"][sl])
    ms["summary"].update(d["clean"][sl], d["adv"][sl], d["y"][sl])
    ms["er"].update(d["clean"][sl], d["adv"][sl], d["y"][sl])
    ms["worst"].update(d["corr"][sl], clean=(d["clean"] == d["y"])[sl])
    ms["curve"].update(d["sweep"][sl])
    ms["matrix"].update({("audio", "pgd"): d["corr"][sl, 0]})
    if meps:
        ms["meps"].update((d["lower"][sl], d["upper"][sl], (d["clean"] == d["y"])[sl]))


def _values(ms):
    out = {}
    for k, m in ms.items():
        v = m.compute()
        if k == "meps":
            v = {"lower": v.lower, "upper": v.upper, "clean": v.clean_correct, "median": torch.tensor(v.median())}
        elif k == "matrix":
            v = {"values": v.values, "counts": v.counts}
        out[k] = v
    return out


def _rank_main(rank: int, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}/store", rank=rank, world_size=2)
    try:
        d = _synthetic_stream()
        ms = _metrics()
        # rank 0: samples 0..39 in two batches; rank 1: samples 40..63; rank 1 has no minimal-ε data
        batches = [slice(0, 25), slice(25, 40)] if rank == 0 else [slice(40, 64)]
        for sl in batches:
            _feed(ms, d, sl, meps=rank == 0)
        # MinimalEps: rank 1 updates with the rest so the concatenation is in rank order
        if rank == 1:
            ms["meps"].update((d["lower"][40:], d["upper"][40:], (d["clean"] == d["y"])[40:]))
        values = _values(ms)
        local_total = int(ms["acc"].state("total"))  # compute() must restore the local states
        ms["asr"].sync()
        synced_clean = int(ms["asr"].state("clean"))
        ms["asr"].unsync()
        torch.save(
            {"values": values, "local_total": local_total, "synced_clean": synced_clean,
             "unsynced_clean": int(ms["asr"].state("clean"))},
            f"{path}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _assert_same(a, b):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _assert_same(a[k], b[k])
    else:
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.isnan(), b.isnan()) if a.is_floating_point() else True
        mask = ~a.isnan() if a.is_floating_point() else torch.ones_like(a, dtype=torch.bool)
        assert torch.equal(a[mask], b[mask])


def test_two_process_gloo_equals_one_process(tmp_path):
    d = _synthetic_stream()
    single = _metrics()
    _feed(single, d, slice(0, 64))
    expected = _values(single)
    # fork: the children inherit the imported modules (a spawned interpreter re-imports torch, ~4 s each)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    tmp_mp.start_processes(_rank_main, args=(str(tmp_path),), nprocs=2, join=True, start_method=method)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        _assert_same(got["values"], expected)
        assert got["local_total"] == (40 if rank == 0 else 24)
        clean_ok = d["clean"] == d["y"]
        assert got["synced_clean"] == int(clean_ok.sum())
        assert got["unsynced_clean"] == int(clean_ok[:40].sum() if rank == 0 else clean_ok[40:].sum())
