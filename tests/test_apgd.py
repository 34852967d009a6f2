"""APGD (Croce & Hein 2020): schedule, step halving, strength against PGD, determinism, errors.

The threat-model contract (budget, valid range, untouched modalities, ε = 0, evaluate) is checked
for APGD by the registry-walking tests of ``tests/test_attacks.py``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import mmrobust as mr
from conftest import ctx
from mmrobust.attacks.apgd import checkpoints, halving
from mmrobust.attacks.gradient import LOSSES, Objective, attack_mode
from mmrobust.attacks.threat import sample_norms

TOL = 1e-6
IMAGE_AUDIO = {"modalities": ["image", "audio"], "norm": "linf", "eps": 0.2}


def one_run(atk, model, x, y, start=None):
    """APGD's run from the clean point (or ``start``), with the objective apply() would build."""
    with attack_mode(model):
        obj = Objective(model, x, y, atk.resolve(model), LOSSES[atk.loss])
        return obj, atk.run(obj, obj.origin if start is None else start(obj))


# ------------------------------------------------------------------------------------ schedule
def test_checkpoints_by_hand():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99, 1.05 (Croce & Hein 2020, §3.2)
    assert checkpoints(100) == (0, 22, 41, 57, 70, 80, 87, 93, 99)
    assert checkpoints(20) == (0, 5, 9, 12, 14, 16, 18, 19, 20)  # 4.4, 8.2, 11.4, 14, 16, 17.4, 18.6, 19.8
    assert checkpoints(10) == (0, 3, 5, 6, 7, 8, 9, 10)  # 9.3 and 9.9 both round up to 10
    assert checkpoints(1) == (0, 1)


def _exact_checkpoints(steps):
    """The schedule in exact rational arithmetic."""
    out, p_prev, p = [0], Fraction(0), Fraction(22, 100)
    while math.ceil(p * steps) <= steps:
        w = math.ceil(p * steps)
        if w > out[-1]:
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - Fraction(3, 100), Fraction(6, 100))
    return tuple(out)


def test_checkpoints_match_exact_arithmetic():
    for steps in range(1, 400):
        assert checkpoints(steps) == _exact_checkpoints(steps), steps


def test_halving_conditions():
    inc = torch.tensor([10, 9, 10, 10, 0])
    best = torch.tensor([1.0, 1.0, 1.0, 2.0, 5.0])
    last = torch.tensor([1.0, 0.5, 1.0, 1.0, 5.0])
    was = torch.tensor([False, False, True, False, True])
    # 12 steps, rho 0.75: at most 9 increases -> condition 1 (AutoAttack's <=); equal best loss and
    # no halving at the last checkpoint -> condition 2
    got = halving(inc, 12, 0.75, best, last, was)
    assert got.tolist() == [True, True, False, False, True]


def _reference_code_checkpoints(steps):
    """AutoAttack's integer schedule: 22 % of T, then intervals shrinking by 3 % of T, at least 6 % of T."""
    k, decr, low = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, t = [], 0
    while t + k <= steps:
        t += k
        out.append(t)
        k = max(k - decr, low)
    return tuple(out)


def test_checkpoints_match_autoattack_at_its_budget():
    # AutoAttack runs T = 100: the paper's formula and the code's integer schedule agree there
    assert checkpoints(100)[1:] == _reference_code_checkpoints(100)
    assert _reference_code_checkpoints(50) == (11, 21, 30, 38, 45)  # documented difference at T = 50
    assert checkpoints(50)[1:] == (11, 21, 29, 35, 40, 44, 47, 50)


# ------------------------------------------------------------------------------------ halving
@pytest.mark.parametrize("rho", [0.75, 0.0])
def test_flat_loss_halves_at_every_checkpoint(rho, toy_late, toy_data, toy_batch):
    # eps = 0: the loss never moves, no step increases it: condition 1 ("at most rho * h increases",
    # AutoAttack's rule) holds at every checkpoint, even for rho = 0.
    x, y = toy_batch
    atk = mr.attacks.create("apgd", **{**IMAGE_AUDIO, "eps": 0.0}, steps=20, rho=rho, random_start=False)
    _, run = one_run(atk, toy_late, x, y)
    assert run.checkpoints == (5, 9, 12, 14, 16, 18, 19)
    assert bool(run.halved.all()) and run.halved.shape == (7, y.shape[0])
    assert torch.equal(run.step_scale, torch.full_like(run.step_scale, 0.5**7))


