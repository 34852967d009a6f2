"""CRMT certified radius (methods.md §3): margins, Lipschitz constants, radii, soundness under PGD.

References are independent of the code under test: Python loops over samples and classes for the
formula, autograd Jacobians for linear models (where the certificate is the exact distance to the
decision boundary) and explicit operator matrices for layer norms.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mmrobust as mr
from conftest import make_toy_bundle
from mmrobust import certify as C
from mmrobust.certify import layers as L
from mmrobust.certify import spectral
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.spec import DatasetSpec, ModalitySpec

CONT = ["image", "audio"]


@pytest.fixture(scope="module")
def data():
    return make_toy_bundle()


@pytest.fixture(scope="module")
def model(data):
    m = mr.models.create(
        "late", data.spec, embed_dim=16, encoder_kwargs={"image": {"width": 4}, "audio": {"width": 4}}
    )
    mr.train(m, data, epochs=4, quiet=True)
    return m.eval()


@pytest.fixture(scope="module")
def batch(data):
    return data.test.batch(torch.arange(len(data.test)))


@pytest.fixture(scope="module")
def sound(model):
    return C.sound_lipschitz(model, power_iters=20)


@pytest.fixture(scope="module")
def empirical(model, data):
    return C.empirical_lipschitz(model, data.train, batch_size=100)


# ------------------------------------------------------------------------------------------ margins
def test_margins_sum_to_fused_logit_differences(model, batch):
    x, y = batch
    mg = C.margins(model, x, y)
    with torch.no_grad():
        s = model(x)
    ref = s.gather(1, y[:, None]) - s
    torch.testing.assert_close(mg.total, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(sum(mg.unimodal.values()) + mg.bias, mg.total)
    assert set(mg.unimodal) == {"image", "audio", "text"}  # the fixed text modality enters the numerator
    assert torch.equal(C.margins(model, x).label, s.argmax(1))


def test_bias_folds_per_modality_biases_and_prior(data):
    prior = [0.1, 0.2, 0.3, 0.4]
    model = mr.models.create("late", data.spec, embed_dim=8, fusion_kwargs={"prior": prior}).eval()
    head = C.late_head(model)
    b = sum(model.fusion.heads[m].bias for m in model.modalities) - 2 * torch.tensor(prior).log()
    torch.testing.assert_close(head.bias, b.detach())
    x, y = data.test.batch(torch.arange(16))
    with torch.no_grad():
        s = model(x)
    torch.testing.assert_close(C.margins(model, x, y).total, s.gather(1, y[:, None]) - s, rtol=0, atol=1e-5)
    uni = mr.models.create("unimodal", data.spec, modality="image", embed_dim=8).eval()  # M = 1: no prior term
    torch.testing.assert_close(C.late_head(uni).bias, uni.fusion.heads["image"].bias.detach())
    tau = C.empirical_lipschitz(uni, data.test)  # the split's other modalities are ignored
    cert = C.certify_dataset(uni, data.test, lipschitz=tau)
    assert tau.modalities == ["image"] and cert.modalities == ("image",)
    torch.testing.assert_close(cert.joint, cert.single["image"])  # one modality: joint = single


# ------------------------------------------------------------------------------------------ radius
def test_radius_matches_the_formula_evaluated_with_loops(model, batch, empirical, sound):
    x, y = batch
    for lip in (empirical, sound):
        cert = C.certify(model, x, y, lipschitz=lip)
        mg = C.margins(model, x, y).total.double()
        k = model.num_classes
        for i in range(0, y.shape[0], 7):
            yi = int(y[i])
            joint, single = math.inf, dict.fromkeys(CONT, math.inf)
            for c in range(k):
                if c == yi:
                    continue
                g = float(mg[i, c])
                taus = {m: float(lip.pairs[m][yi, c]) for m in CONT}
                joint = min(joint, g / math.sqrt(sum(t * t for t in taus.values())))
                for m in CONT:
                    single[m] = min(single[m], g / taus[m])
            assert float(cert.joint[i]) == pytest.approx(max(joint, 0.0), rel=1e-12, abs=1e-15)
            for m in CONT:
                assert float(cert.single[m][i]) == pytest.approx(max(single[m], 0.0), rel=1e-12, abs=1e-15)
        correct = cert.correct
        assert bool((cert.joint[~correct] == 0).all()) and bool((cert.joint[correct] > 0).all())
        # joint ≤ every single-modality radius (a single-modality ball is inside the joint one)
        for m in CONT:
            assert bool((cert.joint <= cert.single[m] + 1e-12).all())


def test_radius_edge_cases_and_min_over_all_classes():
    margin = torch.tensor([[0.0, 2.0, 3.0], [0.0, -1.0, 5.0], [1.0, 0.0, 4.0], [0.0, 1.0, 1.0]])
    label = torch.tensor([0, 0, 1, 0])
    tau = torch.tensor([[[0.0, 1.0, 10.0], [1.0, 0.0, 0.0], [10.0, 0.0, 0.0]]])  # one modality
    joint, single, nearest = C.radii_from_margins(margin, label, tau)
    # sample 0: min(2/1, 3/10) = 0.3 (not the runner-up class 1); sample 1: misclassified -> 0;
    # sample 2: τ = 0 towards class 2 (an infinite ratio) so class 0 decides; sample 3: min(1/1, 1/10)
    torch.testing.assert_close(joint, torch.tensor([0.3, 0.0, 1.0, 0.1], dtype=torch.float64))
    torch.testing.assert_close(single[0], joint)
    assert nearest.tolist() == [2, 1, 0, 2]
    joint, single, nearest = C.radii_from_margins(margin, label, torch.zeros(2, 3, 3))  # margins independent of x
    assert joint.tolist() == [math.inf, 0.0, math.inf, math.inf] and single.shape == (2, 4)
    assert nearest.tolist() == [0, 1, 1, 0]


def test_certified_accuracy_and_curve(model, data, sound):
    cert = C.certify_dataset(model, data.test, lipschitz=sound, batch_size=40)
    assert cert.n == len(data.test)
    eps = [0.0, 1e-4, 1e-3, 1e-2, 1e-1]
    acc = cert.certified_accuracy(eps)
    brute = [sum(float(r) > e for r in cert.joint) / cert.n for e in eps]
    torch.testing.assert_close(acc, torch.tensor(brute, dtype=torch.float64))
    assert float(acc[0]) == pytest.approx(float(cert.correct.double().mean()))  # no exact ties here
    grid, curve = C.certified_accuracy_curve(cert.joint, num=11)
    assert grid.shape == curve.shape == (11,) and bool((curve[1:] <= curve[:-1]).all())
    assert float(C.certified_accuracy(cert.joint, 0.0)) == float(acc[0])
    with pytest.raises(InputError, match="eps"):
        C.certified_accuracy(cert.joint, [-0.1])


# ------------------------------------------------------------------------------------------ Lipschitz
def test_sound_bounds_the_empirical_constants(sound, empirical):
    assert sound.kind == "sound" and empirical.kind == "empirical"
    for m in CONT:
        off = ~torch.eye(sound.pairs[m].shape[0], dtype=torch.bool)
        assert bool((empirical.pairs[m][off] > 0).all())  # every modality's gradient is read (authors' bug)
        assert bool((sound.pairs[m][off] >= empirical.pairs[m][off]).all())
        assert bool((sound.per_class[m] >= empirical.per_class[m]).all())
        assert bool((sound.pairs[m] <= sound.details[m]["product"] + 1e-12).all())
        torch.testing.assert_close(sound.pairs[m], sound.pairs[m].T)
        for row in sound.details[m]["layers"]:
            if "power" in row:  # the provable DFT bound is at least the power-iteration estimate
                assert row["lipschitz"] >= row["power"] * (1 - 1e-9)


def test_empirical_matches_per_sample_jacobians(model, data, empirical):
    x, _ = data.train.batch(torch.arange(12))
    part = C.empirical_lipschitz(model, x)
    again = C.empirical_lipschitz(model, x, batch_size=5)  # batching must not matter (eval mode)
    head = C.late_head(model)
    for m in CONT:
        ref = torch.zeros_like(part.pairs[m])
        for i in range(12):  # loop reference: per-sample Jacobian of the bias-free class scores
            def f(xm, m=m):
                return model.encode_one(m, xm[None])[0] @ head.weight[m].T

            jac = torch.autograd.functional.jacobian(f, x[m][i]).reshape(model.num_classes, -1).double()
            ref = torch.maximum(ref, torch.cdist(jac, jac))
        torch.testing.assert_close(part.pairs[m], ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(again.pairs[m], part.pairs[m], rtol=1e-6, atol=1e-9)
        assert bool((empirical.pairs[m] >= part.pairs[m] - 1e-9).all())  # more samples: larger max
    assert all(p.requires_grad for p in model.parameters())  # flags restored after the gradients


def test_sound_constants_are_deterministic(model, sound):
    again = C.sound_lipschitz(model, power_iters=0)
    for m in CONT:
        assert torch.equal(again.pairs[m], sound.pairs[m])


# ------------------------------------------------------------------------------------------ linear model
def _linear_model():
    spec = DatasetSpec(
        modalities=(
            ModalitySpec("img", "image", (1, 6, 6)),
            ModalitySpec("vec", "features", (5,)),
            ModalitySpec("tok", "text", (4,), dtype="int64", vocab_size=7, pad_id=0, perturbable=False),
        ),
        num_classes=3,
        name="linear",
    )
    model = mr.models.create("late", spec, embed_dim=6, seed=3, fusion_kwargs={"prior": [0.2, 0.3, 0.5]})
    torch.manual_seed(5)
    model.encoders["img"] = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(18, 6)
    )
    bn = nn.BatchNorm1d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(-2, 2)
    model.encoders["vec"] = nn.Sequential(nn.Flatten(), nn.Linear(5, 4), bn, nn.Linear(4, 6))
    g = torch.Generator().manual_seed(1)
    x = {
        "img": torch.randn(40, 1, 6, 6, generator=g),
        "vec": torch.randn(40, 5, generator=g),
        "tok": torch.randint(1, 7, (40, 4), generator=g),
    }
    return model.eval(), x


def _affine_maps(model, x):
    """W^(m) A_m (K, d_m) of each continuous modality, from autograd (the models are linear)."""
    head = C.late_head(model)
    out = {}
    for m in ("img", "vec"):
        def f(xm, m=m):
            return model.encode_one(m, xm[None])[0] @ head.weight[m].T

        out[m] = torch.autograd.functional.jacobian(f, x[m][0]).reshape(model.num_classes, -1).double()
    return out


def test_linear_model_sound_radius_is_the_exact_distance_to_the_boundary():
    model, x = _linear_model()
    sound = C.sound_lipschitz(model)
    cert = C.certify(model, x, lipschitz=sound)
    maps = _affine_maps(model, x)
    with torch.no_grad():
        s = model(x).double()
    y = s.argmax(1)
    n, k = s.shape
    torch.testing.assert_close(cert.margin, s.gather(1, y[:, None]) - s, rtol=0, atol=1e-5)
    for i in range(n):
        yi = int(y[i])
        dj, ds = math.inf, {"img": math.inf, "vec": math.inf}
        for c in range(k):
            if c == yi:
                continue
            g = float(cert.margin[i, c])  # s_y − s_k (float32 logits; checked above)
            rows = {m: maps[m][yi] - maps[m][c] for m in maps}
            dj = min(dj, g / float(torch.cat(list(rows.values())).norm()))  # distance to the hyperplane
            for m in rows:
                ds[m] = min(ds[m], g / float(rows[m].norm()))
        assert float(cert.joint[i]) == pytest.approx(dj, rel=1e-6)
        for m in ds:
            assert float(cert.single[m][i]) == pytest.approx(ds[m], rel=1e-6)
    # the empirical constant of a linear map is the same number
    emp = C.empirical_lipschitz(model, x)
    for m in ("img", "vec"):
        torch.testing.assert_close(emp.pairs[m], sound.pairs[m], rtol=1e-5, atol=1e-6)
    # moving along the worst direction: still y just inside the radius, flipped just outside
    c = cert.nearest
    rows = {m: (maps[m][y] - maps[m][c]) for m in maps}  # (N, d_m)
    total = torch.cat(list(rows.values()), 1).norm(dim=1, keepdim=True)
    for factor, flips in ((0.999, False), (1.001, True)):
        xa = dict(x)
        for m in rows:
            step = -(rows[m] / total) * (cert.joint * factor)[:, None]
            xa[m] = x[m] + step.reshape(x[m].shape).float()
        with torch.no_grad():
            changed = model(xa).argmax(1) != y
        assert bool(changed.all()) == flips and bool(changed.any()) == flips


def test_pgd_cannot_break_the_linear_certificate_but_finds_overstated_radii():
    model, x = _linear_model()
    cert = C.certify(model, x, lipschitz=C.sound_lipschitz(model))
    inside = C.attack_within_radius(model, x, cert.joint, modalities=["img", "vec"], steps=20, restarts=1)
    assert inside.violations == 0 and bool(inside.attacked.all())
    assert bool((inside.norm <= inside.eps * (1 + 1e-5)).all())
    over = C.attack_within_radius(model, x, cert.joint * 1.05, modalities=["img", "vec"], steps=20, restarts=1)
    assert over.violations == x["vec"].shape[0]  # the radius is tight: 5 % more and PGD-CW flips every sample
    for m in ("img", "vec"):
        assert C.attack_within_radius(model, x, cert.single[m], modalities=m, steps=20, restarts=1).violations == 0


# ------------------------------------------------------------------------------------------ soundness
def test_pgd_never_flips_inside_the_sound_radius(model, batch, sound):
    x, _ = batch
    cert = C.certify(model, x, lipschitz=sound)  # certify the predictions
    for radius, mods in [(cert.joint, CONT), (cert.single["image"], "image"), (cert.single["audio"], "audio")]:
        res = C.attack_within_radius(model, x, radius, modalities=mods, steps=20, restarts=2, seed=1)
        assert int(res.attacked.sum()) >= 0.9 * x["image"].shape[0]
        assert res.violations == 0
        assert bool((res.eps <= 0.999 * radius + 1e-15).all()) and res.runs == 1
    few = {m: t[:12] for m, t in x.items()}
    binned = C.attack_within_radius(
        model, few, cert.joint[:12], modalities=CONT, method="bins", bin_ratio=1.5, steps=10, restarts=1
    )
    assert binned.violations == 0 and binned.runs >= 1
    assert bool((binned.eps <= 0.999 * cert.joint[:12] + 1e-15).all())
    assert bool((binned.eps >= 0.999 * cert.joint[:12] / 1.5 - 1e-15)[binned.attacked].all())


def test_per_sample_radii_run_the_registered_pgd(model, batch):
    # with one radius for every sample, the per-sample run is the registered pgd attack (one bin)
    x, _ = batch
    r = torch.full((x["image"].shape[0],), 1.5, dtype=torch.float64)
    for mods in (CONT, "audio"):
        a = C.attack_within_radius(model, x, r, modalities=mods, steps=10, restarts=2, seed=4)
        b = C.attack_within_radius(model, x, r, modalities=mods, steps=10, restarts=2, seed=4, method="bins")
        assert a.runs == b.runs == 1 and 0 < a.violations < r.shape[0]
        assert torch.equal(a.flipped, b.flipped) and torch.equal(a.norm, b.norm)  # the same run, bit for bit


# ------------------------------------------------------------------------------------------ layer norms
CONVS = [
    (nn.Conv2d(3, 4, 3, padding=1), (3, 6, 5)),
    (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (4, 7, 6)),
    (nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(0, 1)), (2, 5, 7)),
    (nn.Conv1d(2, 3, 5, stride=3, padding=2), (2, 17)),
]


@pytest.mark.parametrize("conv,shape", CONVS, ids=[str(i) for i in range(len(CONVS))])
def test_conv_norms_against_the_explicit_matrix(conv, shape):
    torch.manual_seed(0)
    for p in conv.parameters():
        p.data.normal_()
    x0 = torch.zeros(1, *shape)
    jac = torch.autograd.functional.jacobian(lambda v: conv(v[None])[0], x0[0]).reshape(-1, math.prod(shape))
    exact = float(torch.linalg.matrix_norm(jac.double(), ord=2))
    torch.testing.assert_close(spectral.conv_matrix(conv, shape), jac.double(), rtol=1e-5, atol=1e-5)
    power = spectral.conv_power_norm(conv, shape, iters=2000)
    assert power == pytest.approx(exact, rel=1e-5)
    bound = spectral.conv_norm_bound(conv, shape)
    assert bound >= exact * (1 - 1e-6)
    a, b = torch.randn(2, *shape, dtype=torch.float64), torch.randn(2, *conv_shape(conv, shape), dtype=torch.float64)
    lhs = (spectral.conv_apply(conv, a) * b).sum()
    rhs = (a * spectral.conv_adjoint(conv, b, shape)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-10)  # conv_transpose is the adjoint


def conv_shape(conv, shape):
    return tuple(conv(torch.zeros(1, *shape)).shape[1:])


POOLS = [  # (layer, expected bound for max pools: sqrt of the largest number of windows sharing an input)
    (nn.MaxPool2d(3, stride=2, padding=1), 2.0),  # 2 windows per axis overlap
    (nn.MaxPool2d(2), 1.0),  # non-overlapping windows: 1-Lipschitz
    (nn.AdaptiveMaxPool2d((3, 2)), 2.0),  # 7 -> 3 and 5 -> 2 windows overlap by one
    (nn.MaxPool1d(3, stride=2, dilation=2), math.sqrt(3)),
    (nn.AvgPool2d(3, stride=2, padding=1), None),
    (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), None),
    (nn.AdaptiveAvgPool2d((3, 4)), None),
    (nn.AvgPool1d(2), None),
]


@pytest.mark.parametrize("pool,expected", POOLS, ids=[repr(p) for p, _ in POOLS])
def test_pool_lipschitz_bounds(pool, expected):
    shape = (2, 9) if isinstance(pool, nn.MaxPool1d | nn.AvgPool1d) else (2, 7, 5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, *shape, generator=g)
    op, out = L.layer_op("p", pool, x)
    assert op.out_shape == tuple(out.shape[1:]) == tuple(pool(x).shape[1:])
    a, b = torch.randn(200, *shape, generator=g), torch.randn(200, *shape, generator=g)
    b = a + 1e-2 * b  # nearby pairs expose overlaps (one input moving several maxima)
    ratio = (pool(a) - pool(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= op.lipschitz * (1 + 1e-5)
    if op.affine:  # average pooling: the bound is the exact operator norm
        jac = torch.autograd.functional.jacobian(lambda v: pool(v[None])[0], x[0]).reshape(-1, math.prod(shape))
        assert op.lipschitz == pytest.approx(float(torch.linalg.matrix_norm(jac.double(), ord=2)), rel=1e-6)
        rows = torch.randn(3, *op.out_shape, dtype=torch.float64)
        torch.testing.assert_close(op.back(rows, True).reshape(3, -1), rows.reshape(3, -1) @ jac.double())
    else:
        assert op.lipschitz == pytest.approx(expected, rel=1e-12)
        rows = torch.rand(3, *op.out_shape, dtype=torch.float64)  # entrywise gradient bound, routed back
        xs = torch.randn(50, *shape, requires_grad=True)
        grads = torch.autograd.grad((pool(xs) * rows[0].float()).sum(), xs)[0]
        assert bool((grads.abs() <= op.back(rows[:1], False).float() + 1e-6).all())


# ------------------------------------------------------------------------------------------ errors
def test_errors_are_clear(model, data, batch, sound):
    x, y = batch
    concat = mr.models.create("concat", data.spec, embed_dim=8).eval()
    for call in (
        lambda: C.sound_lipschitz(concat),
        lambda: C.empirical_lipschitz(concat, x),
        lambda: C.certify(concat, x, y, lipschitz=sound),
        lambda: C.margins(concat, x, y),
    ):
        with pytest.raises(UnsupportedError, match="late-fusion"):
            call()
    with pytest.raises(InputError, match="token ids"):
        C.certify(model, x, y, lipschitz=sound, modalities=["image", "text"])
    with pytest.raises(InputError, match="unknown Lipschitz kind"):
        C.lipschitz_constants(model, "exact")
    with pytest.raises(InputError, match="need data"):
        C.lipschitz_constants(model, "empirical")
    with pytest.raises(InputError, match="batch_size"):
        C.empirical_lipschitz(model, x, batch_size=0)
    with pytest.raises(InputError, match="scale"):
        C.attack_within_radius(model, x, torch.ones(y.shape[0]), modalities="image", scale=1.5)
    with pytest.raises(InputError, match="one entry per sample"):
        C.attack_within_radius(model, x, torch.ones(3), modalities="image")
    with pytest.raises(InputError, match="labels"):
        C.certify(model, x, y[:3], lipschitz=sound)
    with pytest.raises(UnsupportedError, match="TextEncoder"):
        C.encoder_layers(model, "text")


def test_layers_without_a_sound_bound_are_named(data):
    model = mr.models.create("late", data.spec, embed_dim=8, modalities=["image", "audio"]).eval()
    model.encoders["image"] = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.ReLU())
    with pytest.raises(UnsupportedError, match=r"modality 'image': layer 2 \(LayerNorm.*global Lipschitz"):
        C.sound_lipschitz(model)
    C.sound_lipschitz(model, modalities="audio")  # the other modality is still certifiable
    emp = C.empirical_lipschitz(model, data.test.select(model.modalities))  # any differentiable encoder
    assert emp.pairs["image"].shape == (4, 4)
