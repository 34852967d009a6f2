"""PGD adversarial training and modality dropout (methods.md §6 baselines) on the toy 3-modality dataset.

The adversarial batches are checked against the threat model (budget, valid range, untouched
modalities bit-identical, token ids through embeddings), the random single-source choice against
its seed, the loss against a hand-computed clean/adversarial mix, and the defences for mode
restoration, determinism, checkpoints and clear errors.
"""

from __future__ import annotations

import copy

import pytest
import torch

import mmrobust as mr
from mmrobust.defenses.adversarial import AdversarialTraining
from mmrobust.defenses.dropout import ModalityDropout
from mmrobust.defenses.training import supervised_loss

EPS = {"image": 0.1, "audio": 0.05, "text": 0.3}
TOL = 1e-6


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def check_budget(model, x, out, attacked, eps):
    """Attacked modalities within ε and their valid range; the others the very same tensors."""
    for m in model.modalities:
        if m not in attacked:
            assert out.x[m] is x[m] and m not in out.embeddings
        elif m == "text":
            assert out.x[m] is x[m]  # token ids untouched: the attack moves their embeddings
            with torch.no_grad():
                clean = model.embed(m, x[m])
            delta = out.embeddings[m] - clean
            assert float(delta.abs().amax()) <= eps[m] + TOL
            assert float(delta[x[m] == 0].abs().amax()) == 0.0  # pad positions are not perturbed
            assert float(delta.abs().amax()) > 0
        else:
            delta = out.x[m] - x[m]
            assert float(delta.abs().amax()) <= eps[m] + TOL and float(delta.abs().amax()) > 0
            assert float(out.x[m].min()) >= 0.0 and float(out.x[m].max()) <= 1.0


def test_all_modality_batch_respects_the_budget(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    d = AdversarialTraining("all", eps=EPS, steps=3)
    obj = d.objective(toy_data.train.stats)
    out, mods = obj.adversarial_batch(toy_late, x, y, torch.Generator().manual_seed(0))
    assert mods == ("image", "audio", "text")
    check_budget(toy_late, x, out, mods, EPS)
    for m in ("image", "audio"):
        assert torch.allclose(out.info[f"norm/{m}"], (out.x[m] - x[m]).flatten(1).abs().amax(1))


def test_random_single_source_choice_is_seeded(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    x, y = {m: t[:16] for m, t in x.items()}, y[:16]
    d = AdversarialTraining("random", eps=EPS, steps=2)

    def run(seed):
        obj = d.objective(toy_data.train.stats)
        g = torch.Generator().manual_seed(seed)
        for _ in range(12):
            out, mods = obj.adversarial_batch(toy_late, x, y, g)
            assert len(mods) == 1  # single source
            check_budget(toy_late, x, out, mods, EPS)
        return obj.chosen

    first = run(5)
    assert run(5) == first
    assert run(6) != first
    assert {m for (m,) in first} == set(toy_late.modalities)
    # the first choice is the generator's first draw
    i = int(torch.randint(3, (1,), generator=torch.Generator().manual_seed(5)))
    assert first[0] == (toy_late.modalities[i],)


def test_fixed_modality_and_l2_threats(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    out, mods = AdversarialTraining("audio", eps=0.05, steps=2).objective(toy_data.train.stats).adversarial_batch(
        toy_late, x, y, torch.Generator().manual_seed(0))
    assert mods == ("audio",)
    check_budget(toy_late, x, out, mods, {"audio": 0.05})
    d = AdversarialTraining(["image", "audio"], eps=0.5, norm="l2", budget="joint", steps=2)
    out, _ = d.objective(toy_data.train.stats).adversarial_batch(toy_late, x, y, torch.Generator().manual_seed(0))
    joint = torch.sqrt(sum((out.x[m] - x[m]).flatten(1).square().sum(1) for m in ("image", "audio")))
    assert float(joint.max()) <= 0.5 + 1e-5


@pytest.mark.parametrize("r", [0.3, 1.0])
def test_loss_mixes_clean_and_adversarial_and_restores_the_model(r, toy_late, toy_data, toy_batch):
    model = copy.deepcopy(toy_late).train()
    x, y = toy_batch
    d = AdversarialTraining("random", eps=EPS, steps=2, adv_weight=r, train={"unimodal_loss": 0.5})
    loss, logits = d.objective(toy_data.train.stats)(model, x, y, torch.Generator().manual_seed(1))
    # the model is back in train mode with trainable parameters, and the loss reaches them
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("encoders.image"))
    # reference: the same adversarial batch (same seed), the loss mixed by hand
    out, _ = d.objective(toy_data.train.stats).adversarial_batch(model, x, y, torch.Generator().manual_seed(1))
    with torch.no_grad():
        adv, adv_logits = supervised_loss(model, model.encode(out.x, embeddings=out.embeddings or None), y, 0.5)
        clean, _ = supervised_loss(model, model.encode(x), y, 0.5)
    assert float(loss.detach()) == pytest.approx(float((1 - r) * clean + r * adv), rel=1e-5)
    assert torch.allclose(logits.detach(), adv_logits, atol=1e-5)


def test_same_seed_same_model_input_untouched_and_checkpoint(toy_data, tmp_path):
    fresh = mr.models.create("late", toy_data.spec)
    before = copy.deepcopy(fresh)
    d = mr.defenses.create("adversarial_training", modalities="random", eps=EPS, steps=2, epochs=1)
    a, b = d.apply(fresh, toy_data, seed=0), d.apply(fresh, toy_data, seed=0)
    c = d.apply(fresh, toy_data, seed=1)
    assert same_weights(a, b) and not same_weights(a, c)
    assert same_weights(fresh, before) and not a.training
    counts = a.defense_info["attacked_counts"]
    assert counts == b.defense_info["attacked_counts"] and sum(counts.values()) == 4  # 256 samples / 64
    assert a.config["defense"] == {"name": "adversarial_training", "params": d.params()}
    mr.models.save(a, tmp_path / "at.pt")
    loaded = mr.models.load(tmp_path / "at.pt")
    x, _ = toy_data.test.batch(torch.arange(32))
    with torch.no_grad():
        assert torch.allclose(loaded(x), a(x), atol=1e-6)
    assert loaded.defense_info["attacked_counts"] == counts


def test_adversarial_training_buys_robustness_on_toy(toy_data):
    eps = {"image": 0.15, "audio": 0.15}
    plain = mr.models.create("late", toy_data.spec, modalities=["image", "audio"])
    mr.train(plain, toy_data, epochs=6, quiet=True)
    at = AdversarialTraining("all", eps=eps, steps=3, adv_weight=1.0, epochs=6).apply(
        mr.models.create("late", toy_data.spec, modalities=["image", "audio"]), toy_data)
    atk = mr.attacks.create("pgd", modalities="all", eps=eps, steps=10)
    acc = {k: mr.evaluate(m, toy_data.test, [atk], checks=False).accuracy(atk.id) for k, m in (("plain", plain),
                                                                                               ("at", at))}
    assert acc["at"] > acc["plain"] + 0.1, acc


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -0.1}, "eps.*-0.1"),
        ({"eps": float("nan")}, "eps"),
        ({"eps": 0.1, "steps": 0}, "steps"),
        ({"eps": 0.1, "adv_weight": 0.0}, "adv_weight must be a finite number > 0 and <= 1.*0.0"),
        ({"eps": 0.1, "adv_weight": 1.5}, "adv_weight.*1.5"),
        ({"eps": 0.1, "modalities": "each"}, "'each' is an evaluation threat"),
        ({"eps": 0.1, "modalities": 5}, "modalities must be.*5"),
        ({"eps": 0.1, "modalities": []}, "modalities must be"),
        ({"eps": 0.1, "modalities": ["image", "image"]}, "duplicate"),
        ({"eps": 0.1, "norm": "l3"}, "norm 'l3'"),
        ({"eps": 0.1, "modalities": "random", "budget": "joint", "norm": "l2"}, "joint"),
        ({"eps": 0.1, "epochs": 0}, "epochs"),
        ({"eps": 0.1, "train": {"quiet": True}}, r"train\['quiet'\]"),
    ],
)
def test_bad_hyperparameters_are_clear(kwargs, match):
    with pytest.raises(mr.InputError, match=match):
        mr.defenses.create("adversarial_training", **kwargs)


