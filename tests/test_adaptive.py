"""Adaptive evaluation: WorstCase (per-sample worst case over variants), Bpda, Condition.replace, Defense.adaptive."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmrobust as mr
from conftest import ctx, toy_spec
from mmrobust.attacks import Bpda, Transfer, WorstCase
from mmrobust.attacks.adaptive import margin
from mmrobust.attacks.evade import Evade
from mmrobust.defenses.jr import build_jr_model
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.fusion.jr import jr_mode

EPS = {"image": 0.1, "audio": 0.1, "text": 0.5}


def pgd(mods="each", **kw):
    eps = kw.pop("eps", EPS.get(mods, EPS))
    if mods in ("each", "all", "text"):
        kw.setdefault("token_surface", "embedding")
    return mr.attacks.create("pgd", modalities=mods, eps=eps, steps=kw.pop("steps", 5),
                             random_start=kw.pop("random_start", False), **kw)


def test_margin_matches_definition():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    y = torch.tensor([0, 2])
    assert margin(logits, y).tolist() == [1.0, -4.0]


def test_replace_keeps_other_hyperparameters_and_validates():
    a = pgd("audio", steps=7, loss="ce")
    b = a.replace(loss="cw")
    assert b is not a and a.loss == "ce" and b.loss == "cw"
    assert {k: v for k, v in b.params().items() if k != "loss"} == {k: v for k, v in a.params().items() if k != "loss"}
    assert mr.attacks.PGD("audio", eps=0.1).replace(modalities="image").modalities == ["image"]
    e = a.replace(into=Evade, kappa=2.0)
    assert isinstance(e, Evade) and e.kappa == 2.0 and e.steps == 7
    with pytest.raises(InputError, match=r"unknown hyper-parameter.*'bogus'"):
        a.replace(bogus=1)
    with pytest.raises(InputError, match="eps"):  # the new values are validated by the constructor
        a.replace(eps=-1.0)


def test_worst_case_is_the_per_sample_intersection(toy_late, toy_data):
    """Deterministic variants: a sample is robust under WorstCase iff it is robust under every variant."""
    variants = [pgd(loss="ce"), pgd(loss="cw"), pgd(steps=1)]
    worst = WorstCase(variants, ["ce", "cw", "one"])
    res = mr.evaluate(toy_late, toy_data.test, [*variants, worst], checks=False)
    alone = np.logical_and.reduce([res.correct(v.id) for v in variants])
    assert np.array_equal(res.correct(worst.id), alone)
    accs = [res.correct(v.id).mean() for v in variants]
    assert res.correct(worst.id).mean() <= min(accs)
    assert res.correct(worst.id).mean() < res.correct().mean()  # the attack does something on the toy model
    for i, v in enumerate(variants):  # the per-variant success record is each variant's own outcome
        label = worst.labels[i]
        assert np.array_equal(res.samples[f"info/{worst.id}/success/{label}"], ~res.correct(v.id))


def test_worst_case_output_is_in_the_ball_and_keeps_untouched_modalities(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    worst = WorstCase([pgd("image", loss="ce"), pgd("image", loss="cw")], ["ce", "cw"])
    out = worst.apply(toy_late, x, y, ctx(toy_data))
    assert out.x["audio"] is x["audio"] and out.x["text"] is x["text"]
    assert (out.x["image"] - x["image"]).abs().max() <= EPS["image"] + 1e-6
    with torch.no_grad():
        m = margin(toy_late(out.x), y)
    per = []
    for v in worst.variants:
        o = v.apply(toy_late, x, y, ctx(toy_data))
        with torch.no_grad():
            per.append(margin(toy_late(o.x), y))
    assert torch.allclose(m, torch.stack(per).amin(0), atol=1e-5)  # each sample keeps its smallest margin
    assert set(out.info) >= {"variant", "success", "success/ce", "success/cw", "ce/success", "cw/loss"}
    assert out.info["variant"].shape == y.shape


def test_worst_case_combines_text_embedding_attacks(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    worst = WorstCase([pgd("text"), pgd("image")], ["text", "image"])
    out = worst.apply(toy_late, x, y, ctx(toy_data))
    clean = toy_late.embed("text", x["text"])
    pick_text = out.info["variant"] == 0
    delta = (out.embeddings["text"] - clean).abs().flatten(1).amax(1)
    assert torch.all(delta[~pick_text] == 0)  # samples won by the image variant keep clean embeddings
    assert torch.all(delta <= 0.5 + 1e-6)
    assert torch.equal(out.x["image"][pick_text], x["image"][pick_text])


def test_worst_case_is_deterministic(toy_late, toy_data):
    worst = WorstCase([pgd(random_start=True), pgd(random_start=True, loss="cw")])
    a = mr.evaluate(toy_late, toy_data.test, [worst], seed=3, checks=False)
    b = mr.evaluate(toy_late, toy_data.test, [worst], seed=3, checks=False)
    assert np.array_equal(a.samples[f"pred/{worst.id}"], b.samples[f"pred/{worst.id}"])


def test_worst_case_bad_input():
    with pytest.raises(InputError, match="non-empty list"):
        WorstCase([])
    with pytest.raises(InputError, match="must be attacks"):
        WorstCase([mr.attacks.create("missing", modalities="audio")])
    with pytest.raises(InputError, match="labels"):
        WorstCase([pgd(), pgd()], ["a", "a"])
    with pytest.raises(InputError, match="base"):
        WorstCase([pgd()], base=3)


def test_worst_case_row_carries_the_base_attack_parameters(toy_late, toy_data):
    worst = WorstCase([pgd(loss="cw"), pgd(loss="ce")], ["cw", "ce"])
    row = mr.evaluate(toy_late, toy_data.test, [worst], checks=False).rows()[1]
    assert row["condition"].startswith("worst_case[") and row["loss"] == "ce" and row["variants"] == "cw+ce"
    assert row["steps"] == 5


def test_bpda_runs_the_attack_in_the_fusions_bpda_mode(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    jr = build_jr_model(toy_late, 0.5, "logits", "float64")
    atk = pgd("audio")
    out = Bpda(atk).apply(jr, x, y, ctx(toy_data))
    with jr_mode(jr, "bpda"):
        ref = atk.apply(jr, x, y, ctx(toy_data))
    assert torch.equal(out.x["audio"], ref.x["audio"])
    full = atk.apply(jr, x, y, ctx(toy_data))
    assert not torch.equal(full.x["audio"], out.x["audio"])  # the BPDA backward is a different gradient
    assert jr.fusion.mode == "full"  # restored
    with pytest.raises(UnsupportedError, match="no BPDA mode"):
        Bpda(atk).check(toy_late)


def test_defense_adaptive_variants(toy_late):
    atk = pgd("audio")
    jr = mr.defenses.create("jr", gamma=0.5).adaptive(atk, toy_late)
    assert isinstance(jr, WorstCase) and jr.labels == ["transfer", "bpda", "full"]
    assert isinstance(jr.variants[0], Transfer) and jr.variants[0].source is toy_late
    assert jr.base_attack is atk
    assert mr.defenses.create("jr", gamma=0.5).adaptive(atk).labels == ["bpda", "full"]
    atk = pgd()  # modalities="each" from here on
    each = mr.defenses.create("jr", gamma=0.5).adaptive(atk, toy_late)  # split per modality, then adapted
    assert each.labels == ["image", "audio", "text"] and each.base_attack is atk
    assert all(v.labels == ["transfer", "bpda", "full"] and v.base_attack.modalities == [m]
               for v, m in zip(each.variants, each.labels, strict=True))
    assert each.params()["eps"] == atk.params()["eps"] and each.params()["variants"] == "image+audio+text"
    assert isinstance(mr.defenses.create("crmt").adaptive(atk), WorstCase)  # no model: not split
    crmt = mr.defenses.create("crmt").adaptive(atk)
    assert crmt.labels == ["cw", "ce"] and crmt.variants[0].loss == "cw"
    assert mr.defenses.create("crmt").adaptive(pgd(loss="cw")).id == pgd(loss="cw").id
    ooo = mr.defenses.create("ooo").adaptive(atk)
    assert ooo.labels == ["evade", "cw", "ce"] and isinstance(ooo.variants[0], Evade)
    assert ooo.variants[0].kappa == 1.0
    assert mr.defenses.create("modality_dropout").adaptive(atk) is atk
    assert mr.defenses.create("adversarial_training", eps=0.1).adaptive(atk) is atk


def test_jr_adaptive_accuracy_is_at_most_each_mode(toy_late, toy_data):
    jr_def = mr.defenses.create("jr", gamma=0.5)
    jr = jr_def.apply(toy_late, toy_data)
    atk = pgd("audio")
    worst = jr_def.adaptive(atk, toy_late)
    res = mr.evaluate(jr, toy_data.test, [worst, Transfer(atk, toy_late, "undefended"), Bpda(atk), atk], checks=False)
    acc = {c.id: res.correct(c.id).mean() for c in [worst, *worst.variants]}
    assert acc[worst.id] <= min(acc[v.id] for v in worst.variants) + 1e-12


def test_reliability_checks_probe_the_base_attack_of_a_worst_case(toy_late, toy_data):
    """A one-step attack with a tiny step leaves samples that random noise fools: the flag names the WorstCase."""
    weak = pgd("image", steps=1, alpha=1e-4, random_start=False)
    worst = WorstCase([weak.replace(loss="cw"), weak], ["cw", "ce"])
    res = mr.evaluate(toy_late, toy_data.test, [weak, worst])
    names = {(f["name"], f["condition"]) for f in res.flags}
    assert ("noise_beats_attack", weak.id) in names
    assert ("noise_beats_attack", worst.id) in names


def test_certificates_refuse_jr_models(toy_late):
    """JR's per-sample weights make the fused logits nonlinear: the late-fusion certificate must not apply."""
    from mmrobust.certify import late_head

    late_head(toy_late)
    with pytest.raises(UnsupportedError, match="per sample"):
        late_head(build_jr_model(toy_late, 0.5, "logits", "float64"))


