"""GEOM latent-geometry metrics: convexity and density against slow per-pair / per-point references."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

import mmrobust as mr
from mmrobust.errors import InputError
from mmrobust.metrics.geometry import (
    GeometryReport,
    convexity,
    density,
    geometry_report,
    sample_class_pairs,
)

K = 4


def clustered(n: int, d: int, seed: int, k: int = K, noise: float = 1.2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(k, (n,), generator=g)
    centers = torch.randn(k, d, generator=g)
    return (centers[y] + noise * torch.randn(n, d, generator=g)).double(), y


def linear(d: int, seed: int, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, k, generator=g).double().numpy(), torch.randn(k, generator=g).double().numpy()


# ------------------------------------------------------------------------------------------ references
def ref_density(z: np.ndarray, y: np.ndarray, k: int, num_classes: int, shrink: bool = False):
    """Per point, by sorting all distances in plain numpy."""
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    counts = np.bincount(y, minlength=num_classes)
    rho = np.full(len(z), np.nan)
    for i in range(len(z)):
        n_c = counts[y[i]]
        if n_c < 2:
            continue
        kk = min(k, n_c - 1) if shrink else k
        d = 1.0 - u @ u[i]
        others = np.arange(len(z)) != i
        near_any = np.sort(d[others])[:kk].mean()
        near_same = np.sort(d[others & (y == y[i])])[:kk].mean()
        rho[i] = near_any / near_same
    per_class = np.array([np.median(rho[y == c]) if counts[c] >= 2 else np.nan for c in range(num_classes)])
    return rho, per_class


def ref_convexity(z, y, w, b, a_idx, b_idx, lam, cls, space=None):
    """Per pair, with a Python loop; ``z`` a dict when ``space`` names the interpolated modality."""
    num_classes = w.shape[1]

    def logits(row):  # row: dict or vector
        v = np.concatenate([row[m] for m in sorted(row)]) if isinstance(row, dict) else row
        return v @ w + b

    def point(i):
        return {m: t[i] for m, t in z.items()} if space else z[i]

    correct = np.array([np.argmax(logits(point(i))) == y[i] for i in range(len(y))])
    hits = np.zeros(num_classes)
    n = np.zeros(num_classes)
    hits_c = np.zeros(num_classes)
    n_c = np.zeros(num_classes)
    for ai, bi, lm, c in zip(a_idx, b_idx, lam, cls, strict=True):
        assert y[ai] == c and y[bi] == c and ai != bi
        if space:
            mix = {m: t[ai] for m, t in z.items()}
            mix[space] = lm * z[space][ai] + (1 - lm) * z[space][bi]
        else:
            mix = lm * z[ai] + (1 - lm) * z[bi]
        hit = float(np.argmax(logits(mix)) == c)
        hits[c] += hit
        n[c] += 1
        if correct[ai] and correct[bi]:
            hits_c[c] += hit
            n_c[c] += 1
    with np.errstate(invalid="ignore"):
        return hits / n, hits_c / n_c, n, n_c


def torch_linear(w: np.ndarray, b: np.ndarray):
    wt, bt = torch.from_numpy(w), torch.from_numpy(b)

    def f(v):
        if isinstance(v, dict):
            v = torch.cat([v[m] for m in sorted(v)], 1)
        return v @ wt + bt

    return f


# ------------------------------------------------------------------------------------------ pairs
def test_pairs_same_class_distinct_and_exhaustive_for_small_classes():
    y = torch.tensor([0, 1, 0, 2, 0, 1, 0, 3])  # class 0: 4 members -> 6 pairs; class 2, 3: singletons
    a, b, lam, cls = sample_class_pairs(y, 100, torch.Generator().manual_seed(0))
    assert (y[a] == cls).all() and (y[b] == cls).all() and (a != b).all()
    assert ((lam >= 0) & (lam < 1)).all()
    got = Counter((c, min(i, j), max(i, j)) for i, j, c in zip(a.tolist(), b.tolist(), cls.tolist(), strict=True))
    want = {(0, i, j) for i in (0, 2, 4, 6) for j in (0, 2, 4, 6) if i < j} | {(1, 1, 5)}
    assert set(got) == want and max(got.values()) == 1  # every pair exactly once, no pair for singletons


@pytest.mark.parametrize("n_c,k", [(30, 50), (3000, 400)])  # randperm branch, rejection branch
def test_pairs_without_replacement_and_uniform(n_c, k):
    y = torch.zeros(n_c, dtype=torch.long)
    hits = np.zeros(n_c)
    orient = 0
    for s in range(40):
        a, b, _, _ = sample_class_pairs(y, k, torch.Generator().manual_seed(s))
        assert a.numel() == k and (a != b).all()
        pairs = set(zip(torch.minimum(a, b).tolist(), torch.maximum(a, b).tolist(), strict=True))
        assert len(pairs) == k  # without replacement
        np.add.at(hits, a.numpy(), 1)
        np.add.at(hits, b.numpy(), 1)
        orient += int((a < b).sum())
    # each point is an endpoint of a uniform pair with probability 2/n_c; orientation is a fair coin
    expect = 40 * k * 2 / n_c
    assert abs(hits.mean() - expect) < 1e-9
    assert np.abs(hits - expect).max() < 6 * math.sqrt(expect) + 1
    assert abs(orient / (40 * k) - 0.5) < 0.05


def test_pairs_large_class_rank_decoding_is_exact():
    # n_c = 50k -> ~1.25e9 candidate pairs: decoding ranks through sqrt must stay exact
    y = torch.zeros(50_000, dtype=torch.long)
    a, b, _, _ = sample_class_pairs(y, 2000, torch.Generator().manual_seed(1))
    assert (a != b).all() and a.max() < 50_000 and b.max() < 50_000
    assert len(set(zip(torch.minimum(a, b).tolist(), torch.maximum(a, b).tolist(), strict=True))) == 2000


# ------------------------------------------------------------------------------------------ convexity
@pytest.mark.parametrize("ppc", [5, 1000])
def test_convexity_matches_reference_single_space(ppc):
    z, y = clustered(60, 5, seed=0)
    w, b = linear(5, seed=1)
    r = convexity(z, y, torch_linear(w, b), num_classes=K, pairs_per_class=ppc, seed=3, batch_size=7)
    per, per_c, n, n_c = ref_convexity(z.numpy(), y.numpy(), w, b, r.a, r.b, r.lam.astype(np.float64), r.cls)
    np.testing.assert_allclose(r.per_class, per, equal_nan=True)
    np.testing.assert_allclose(r.per_class_conditional, per_c, equal_nan=True)
    np.testing.assert_array_equal(r.pairs, n)
    np.testing.assert_array_equal(r.pairs_conditional, n_c)
    assert r.macro == pytest.approx(np.nanmean(per))
    counts = np.bincount(y.numpy(), minlength=K)
    np.testing.assert_array_equal(r.pairs, np.minimum(ppc, counts * (counts - 1) // 2))
    assert 0 < r.macro < 1  # the noisy clusters are neither trivially convex nor hopeless


def test_convexity_matches_reference_modality_space_other_modalities_held_at_a():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(K, (40,), generator=g)
    z = {"audio": torch.randn(40, 3, generator=g).double(), "image": torch.randn(40, 2, generator=g).double()}
    z["audio"] += torch.randn(K, 3, generator=g).double()[y] * 2
    w, b = linear(5, seed=2)  # sorted(z) = audio, image -> 3 + 2 inputs
    for space in ("audio", "image"):
        r = convexity(z, y, torch_linear(w, b), space=space, num_classes=K, pairs_per_class=50, seed=0)
        zn = {m: t.numpy() for m, t in z.items()}
        per, per_c, _, n_c = ref_convexity(zn, y.numpy(), w, b, r.a, r.b, r.lam.astype(np.float64), r.cls, space)
        np.testing.assert_allclose(r.per_class, per, equal_nan=True)
        np.testing.assert_allclose(r.per_class_conditional, per_c, equal_nan=True)
        np.testing.assert_array_equal(r.pairs_conditional, n_c)


def test_convexity_of_a_convex_partition_is_one():
    # a linear classifier's decision regions are convex: every same-class interpolant keeps its class
    z, _ = clustered(80, 4, seed=5)
    w, b = linear(4, seed=6)
    y = torch.from_numpy(np.argmax(z.numpy() @ w + b, 1))
    r = convexity(z, y, torch_linear(w, b), num_classes=K, pairs_per_class=200)
    present = r.pairs > 0
    np.testing.assert_array_equal(r.per_class[present], 1.0)
    np.testing.assert_array_equal(r.pairs_conditional, r.pairs)


def test_convexity_singleton_class_is_nan_and_excluded_from_macro():
    z, y = clustered(30, 3, seed=1)
    y[y == 3] = 2
    y[0] = 3  # class 3 has one sample
    r = convexity(z, y, torch_linear(*linear(3, 0, k=K + 1)), num_classes=K + 1)  # class 4 absent
    assert np.isnan(r.per_class[3]) and np.isnan(r.per_class[4]) and r.pairs[3] == 0
    assert r.macro == pytest.approx(np.mean(r.per_class[:3]))
    with pytest.raises(InputError, match="at least one class with 2"):
        convexity(z[:1], y[:1], torch_linear(*linear(3, 0)))


def test_convexity_is_deterministic():
    z, y = clustered(50, 4, seed=2)
    f = torch_linear(*linear(4, 3))
    r1, r2 = convexity(z, y, f, seed=7), convexity(z, y, f, generator=torch.Generator().manual_seed(7))
    r3 = convexity(z, y, f, seed=8, pairs_per_class=20)
    for key in ("a", "b", "lam", "pred", "per_class"):
        np.testing.assert_array_equal(getattr(r1, key), getattr(r2, key))
    assert not np.array_equal(r1.lam[:20], r3.lam[:20])


def test_convexity_bad_input():
    z, y = clustered(20, 3, seed=0)
    f = torch_linear(*linear(3, 0))
    bad = [
        ({"z": z[0]}, "shape \\(N, D\\)"),
        ({"z": z.clone().fill_(math.nan)}, "NaN"),
        ({"labels": y[:5]}, "5 labels for 20"),
        ({"labels": y - 1}, ">= 0"),
        ({"labels": y.float()}, "integer"),
        ({"pairs_per_class": 0}, "pairs_per_class"),
        ({"batch_size": -1}, "batch_size"),
        ({"downstream": lambda v: v[:, :2]}, "labels use 4 classes"),
        ({"downstream": lambda v: v[:1]}, "logits of shape"),
        ({"downstream": 3}, "callable"),
        ({"space": "audio"}, "mapping"),
        ({"z": {"audio": z}, "space": "image"}, "space= must name"),
        ({"num_classes": 2}, "\\[0, 2\\)"),
    ]
    for kwargs, msg in bad:
        args = {"z": z, "labels": y, "downstream": f} | kwargs
        with pytest.raises(InputError, match=msg):
            convexity(args.pop("z"), args.pop("labels"), args.pop("downstream"), **args)


# ------------------------------------------------------------------------------------------ density
@pytest.mark.parametrize("chunk", [None, 7])
def test_density_matches_reference(chunk):
    z, y = clustered(90, 6, seed=4)
    r = density(z, y, k=5, num_classes=K, chunk_size=chunk)
    rho, per_class = ref_density(z.numpy(), y.numpy(), 5, K)
    np.testing.assert_allclose(r.rho, rho, rtol=1e-10)
    np.testing.assert_allclose(r.per_class, per_class, rtol=1e-10)
    assert r.macro == pytest.approx(per_class.mean())
    np.testing.assert_array_equal(r.counts, np.bincount(y.numpy(), minlength=K))
    np.testing.assert_allclose(r.frequency, r.counts / 90)
    assert ((r.rho > 0) & (r.rho <= 1 + 1e-12)).all()  # any-class kNN are never farther than same-class kNN
    assert r.per_class.min() < 0.99  # not trivially pure


def test_density_float32_agrees_with_float64_and_is_scale_invariant():
    z, y = clustered(200, 16, seed=5)
    r64 = density(z, y)
    r32 = density(z.float() * 3.0, y)
    np.testing.assert_allclose(r32.rho, r64.rho, atol=1e-5)


def test_density_pure_separated_clusters_have_density_one():
    y = torch.arange(40) % 4
    noise = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    z = torch.nn.functional.one_hot(y, 8).double() + 0.01 * noise
    r = density(z, y, k=5)
    np.testing.assert_allclose(r.per_class, 1.0)


def test_density_small_classes_error_or_shrink():
    z, y = clustered(60, 4, seed=6)
    y[y == 3] = 2
    y[:3] = 3  # class 3: 3 samples
    y[3] = 4  # class 4: one sample
    with pytest.raises(InputError, match=r"class 3 has 3 samples.*small_classes='shrink'"):
        density(z, y, k=5)
    r = density(z, y, k=5, small_classes="shrink")
    rho, per_class = ref_density(z.numpy(), y.numpy(), 5, 5, shrink=True)
    np.testing.assert_allclose(r.rho, rho, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(r.per_class, per_class, rtol=1e-10, equal_nan=True)
    assert r.k_used.tolist()[3:] == [2, 0] and np.isnan(r.rho[3]) and np.isnan(r.per_class[4])
    # a singleton class alone is not an error: its density is NaN
    assert np.isnan(density(z, y, k=2).per_class[4])


def test_density_duplicates_give_one():
    z = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    y = torch.tensor([0] * 4 + [1] * 4)
    r = density(z, y, k=3)
    np.testing.assert_array_equal(r.rho, 1.0)


def test_density_bad_input():
    z, y = clustered(20, 3, seed=0)
    bad = [
        ((z, y), {"k": 20}, "smaller than the number of points"),
        ((z, y), {"k": 0}, "k must be an integer >= 1, got 0"),
        ((z, y), {"max_points": 10}, "max_points=10"),
        ((z, y), {"small_classes": "drop"}, "small_classes"),
        ((z, y), {"chunk_size": 0}, "chunk_size"),
        ((z.long(), y), {}, "floating-point"),
        ((z, y[:, None]), {}, "1-D integer"),
        (([1.0], y), {}, "torch.Tensor"),
    ]
    for args, kwargs, msg in bad:
        with pytest.raises(InputError, match=msg):
            density(*args, **kwargs)


# ------------------------------------------------------------------------------------------ model report
def test_geometry_report_on_a_model(toy_data, toy_late):
    rep = geometry_report(toy_late, toy_data.test, pairs_per_class=40, k=5, seed=1)
    assert isinstance(rep, GeometryReport)
    assert list(rep.spaces) == ["fused", "image", "audio", "text"]
    assert rep.spaces["fused"].dim == K and rep.spaces["image"].dim == toy_late.config["embed_dim"]
    acc = mr.evaluate(toy_late, toy_data.test, checks=False).accuracy()
    assert rep.accuracy == pytest.approx(acc)
    for s in rep.spaces.values():
        assert 0 <= s.convexity.macro <= 1 and 0 < s.density.macro <= 1
        assert (s.convexity.pairs_conditional <= s.convexity.pairs).all()
    # the same pairs and λ in every space
    np.testing.assert_array_equal(rep.spaces["fused"].convexity.a, rep.spaces["audio"].convexity.a)
    np.testing.assert_array_equal(rep.spaces["fused"].convexity.lam, rep.spaces["text"].convexity.lam)
    # the fused space of the report equals convexity() on the fused embeddings with the head
    x, y = toy_data.test.batch(torch.arange(len(toy_data.test)))
    with torch.no_grad():
        z = toy_late.encode(x)
        direct = convexity(toy_late.fuse(z)[0], y, toy_late.head_from_fused, pairs_per_class=40, seed=1, num_classes=K)
        direct_m = convexity(z, y, toy_late.logits_from_embeddings, space="audio", pairs_per_class=40, seed=1,
                             num_classes=K)
    np.testing.assert_array_equal(direct.pred, rep.spaces["fused"].convexity.pred)
    np.testing.assert_array_equal(direct_m.pred, rep.spaces["audio"].convexity.pred)
    # JSON-friendly, deterministic, and a readable table
    d = rep.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d == geometry_report(toy_late, toy_data.test, pairs_per_class=40, k=5, seed=1).to_dict()
    freq = np.bincount(toy_data.test.labels.numpy(), minlength=K) / len(toy_data.test)
    assert d["class_frequency"] == pytest.approx(freq)
    assert "convexity_correct" in rep.table() and "audio" in rep.table()
    assert len(json.dumps(rep.to_dict(per_sample=True))) > len(json.dumps(d))


def test_geometry_report_interpolation_at_endpoint_a_is_the_clean_prediction(toy_data, toy_late):
    # λ = 1 puts the interpolant at endpoint a in every space: convexity then equals the accuracy on a
    x, y = toy_data.test.batch(torch.arange(len(toy_data.test)))
    with torch.no_grad():
        z = toy_late.encode(x)
        clean = toy_late(x).argmax(1)
        r = convexity(z, y, toy_late.logits_from_embeddings, space="image", pairs_per_class=30, seed=0)
        a = torch.from_numpy(r.a)
        zc = {m: t[a] for m, t in z.items()}
        np.testing.assert_array_equal(toy_late.logits_from_embeddings(zc).argmax(1).numpy(), clean[a].numpy())


def test_geometry_report_bad_input(toy_data, toy_late):
    with pytest.raises(InputError, match="unknown space 'video'"):
        geometry_report(toy_late, toy_data.test, spaces=["video"])
    with pytest.raises(InputError, match="MultimodalDataset"):
        geometry_report(toy_late, toy_data.test.inputs)
    with pytest.raises(InputError, match="MultimodalModel"):
        geometry_report(torch.nn.Linear(2, 2), toy_data.test)
    with pytest.raises(InputError, match="k=500"):
        geometry_report(toy_late, toy_data.test, k=500)
    rep = geometry_report(toy_late, toy_data.test, spaces="audio", pairs_per_class=5, k=3)
    assert list(rep.spaces) == ["audio"] and toy_late.training is False
