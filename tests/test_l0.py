"""The ℓ0 threat model: exact projection onto box ∩ ℓ0 ball, sparse PGD."""

from __future__ import annotations

import itertools

import pytest
import torch

import mmrobust as mr
from mmrobust.attacks import EvalContext, ThreatModel
from mmrobust.attacks.threat import _top_k_mask, project_ball, sample_norms


def _ctx(seed=0):
    return EvalContext(stats={}, generator=torch.Generator().manual_seed(seed))


def test_top_k_mask_and_l0_norm():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(5, 3, 4, generator=g)
    for k in (0, 1, 5, 12):
        mask = _top_k_mask(s, k)
        assert mask.shape == s.shape and bool((mask.flatten(1).sum(1) == k).all())
        kth = s.flatten(1).sort(1, descending=True).values[:, max(k - 1, 0)]
        if k:
            assert bool((s.flatten(1)[mask.flatten(1)].reshape(5, k).amin(1) >= kth).all())
    per = torch.tensor([0.0, 1.0, 2.0, 3.0, 12.0])
    assert torch.equal(_top_k_mask(s, per).flatten(1).sum(1), per.long())
    d = torch.zeros(2, 6)
    d[0, :3] = 0.5
    assert torch.equal(sample_norms(d, "l0"), torch.tensor([3.0, 0.0]))
    out = project_ball({"a": torch.tensor([[0.1, -0.9, 0.3, 0.0]])}, {"a": 2}, "l0")["a"]
    assert torch.equal(out, torch.tensor([[0.0, -0.9, 0.3, 0.0]]))


def test_l0_projection_is_exact_against_brute_force():
    """clip, then keep the k largest changes == argmin ‖p − a‖² over box ∩ {‖p − o‖₀ ≤ k}."""
    g = torch.Generator().manual_seed(1)
    d, k = 6, 2
    origin = torch.rand(8, d, generator=g)
    adv = origin + 1.5 * (2 * torch.rand(8, d, generator=g) - 1)
    tm = ThreatModel("a", eps=k, norm="l0")
    low, high = 0.0, 1.0

    class _Spec:
        def __getitem__(self, m):
            return mr.ModalitySpec("a", "features", (d,), low=low, high=high)

    class _Model:
        modalities = ("a",)
        spec = _Spec()

    p = tm.resolve(_Model()).project({"a": adv}, {"a": origin})["a"]
    assert bool((sample_norms(p - origin, "l0") <= k).all())
    assert float(p.min()) >= low and float(p.max()) <= high
    for i in range(8):
        best = float("inf")
        for keep in itertools.combinations(range(d), k):
            q = origin[i].clone()
            q[list(keep)] = adv[i, list(keep)].clamp(low, high)
            best = min(best, float((q - adv[i]).square().sum()))
        assert float((p[i] - adv[i]).square().sum()) == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("k", [0, 3, 20])
def test_sparse_pgd_invariants(toy_late, toy_data, k):
    x, y = toy_data.test.batch(torch.arange(len(toy_data.test)))
    atk = mr.attacks.create("pgd", modalities=["image", "audio"], norm="l0", eps=k, steps=10)
    out = atk.apply(toy_late, x, y, _ctx())
    for m in ("image", "audio"):
        changed = (out.x[m] != x[m]).flatten(1).sum(1)
        assert int(changed.max()) <= k
        assert torch.equal(out.info[f"norm/{m}"], changed.float())
        assert float(out.x[m].min()) >= 0.0 and float(out.x[m].max()) <= 1.0
    assert out.x["text"] is x["text"]
    if k == 0:
        assert all(torch.equal(out.x[m], x[m]) for m in x)


def test_sparse_pgd_beats_random_sparse_noise(toy_late, toy_data):
    atk = mr.attacks.create("pgd", modalities="image", norm="l0", eps=6, steps=20)
    noise = mr.attacks.create("pgd", modalities="image", norm="l0", eps=6, steps=1, alpha=1e-9)  # ≈ random start
    res = mr.evaluate(toy_late, toy_data.test, [atk, noise], checks=False)
    assert res.accuracy(atk.id) < res.accuracy(noise.id)


def test_text_embeddings_l0_skip_padding(toy_late, toy_data):
    x, y = toy_data.test.batch(torch.arange(16))
    atk = mr.attacks.create("pgd", modalities="text", norm="l0", eps=5, steps=5, token_surface="embedding")
    out = atk.apply(toy_late, x, y, _ctx())
    clean = toy_late.embed("text", x["text"])
    moved = (out.embeddings["text"] != clean).any(-1)
    assert not bool((moved & (x["text"] == 0)).any())
    assert int((out.embeddings["text"] != clean).flatten(1).sum(1).max()) <= 5


def test_l0_errors():
    with pytest.raises(mr.InputError, match="whole number"):
        mr.attacks.create("pgd", modalities="image", norm="l0", eps=2.5)
    with pytest.raises(mr.InputError, match="needs norm='l2'"):
        mr.attacks.create("pgd", modalities=["image", "audio"], norm="l0", eps=2, budget="joint")
    with pytest.raises(mr.InputError, match="fgsm supports linf, l2"):
        mr.attacks.create("fgsm", modalities="image", norm="l0", eps=2)