def test_adaptive_each_keeps_per_modality_outcomes(toy_late, toy_data):
    """The split "each" attack records success/<m> per modality; overall success is their OR."""
    jr_def = mr.defenses.create("jr", gamma=0.5)
    jr = jr_def.apply(toy_late, toy_data)
    worst = jr_def.adaptive(pgd(steps=2), toy_late, model=jr)
    res = mr.evaluate(jr, toy_data.test, [worst], checks=False)
    per = [res.samples[f"info/{worst.id}/success/{m}"].astype(bool) for m in ("image", "audio", "text")]
    assert np.array_equal(np.logical_or.reduce(per), res.samples[f"info/{worst.id}/success"].astype(bool))
    assert np.array_equal(~res.correct(worst.id), np.logical_or.reduce(per))


def test_replace_on_a_single_modality_part_of_an_each_attack():
    """single(m) parts rebuild as single-modality attacks (a regression: they once rebuilt the whole "each")."""
    each = pgd(alpha={"image": 0.01, "audio": 0.02, "text": 0.1})
    part = each.single("audio").replace(loss="cw")
    assert part.modalities == ["audio"] and part.eps == 0.1 and part.loss == "cw" and part.alpha == 0.02
    split = mr.defenses.create("crmt").adaptive(each, model=mr.models.create("late", toy_spec()))
    for m, inner in zip(split.labels, split.variants, strict=True):
        assert [v.modalities for v in inner.variants] == [[m], [m]]
        assert [v.loss for v in inner.variants] == ["cw", "ce"] and inner.variants[0].eps == EPS[m]