def test_condition_two_skips_the_first_checkpoint():
    # as AutoAttack's code: at w_1 only condition 1 can halve (it starts as if just halved)
    inc = torch.tensor([10, 10])
    best = torch.tensor([1.0, 1.0])
    was = torch.tensor([True, False])
    assert halving(inc, 12, 0.75, best, best, was).tolist() == [False, True]


def _reference_halving(losses, marks, rho):
    """Per-sample replay of the checkpoint rule from the loss trace (plain Python)."""
    t_max, n = losses.shape
    out = torch.zeros(len(marks), n, dtype=torch.bool)
    for i in range(n):
        f = losses[:, i].tolist()
        prev = best = best_at = f[0]
        inc, last, halved_last, j = 0, 0, True, 0
        for t in range(1, t_max):
            inc += f[t] > prev
            best = max(best, f[t])
            prev = f[t]
            if t in marks:
                h = inc <= rho * (t - last) or (not halved_last and best <= best_at)
                out[j, i] = h
                if h:
                    prev = best  # restart from the best point
                inc, last, halved_last, best_at, j = 0, t, h, best, j + 1
    return out


@pytest.mark.parametrize(
    "threat",
    [IMAGE_AUDIO, {"modalities": ["image", "audio"], "norm": "l2", "eps": 1.0, "budget": "joint"}],
    ids=["linf", "joint-l2"],
)
def test_halving_trace_matches_a_per_sample_replay(threat, toy_late, toy_data, toy_batch):
    x, y = toy_batch
    atk = mr.attacks.create("apgd", **threat, steps=30, random_start=False, loss="cw")
    obj, run = one_run(atk, toy_late, x, y)
    assert run.losses.shape == (31, y.shape[0])  # some samples resist: no early end
    assert run.checkpoints == tuple(w for w in checkpoints(30) if 0 < w < 30)
    assert bool(run.halved.any()) and not bool(run.halved.all())  # halving happens, per sample
    assert torch.equal(run.halved, _reference_halving(run.losses, run.checkpoints, 0.75))
    torch.testing.assert_close(run.step_scale, 0.5 ** run.halved.sum(0).float())
    # the returned point: first success, else the best iterate; its loss and success are exact
    loss, success = obj.score(run.x)
    assert torch.equal(success, run.success)
    torch.testing.assert_close(loss, run.loss)
    torch.testing.assert_close(run.loss[~success], run.losses.amax(0)[~success])
    assert torch.equal(run.success, (run.losses > 0).any(0))  # cw > 0 iff misclassified


# ------------------------------------------------------------------------------------ strength
@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_at_least_as_strong_as_pgd(loss, toy_late, toy_data, toy_batch):
    x, y = toy_batch
    kw = {"steps": 20, "random_start": False, "loss": loss}
    apgd = mr.attacks.create("apgd", **IMAGE_AUDIO, **kw).apply(toy_late, x, y, ctx(toy_data))
    pgd = mr.attacks.create("pgd", **IMAGE_AUDIO, **kw).apply(toy_late, x, y, ctx(toy_data))
    assert int(apgd.info["success"].sum()) >= int(pgd.info["success"].sum())
    both = ~apgd.info["success"] & ~pgd.info["success"]
    assert bool(both.any())
    assert float(apgd.info["loss"][both].mean()) >= float(pgd.info["loss"][both].mean())
    for m in IMAGE_AUDIO["modalities"]:
        assert float(sample_norms(apgd.x[m] - x[m], "linf").max()) <= 0.2 + TOL


