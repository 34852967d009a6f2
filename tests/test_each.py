"""``modalities="each"``: every modality attacked alone, per-sample worst case over them."""

from __future__ import annotations

import pytest
import torch

import mmrobust as mr
from conftest import ctx
from mmrobust.errors import InputError


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_each_is_the_per_sample_worst_case(name, toy_late, toy_data, toy_batch):
    x, y = toy_batch
    eps = {"image": 0.15, "audio": 0.2, "text": 0.5}
    atk = mr.attacks.create(name, modalities="each", eps=eps, token_surface="embedding")
    out = atk.apply(toy_late, x, y, ctx(toy_data))
    names = toy_late.modalities
    succ = torch.stack([out.info[f"success/{m}"] for m in names], 1)
    assert torch.equal(out.info["success"], succ.any(1))
    # the chosen modality is the first successful one
    chosen = out.info["modality"]
    assert torch.equal(chosen[succ.any(1)], succ.float().argmax(1)[succ.any(1)])
    with torch.no_grad():
        pred = toy_late(out.x, embeddings=out.embeddings or None).argmax(1)
    assert torch.equal(pred != y, out.info["success"])
    # each sample carries one modality's perturbation only, within that modality's ball
    for i, m in enumerate(names):
        if m == "text":
            clean = toy_late.embed("text", x["text"])
            moved = (out.embeddings["text"] - clean).flatten(1).abs().amax(1) > 0
            assert torch.equal(out.x["text"], x["text"])
        else:
            moved = (out.x[m] - x[m]).flatten(1).abs().amax(1) > 0
            assert float((out.x[m] - x[m]).abs().max()) <= eps[m] + 1e-6
        assert not bool((moved & (chosen != i)).any()), m
        assert float(out.info[f"norm/{m}"].max()) <= eps[m] + 1e-6


def test_each_matches_the_single_source_attacks(toy_late, toy_data, toy_batch):
    """Deterministic attacks: each modality's outcome equals the stand-alone single-source attack."""
    x, y = toy_batch
    eps = {"image": 0.15, "audio": 0.2, "text": 0.5}
    each = mr.attacks.create("fgsm", modalities="each", eps=eps, token_surface="embedding")
    out = each.apply(toy_late, x, y, ctx(toy_data))
    worst = torch.zeros_like(y, dtype=torch.bool)
    for m in toy_late.modalities:
        single = mr.attacks.create("fgsm", modalities=m, eps=eps[m], token_surface="embedding")
        one = single.apply(toy_late, x, y, ctx(toy_data))
        assert torch.equal(one.info["success"], out.info[f"success/{m}"])
        worst |= one.info["success"]
    assert torch.equal(worst, out.info["success"])
    res = mr.evaluate(toy_late, toy_data.test, [each], seed=0)
    assert res.accuracy(each.id) == pytest.approx(1 - float(worst.float().mean()))


def test_each_eps_zero_is_clean(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    atk = mr.attacks.create("pgd", modalities="each", eps=0.0, steps=3, token_surface="embedding")
    out = atk.apply(toy_late, x, y, ctx(toy_data))
    with torch.no_grad():
        assert torch.equal(toy_late(out.x, embeddings=out.embeddings or None), toy_late(x))


def test_each_errors(toy_late):
    with pytest.raises(InputError, match="token ids"):
        mr.attacks.create("pgd", modalities="each", eps=0.1).check(toy_late)
    with pytest.raises(InputError, match="no radius for attacked modality 'text'"):
        mr.attacks.create("pgd", modalities="each", eps={"image": 0.1, "audio": 0.1}, token_surface="embedding").check(
            toy_late
        )
    with pytest.raises(InputError, match="'each' cannot appear inside a list"):
        mr.attacks.create("pgd", modalities=["image", "each"], eps=0.1)