def test_bad_model_is_clear(toy_late, toy_data):
    with pytest.raises(mr.InputError, match="unknown modality 'video'"):
        AdversarialTraining("video", eps=0.1, epochs=1).apply(toy_late, toy_data)
    with pytest.raises(mr.InputError, match="eps has no radius for modality 'text'"):
        AdversarialTraining("random", eps={"image": 0.1, "audio": 0.1}, epochs=1).apply(toy_late, toy_data)


# ------------------------------------------------------------------------------------------ dropout
def test_modality_dropout_is_train_with_modality_dropout(toy_data):
    fresh = mr.models.create("concat", toy_data.spec)
    out = mr.defenses.create("modality_dropout", p=0.4, epochs=2).apply(fresh, toy_data, seed=3)
    ref = copy.deepcopy(fresh)
    mr.train(ref, toy_data, epochs=2, modality_dropout=0.4, seed=3, quiet=True)
    assert same_weights(out, ref)
    other = ModalityDropout(p=0.1, epochs=2).apply(fresh, toy_data, seed=3)
    assert not same_weights(out, other)
    assert out.config["defense"]["name"] == "modality_dropout" and out.defense_info["epochs_run"] == 2


@pytest.mark.parametrize(("p", "match"), [(0.0, "0.0"), (1.0, "1.0"), (-0.1, "-0.1"), (True, "True")])
def test_modality_dropout_bad_p(p, match):
    with pytest.raises(mr.InputError, match=f"p must be a finite number > 0 and < 1 \\(a probability\\), got {match}"):
        ModalityDropout(p=p)


def test_modality_dropout_needs_two_modalities(toy_data):
    model = mr.models.create("unimodal", toy_data.spec, modality="image")
    with pytest.raises(mr.InputError, match="at least 2 modalities"):
        ModalityDropout(epochs=1).apply(model, toy_data)
    with pytest.raises(mr.InputError, match=r"train\['modality_dropout'\]"):
        ModalityDropout(train={"modality_dropout": 0.2})