def test_deterministic_given_the_generator(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    atk = mr.attacks.create("apgd", **IMAGE_AUDIO, steps=5, restarts=2)
    a = atk.apply(toy_late, x, y, ctx(toy_data, 7))
    b = atk.apply(toy_late, x, y, ctx(toy_data, 7))
    c = atk.apply(toy_late, x, y, ctx(toy_data, 8))
    for m in IMAGE_AUDIO["modalities"]:
        assert torch.equal(a.x[m], b.x[m])
        assert not torch.equal(a.x[m], c.x[m])  # the random start follows the generator
    assert all(torch.equal(a.info[k], b.info[k]) for k in a.info)


def test_restarts_keep_first_success(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    one = mr.attacks.create("apgd", **IMAGE_AUDIO, steps=5).apply(toy_late, x, y, ctx(toy_data, 3))
    three = mr.attacks.create("apgd", **IMAGE_AUDIO, steps=5, restarts=3).apply(toy_late, x, y, ctx(toy_data, 3))
    s1, s3 = one.info["success"], three.info["success"]
    assert bool((s3 | ~s1).all())
    for m in IMAGE_AUDIO["modalities"]:
        assert torch.equal(three.x[m][s1], one.x[m][s1])
    assert bool((three.info["loss"][~s3] >= one.info["loss"][~s3]).all())


def test_text_through_embeddings(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    atk = mr.attacks.create("apgd", modalities="text", norm="l2", eps=1.0, steps=10, token_surface="embedding")
    out = atk.apply(toy_late, x, y, ctx(toy_data))
    with torch.no_grad():
        clean = toy_late.embed("text", x["text"])
        wrong = toy_late(out.x, embeddings=out.embeddings).argmax(1) != y
    pad = x["text"] == toy_late.spec["text"].pad_id
    assert torch.equal(out.embeddings["text"][pad], clean[pad])
    assert float(out.info["norm/text"].max()) <= 1.0 + TOL
    assert torch.equal(out.info["success"], wrong) and bool(wrong.any())


def test_similar_robust_accuracy_to_torchattacks(toy_late, toy_data, toy_batch):
    torchattacks = pytest.importorskip("torchattacks")
    from test_attacks import OneModalityView

    x, y = toy_batch
    with torch.no_grad():
        correct = toy_late(x).argmax(1) == y
    # torchattacks' APGD attacks only the samples it sees correctly classified, re-indexing the
    # batch: give it a view of the clean-correct samples so the other modalities stay aligned.
    xc, yc = {k: v[correct] for k, v in x.items()}, y[correct]
    view = OneModalityView(toy_late, xc, "image")
    with torch.random.fork_rng():  # it seeds the global generator
        adv = torchattacks.APGD(view, norm="Linf", eps=0.3, steps=20, seed=0)(xc["image"], yc)
    with torch.no_grad():
        ref_acc = float((view(adv).argmax(1) == yc).sum()) / len(y)
    atk = mr.attacks.create("apgd", modalities="image", norm="linf", eps=0.3, steps=20)
    ours = 1.0 - float(atk.apply(toy_late, x, y, ctx(toy_data)).info["success"].float().mean())
    assert ref_acc < float(correct.float().mean()) - 0.3  # the reference attack does something
    assert abs(ours - ref_acc) <= 0.06, (ours, ref_acc)  # random starts differ: close, not equal


# ------------------------------------------------------------------------------------ errors
def test_params_and_id():
    atk = mr.attacks.create("apgd", modalities="audio", eps=0.03)
    assert atk.params() == {
        "modalities": ["audio"], "norm": "linf", "eps": 0.03, "budget": "per_modality", "loss": "ce",
        "steps": 100, "random_start": True, "restarts": 1, "rho": 0.75,
    }
    assert atk.id == (
        "apgd[audio|norm=linf,eps=0.03,budget=per_modality,loss=ce,steps=100,random_start=True,restarts=1,rho=0.75]"
    )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"steps": 0}, r"steps must be an integer >= 1, got 0"),
        ({"steps": 2.5}, r"steps must be an integer >= 1, got 2.5"),
        ({"restarts": 0}, r"restarts must be an integer >= 1, got 0"),
        ({"restarts": 2, "random_start": False}, r"restarts > 1 without random_start"),
        ({"random_start": "yes"}, r"random_start must be True or False, got 'yes'"),
        ({"rho": 1.5}, r"rho must be a number in \[0, 1\], got 1.5"),
        ({"rho": -0.1}, r"rho must be a number in \[0, 1\], got -0.1"),
        ({"rho": math.nan}, r"rho must be a number in \[0, 1\], got nan"),
        ({"rho": True}, r"rho must be a number in \[0, 1\], got True"),
        ({"norm": "l1"}, r"apgd: unsupported norm 'l1'"),
        ({"loss": "xent"}, r"apgd: unknown loss 'xent'"),
    ],
)
def test_bad_hyper_parameters(kw, match):
    with pytest.raises(mr.InputError, match=match):
        mr.attacks.create("apgd", modalities="audio", eps=0.1, **kw)
    with pytest.raises(mr.InputError, match="steps must be an integer"):
        checkpoints(0)
