"""Modality preference (CRMT, arXiv 2402.06244): drops, margins and the preferred modality."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import mmrobust as mr
from mmrobust.analysis import modality_preference


@pytest.fixture(scope="module")
def pref(toy_late, toy_data):
    return modality_preference(toy_late, toy_data.test, eps={"image": 0.2, "audio": 0.3}, steps=5)


def test_drops_are_accuracy_differences_of_independent_evaluations(pref, toy_late, toy_data):
    removals = [mr.attacks.create("missing", modalities=m, fill="drop") for m in toy_late.modalities]
    attacks = [mr.attacks.create("pgd", modalities=m, eps=e, steps=5) for m, e in (("image", 0.2), ("audio", 0.3))]
    ref = mr.evaluate(toy_late, toy_data.test, removals + attacks, checks=False)
    clean = ref.accuracy("clean")
    assert pref.clean_accuracy == clean and pref.n == len(toy_data.test)
    by = {r["modality"]: r for r in pref.rows}
    for c in removals:
        assert by[c.modalities[0]]["removed_accuracy"] == ref.accuracy(c.id)
        assert by[c.modalities[0]]["removal_drop"] == pytest.approx(clean - ref.accuracy(c.id))
    for c in attacks:
        assert by[c.modalities[0]]["attack_drop"] == pytest.approx(clean - ref.accuracy(c.id))
    assert math.isnan(by["text"]["attack_drop"]) and by["text"]["attack"] is None  # no radius given for text
    assert pref.most_vulnerable in ("image", "audio")
    drops = {m: by[m]["attack_drop"] for m in ("image", "audio")}
    assert drops[pref.most_vulnerable] == max(drops.values())
    removal = {m: r["removal_drop"] for m, r in by.items()}
    assert removal[pref.preferred] == max(removal.values())


def test_margins_match_a_per_sample_loop(pref, toy_late, toy_data):
    heads = toy_late.fusion.heads
    by = {r["modality"]: r for r in pref.rows}
    x, y = toy_data.test.batch(torch.arange(len(toy_data.test)))
    with torch.no_grad():
        for m in toy_late.modalities:
            w = heads[m].weight
            mins = []
            for i in range(len(y)):  # slow reference: one sample at a time
                phi = toy_late.encode_one(m, x[m][i : i + 1])[0]
                s = w @ phi
                yi = int(y[i])
                mins.append(min(float(s[yi] - s[k]) for k in range(len(s)) if k != yi))
            mins = np.array(mins)
            assert by[m]["mean_margin"] == pytest.approx(mins.mean(), rel=1e-5, abs=1e-6)
            assert by[m]["unimodal_accuracy"] == pytest.approx((mins > 0).mean())
    margins = {m: by[m]["mean_margin"] for m in toy_late.modalities}
    assert pref.preferred_by_margin == max(margins, key=margins.get)


def test_a_dominant_modality_is_preferred(toy_late, toy_data):
    model = copy.deepcopy(toy_late)
    with torch.no_grad():
        for m, head in model.fusion.heads.items():
            head.weight.mul_(20.0 if m == "audio" else 0.05)
    p = modality_preference(model, toy_data.test, eps={"image": 0.3, "audio": 0.3, "text": 0.5}, steps=5)
    assert p.preferred == "audio" and p.preferred_by_margin == "audio"
    assert p.most_vulnerable == "audio" and p.preferred_is_most_vulnerable
    assert "holds here" in p.statement
    d = p.to_dict()
    assert d["preferred"] == "audio" and len(d["rows"]) == 3


def test_loss_of_the_default_attack(toy_late, toy_data):
    p = modality_preference(toy_late, toy_data.test, eps={"audio": 0.3}, steps=2, loss="cw")
    assert "loss=cw" in next(r["attack"] for r in p.rows if r["modality"] == "audio")
    with pytest.raises(mr.InputError, match="unknown loss"):
        modality_preference(toy_late, toy_data.test, eps={"audio": 0.3}, loss="hinge")


def test_zero_radius_changes_nothing_and_no_radius_means_no_attack(toy_late, toy_data):
    p = modality_preference(toy_late, toy_data.test, eps=0.0, steps=2)
    assert all(r["attack_drop"] == 0.0 for r in p.rows)
    q = modality_preference(toy_late, toy_data.test)
    assert q.most_vulnerable is None and q.preferred_is_most_vulnerable is None
    assert "most vulnerable" not in q.statement


def test_non_late_fusion_has_no_margins(toy_data):
    model = mr.models.create("concat", toy_data.spec, embed_dim=8)
    mr.train(model, toy_data, epochs=1, quiet=True)
    p = modality_preference(model, toy_data.test, eps={"image": 0.1}, steps=2)
    assert p.preferred_by_margin is None
    assert all(math.isnan(r["mean_margin"]) for r in p.rows)
    assert all("fill=mean" in r["removal"] for r in p.rows)  # concat cannot drop a modality
    assert "modality" in p.table()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -0.1}, "must be a finite number >= 0"),
        ({"eps": {"video": 0.1}}, "unknown modality"),
        ({"eps": 0.1, "attacks": {}}, "not both"),
        ({"attacks": {"image": mr.attacks.create("pgd", modalities="audio", eps=0.1)}}, "must perturb 'image' only"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_input(toy_late, toy_data, kwargs, match):
    with pytest.raises(mr.InputError, match=match):
        modality_preference(toy_late, toy_data.test, **kwargs)


def test_one_modality_model_is_refused(toy_data):
    uni = mr.models.create("unimodal", toy_data.spec, modality="image")
    with pytest.raises(mr.InputError, match="at least two modalities"):
        modality_preference(uni, toy_data.test)
