"""Odd-one-out robust fusion (OOO, Yang et al. CVPR 2021): the fusion layer, the defence, the Evade attack.

Toy data from ``conftest.py``; one module-wide concat model (3 epochs) and one OOO model trained from
it for one tiny epoch.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmrobust as mr
from conftest import ctx
from mmrobust.attacks.evade import EvasionObjective
from mmrobust.attacks.gradient import LOSSES, Objective, attack_mode
from mmrobust.defenses.ooo import OddOneOut, detection_loss, detection_report
from mmrobust.models.fusion.ooo import OddOneOutFusion, detection_confusion, odd_one_out_probs

NAMES = ["image", "audio", "text"]
DIMS = {"image": 5, "audio": 4, "text": 3}
EPS = {"image": 0.2, "audio": 0.2, "text": 0.5}


def tiny_defense(**kw):
    base = {"eps": EPS, "epochs": 1, "attack_steps": 2, "select": "clean", "train": {"batch_size": 32, "lr": 5e-3}}
    return OddOneOut(**{**base, **kw})


@pytest.fixture(scope="module")
def toy_concat(toy_data):
    model = mr.models.create("concat", toy_data.spec, fusion_kwargs={"hidden": 32})
    mr.train(model, toy_data, epochs=3, quiet=True)
    return model.eval()


@pytest.fixture(scope="module")
def toy_ooo(toy_concat, toy_data):
    return tiny_defense().apply(toy_concat, toy_data, seed=0)


def random_z(n=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g, dtype=dtype) for m, d in DIMS.items()}


def fusion(**kw):
    torch.manual_seed(0)
    return OddOneOutFusion(NAMES, DIMS, num_classes=4, **{"hidden": 7, "detector_hidden": 8, **kw})


def force_outcome(f: OddOneOutFusion, j: int) -> None:
    """Make o exactly one-hot on outcome j (last detector layer: zero weights, a huge bias gap)."""
    last = f.detector[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-1e4)
        last.bias[j] = 0.0


# ------------------------------------------------------------------------------------ fusion layer
def test_outcome_order_and_probabilities():
    f = fusion()
    assert f.outcomes == ["image", "audio", "text", "none"] and f.none_index == 3
    assert [f.outcome_index(m) for m in NAMES] == [0, 1, 2]
    z = random_z()
    fused, aux = f(z)
    o = aux["odd_one_out"]
    assert o.shape == (6, 4) and aux["odd_one_out_logits"].shape == (6, 4) and aux["experts"].shape == (6, 4, 7)
    torch.testing.assert_close(o.sum(1), torch.ones(6))
    assert bool((o > 0).all())
    torch.testing.assert_close(o, torch.softmax(aux["odd_one_out_logits"], 1))
    # brute force: Σ_j o_j e_j, one sample and one expert at a time
    ref = torch.zeros(6, 7)
    for i in range(6):
        for j in range(4):
            ref[i] += o[i, j] * aux["experts"][i, j]
    torch.testing.assert_close(fused, ref)
    with pytest.raises(mr.UnsupportedError, match=r"needs every modality; \['audio'\] absent"):
        f({m: t for m, t in z.items() if m != "audio"})


def test_expert_j_never_sees_modality_j():
    f = fusion()
    z = random_z()
    base = f.expert_outputs(z)
    for j, m in enumerate(NAMES):
        moved = dict(z)
        moved[m] = z[m] + 3.0 * torch.randn_like(z[m])
        out = f.expert_outputs(moved)
        assert torch.equal(out[:, j], base[:, j])  # bit-identical
        for k in range(4):
            if k != j:
                assert not torch.equal(out[:, k], base[:, k])


@pytest.mark.parametrize("j", [0, 1, 2, 3])
def test_one_hot_o_gives_that_expert(j):
    f = fusion()
    force_outcome(f, j)
    z = random_z()
    fused, aux = f(z)
    assert torch.equal(aux["odd_one_out"], F.one_hot(torch.full((6,), j), 4).float())
    assert torch.equal(fused, aux["experts"][:, j])
    # with o on "modality j perturbed", the output does not depend on modality j at all
    if j < 3:
        moved = {**z, NAMES[j]: z[NAMES[j]] * -5.0}
        assert torch.equal(f(moved)[0], fused)


def test_gradient_flows_through_o():
    f = fusion().double()
    z = random_z(n=3, dtype=torch.float64)
    leaves = [z[m].clone().requires_grad_(True) for m in NAMES]
    assert torch.autograd.gradcheck(lambda *t: f(dict(zip(NAMES, t, strict=True)))[0], leaves)
    # the classification loss trains the detector (through o) and every expert
    f.zero_grad()
    fused, _ = f(z)
    (fused.square().sum()).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in f.detector.parameters())
    assert all(float(e[0].weight.grad.abs().sum()) > 0 for e in f.experts)


def test_bad_fusion_arguments(spec):
    with pytest.raises(mr.InputError, match=r"ooo fusion needs at least two modalities.*\['image'\]"):
        OddOneOutFusion(["image"], {"image": 4}, num_classes=2)
    with pytest.raises(mr.InputError, match=r"at least two modalities"):
        mr.models.create("ooo", spec, modalities=["image"])
    with pytest.raises(mr.InputError, match="hidden must be an integer >= 1, got 0"):
        OddOneOutFusion(NAMES, DIMS, 4, hidden=0)
    with pytest.raises(mr.InputError, match=r"detector_layers must be an integer >= 1, got 1\.5"):
        OddOneOutFusion(NAMES, DIMS, 4, detector_layers=1.5)
    with pytest.raises(mr.UnsupportedError, match="cannot drop"):
        mr.models.create("ooo", spec)(
            {"image": torch.rand(2, 1, 8, 8), "text": torch.ones(2, 6, dtype=torch.long)}, drop=["audio"]
        )


# ------------------------------------------------------------------------------------ the defence
def test_one_modality_model_is_refused(toy_data):
    uni = mr.models.create("unimodal", toy_data.spec, modality="image")
    with pytest.raises(mr.InputError, match=r"ooo: needs a model with at least 2 modalities; this one has only"):
        OddOneOut().check(uni)
    with pytest.raises(mr.InputError, match="at least 2 modalities"):
        tiny_defense().apply(uni, toy_data)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"eps": -0.1}, "eps must be a finite number >= 0, got -0.1"),
        ({"eps": {"audio": float("nan")}}, "eps for modality 'audio' must be a finite number"),
        ({"norm": "l1"}, "norm must be 'linf' or 'l2', got 'l1'"),
        ({"attack_modalities": "some"}, "attack_modalities must be 'random', 'sample' or 'all', got 'some'"),
        ({"lam": -1}, "lam must be a finite number >= 0, got -1"),
        ({"attack_steps": 0}, "attack_steps must be an integer >= 1, got 0"),
        ({"epochs": 2.0}, "epochs must be an integer >= 1, got 2.0"),
        ({"select": "best"}, "select must be 'robust' or 'clean', got 'best'"),
        ({"corruption_severities": (0, 3)}, r"corruption_severities must be .* 1..5, got \(0, 3\)"),
        ({"freeze_encoders": 1}, "freeze_encoders must be True or False, got 1"),
        ({"train": {"lr": 0}}, r"ooo: invalid train settings: lr=0 \(Input should be greater than 0\)"),
        ({"train": {"batch_size": 1.5}}, r"ooo: train\['batch_size'\] must be an integer, got 1.5"),
        ({"train": {"lrr": 0.1}}, "ooo: unknown train setting 'lrr'; train accepts batch_size, lr, weight_decay, "
                                  "optimizer, momentum, lr_step, lr_gamma, patience, tensorboard$"),
        ({"train": {"unimodal_loss": 1.0}}, r"ooo: train\['unimodal_loss'\] does not apply"),
        ({"train": {"modality_dropout": 0.2}}, r"ooo: train\['modality_dropout'\] is not supported"),
        ({"train": {"epochs": 3}}, r"ooo: train\['epochs'\] is set by the defence; use the epochs hyper-parameter"),
    ],
)
def test_bad_hyper_parameters(kw, match):
    with pytest.raises(mr.InputError, match=match):
        mr.defenses.create("ooo", **kw)


def test_train_settings_reach_the_training_loop(toy_concat, toy_data, monkeypatch):
    # OOO's own default lr (1e-3) is reported in train; the other settings are TrainConfig's
    import importlib

    ooo_module = importlib.import_module("mmrobust.defenses.ooo")  # where the defence's training loop is bound

    seen = []

    class Stop(Exception):
        pass

    def spy(model, data, config=None, **kw):
        seen.append(mr.TrainConfig.model_validate(config))
        raise Stop

    monkeypatch.setattr(ooo_module, "train", spy)
    assert OddOneOut().params()["train"] == {"lr": 1e-3}
    for d, want in [
        (OddOneOut(eps=EPS, epochs=2), (2, 1e-3, 64, 0.0, None)),
        (OddOneOut(eps=EPS, epochs=1, train={"weight_decay": 1e-4, "batch_size": 16, "lr": 3e-3, "patience": 1}),
         (1, 3e-3, 16, 1e-4, 1)),
    ]:
        with pytest.raises(Stop):
            d.apply(toy_concat, toy_data, seed=5)
        cfg = seen.pop()
        assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.patience) == want
        assert (cfg.seed, cfg.unimodal_loss, cfg.modality_dropout) == (5, 0.0, 0.0)


def test_eps_must_cover_the_model(toy_concat):
    with pytest.raises(mr.InputError, match="eps gives no radius for modality 'text'"):
        OddOneOut(eps={"image": 0.1, "audio": 0.1}).check(toy_concat)
    with pytest.raises(mr.InputError, match=r"eps names unknown modalities \['video'\]"):
        OddOneOut(eps={**EPS, "video": 0.1}).check(toy_concat)
    assert OddOneOut().radii(toy_concat) == {"image": 0.1, "audio": 0.05, "text": 0.5}  # defaults by kind
    assert OddOneOut(eps=0.3).radii(toy_concat) == dict.fromkeys(NAMES, 0.3)


def test_warm_start_reproduces_the_concat_model(toy_concat, toy_data, toy_batch):
    x, _ = toy_batch
    robust = tiny_defense().build(toy_concat, toy_data, seed=0)
    with torch.no_grad():
        z = toy_concat.encode(x)
        for j in range(4):
            force_outcome(robust.fusion, j)
            got = robust(x)
            zj = dict(z)
            if j < 3:  # e_j = concat with z_j replaced by its training mean
                mean = torch.cat([toy_concat.encode(xb)[NAMES[j]] for xb, _, _ in toy_data.train.batches(64)]).mean(0)
                zj[NAMES[j]] = mean.expand_as(z[NAMES[j]])
            torch.testing.assert_close(got, toy_concat.logits_from_embeddings(zj), atol=1e-5, rtol=1e-5)


def test_training_is_deterministic_and_leaves_the_source_alone(toy_concat, toy_data, toy_ooo):
    before = copy.deepcopy(toy_concat.state_dict())
    again = tiny_defense().apply(toy_concat, toy_data, seed=0)
    sa, sb = toy_ooo.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(before[k], v) for k, v in toy_concat.state_dict().items())
    # frozen encoders: the robust model's encoders are the source's
    assert all(torch.equal(v, toy_concat.encoders.state_dict()[k]) for k, v in toy_ooo.encoders.state_dict().items())
    assert not toy_ooo.training and toy_ooo.fusion_name == "ooo"
    info = toy_ooo.defense_info
    assert info["source"] == "concat" and info["warm_started"] and info["outcomes"] == [*NAMES, "none"]
    assert toy_ooo.config["defense"]["name"] == "ooo"


def _views(model, data, eps, n=64, seed=0):
    """Clean and single-source PGD views (embeddings) of the first ``n`` validation samples against ``model``."""
    x, y = data.val.batch(torch.arange(n))
    with torch.no_grad():
        z = model.encode(x)
    views, outcomes = [z], [3]
    for i, m in enumerate(NAMES):
        atk = tiny_defense().training_attack(model, m, eps[m])
        out = atk.apply(model, x, y, ctx(data, seed))
        with torch.no_grad():
            views.append(model.encode(out.x, embeddings=out.embeddings or None))
        outcomes.append(i)
    return views, outcomes


def test_one_tiny_epoch_improves_the_detection_loss(toy_concat, toy_data):
    # toy PGD views at these radii are detectable (an offline detector reaches ~98 %); one epoch of
    # 16 steps with every modality attacked in every batch must already lower the detection loss
    eps = {"image": 0.5, "audio": 0.5, "text": 2.0}
    kw = {"eps": eps, "attack_modalities": "all", "attack_steps": 3, "train": {"batch_size": 16, "lr": 1e-2}}
    start = tiny_defense(**kw).build(toy_concat, toy_data, seed=0)
    trained = tiny_defense(**kw).apply(toy_concat, toy_data, seed=0)
    views, outcomes = _views(trained, toy_data, eps)  # attacks on the trained model, including its o
    with torch.no_grad():
        before = float(detection_loss(start, views, outcomes))
        after = float(detection_loss(trained, views, outcomes))
    assert before == pytest.approx(4 * np.log(4), abs=0.3)  # an untrained detector is close to uniform
    assert after < before - 0.3, (before, after)


def test_checkpoint_round_trip(toy_ooo, toy_batch, tmp_path):
    x, _ = toy_batch
    path = mr.models.save(toy_ooo, tmp_path / "ooo.pt")
    back = mr.models.load(path)
    assert back.fusion_name == "ooo" and back.config["fusion_kwargs"] == toy_ooo.config["fusion_kwargs"]
    assert back.config["defense"] == toy_ooo.config["defense"]
    assert back.defense_info["source"] == "concat"
    with torch.no_grad():
        assert torch.equal(back(x), toy_ooo(x))
    assert torch.equal(odd_one_out_probs(back, x), odd_one_out_probs(toy_ooo, x))


@pytest.mark.parametrize("mode", ["random", "sample", "all"])
def test_objective_modes(mode, toy_ooo, toy_data, toy_batch):
    model = copy.deepcopy(toy_ooo).train()
    d = tiny_defense(attack_modalities=mode, corruptions=True)
    obj = d.objective(model, toy_data.train.stats)
    x, y = toy_batch
    loss, logits = obj(model, x, y, torch.Generator().manual_seed(0))
    assert logits.shape == (y.shape[0], 4) and torch.isfinite(loss) and loss.dim() == 0
    loss.backward()
    assert all(p.grad is None for p in model.encoders.parameters())  # frozen
    assert float(model.fusion.detector[-1].weight.grad.abs().sum()) > 0
    # deterministic given the generator
    again, _ = obj(model, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(loss.detach(), again.detach())


# ------------------------------------------------------------------------------------ evade + detection
def test_evade_is_pgd_without_a_detector_or_kappa(toy_late, toy_ooo, toy_data, toy_batch):
    x, y = toy_batch
    kw = {"modalities": "audio", "eps": 0.2, "steps": 4}
    for model, kappa in ((toy_late, 2.0), (toy_ooo, 0.0)):
        a = mr.attacks.create("pgd", **kw).apply(model, x, y, ctx(toy_data, 5))
        b = mr.attacks.create("evade", kappa=kappa, **kw).apply(model, x, y, ctx(toy_data, 5))
        assert torch.equal(a.x["audio"], b.x["audio"]) and torch.equal(a.info["loss"], b.info["loss"])
    assert "ooo_pred" not in mr.attacks.create("evade", **kw).apply(toy_late, x, y, ctx(toy_data)).info
    out = mr.attacks.create("evade", kappa=0.0, **kw).apply(toy_ooo, x, y, ctx(toy_data))
    o = odd_one_out_probs(toy_ooo, out.x)
    assert torch.equal(out.info["ooo_pred"], o.argmax(1))
    torch.testing.assert_close(out.info["ooo_p_attacked"], o[:, 1])
    torch.testing.assert_close(out.info["ooo_p_none"], o[:, 3])


@pytest.mark.parametrize("target", ["attacked", "none"])
def test_evasion_term_matches_brute_force(target, toy_ooo, toy_batch):
    x, y = toy_batch
    atk = mr.attacks.create("evade", modalities=["image", "audio"], eps=0.2, kappa=0.7, target=target)
    threat = atk.resolve(toy_ooo)
    with attack_mode(toy_ooo):
        plain = Objective(toy_ooo, x, y, threat, LOSSES["ce"])
        obj = EvasionObjective.wrap(plain, 0.7, target)
        adv = {m: (x[m] + 0.1).clamp(0, 1) for m in ("image", "audio")}
        loss, _ = obj.score(adv)
        o = odd_one_out_probs(toy_ooo, {**x, **adv})
        ce = F.cross_entropy(toy_ooo({**x, **adv}), y, reduction="none")
        term = torch.log(1 - o[:, 0] - o[:, 1]) if target == "attacked" else torch.log(o[:, 3])
        torch.testing.assert_close(loss, ce + 0.7 * term, atol=1e-4, rtol=1e-4)
        # the blocked gradient pass scores the same loss
        loss2, _, grads = obj.loss_and_grad(adv)
        torch.testing.assert_close(loss2, loss, atol=1e-5, rtol=1e-5)
        assert set(grads) == {"image", "audio"}


def test_evade_hides_from_the_detector(toy_ooo, toy_data, toy_batch):
    x, y = toy_batch
    kw = {"modalities": "image", "eps": 0.3, "steps": 10}
    plain = mr.attacks.create("evade", kappa=0.0, **kw).apply(toy_ooo, x, y, ctx(toy_data))
    hide = mr.attacks.create("evade", kappa=20.0, **kw).apply(toy_ooo, x, y, ctx(toy_data))
    assert float(hide.info["ooo_p_attacked"].mean()) < float(plain.info["ooo_p_attacked"].mean())


def test_bad_evade_arguments():
    with pytest.raises(mr.InputError, match="evade: kappa must be a finite number >= 0, got -1"):
        mr.attacks.create("evade", modalities="audio", eps=0.1, kappa=-1)
    with pytest.raises(mr.InputError, match="evade: target must be one of attacked, none, got 'clean'"):
        mr.attacks.create("evade", modalities="audio", eps=0.1, target="clean")


def test_detection_confusion_brute_force():
    g = torch.Generator().manual_seed(0)
    true, pred = torch.randint(4, (50,), generator=g), torch.randint(4, (50,), generator=g)
    ref = np.zeros((4, 4), dtype=np.int64)
    for t, p in zip(true.tolist(), pred.tolist(), strict=True):
        ref[t, p] += 1
    assert np.array_equal(detection_confusion(true, pred, 4).numpy(), ref)
    with pytest.raises(mr.InputError, match=r"outcome indices must lie in \[0, 4\)"):
        detection_confusion(true, pred + 4, 4)


def test_detection_report(toy_ooo, toy_data):
    test = toy_data.test
    each = mr.attacks.create("evade", modalities="each", eps=EPS, kappa=1.0, steps=3, token_surface="embedding")
    audio = mr.attacks.create("evade", modalities="audio", eps=0.2, kappa=0.0, steps=3)
    pair = mr.attacks.create("evade", modalities=["image", "audio"], eps=0.2, kappa=0.0, steps=3)
    res = mr.evaluate(toy_ooo, test, [each, audio, pair], seed=0, checks=False)
    rep = detection_report(toy_ooo, test, res)
    n = len(test)
    assert rep["outcomes"] == [*NAMES, "none"] and set(rep["per_view"]) == {"clean", each.id, audio.id}
    assert int(rep["confusion"].sum()) == 3 * n
    clean = rep["per_view"]["clean"]["confusion"]
    assert int(clean[3].sum()) == n and int(clean[:3].sum()) == 0
    x, _ = test.batch(torch.arange(n))
    assert np.array_equal(rep["clean_pred"], odd_one_out_probs(toy_ooo, x).argmax(1).numpy())
    a = rep["per_view"][audio.id]["confusion"]
    assert int(a[1].sum()) == n
    assert a[1, 1] / n == pytest.approx(float(np.mean(res.samples[f"info/{audio.id}/ooo_pred"] == 1)))
    chosen = res.samples[f"info/{each.id}/modality"]
    e = rep["per_view"][each.id]["confusion"]
    assert [int(e[i].sum()) for i in range(3)] == [int((chosen == i).sum()) for i in range(3)]
    assert rep["accuracy"] == pytest.approx(np.trace(rep["confusion"]) / (3 * n))
    with pytest.raises(mr.UnsupportedError, match="no odd-one-out detector"):
        detection_report(mr.models.create("late", toy_data.spec), test)
