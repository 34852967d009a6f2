"""CRMT (methods.md §3): the CRMT head, its a-factored certified radius, the two training steps.

References are independent of the code under test: Python loops over samples and classes for the
formulas, autograd Jacobians of linear encoders (where the distance to the decision boundary is exact)
and per-sample gradient loops for the Lipschitz estimates.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import mmrobust as mr
from conftest import make_toy_bundle
from mmrobust import certify as C
from mmrobust.certify.crmt import certify_crmt, crmt_scales, direction_lipschitz, signed_radius
from mmrobust.defenses.crmt import CRMT, margin_loss
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.fusion.crmt import CRMTFusion
from mmrobust.spec import DatasetSpec, ModalitySpec

CONT = ["image", "audio"]
SMALL = {"embed_dim": 16, "encoder_kwargs": {"image": {"width": 4}, "audio": {"width": 4}}}
FAST = {"epochs": 3, "radius_epochs": 3, "train": {"batch_size": 64}}


@pytest.fixture(scope="module")
def data():
    return make_toy_bundle()


@pytest.fixture(scope="module")
def late(data):
    return mr.models.create("late", data.spec, **SMALL).eval()


@pytest.fixture(scope="module")
def trained(late, data):
    return CRMT("JT", **FAST).apply(late, data)


@pytest.fixture(scope="module")
def batch(data):
    return data.test.batch(torch.arange(len(data.test)))


def _directions(fusion):
    return {m: fusion.direction(m).detach() for m in fusion.names}


def _check_constraints(fusion):
    for m, w in _directions(fusion).items():
        if fusion.mode == "rownorm":
            torch.testing.assert_close(w.norm(dim=1), torch.ones(w.shape[0]), rtol=0, atol=1e-6)
        else:
            torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), rtol=0, atol=1e-5)
        assert bool((fusion.scale(m) > 0).all())


# ------------------------------------------------------------------------------------------ the head
@pytest.mark.parametrize("mode", ["rownorm", "orthonormal"])
def test_head_computes_the_factored_late_fusion(data, batch, mode):
    model = mr.models.create("crmt", data.spec, fusion_kwargs={"mode": mode}, **SMALL).eval()
    fusion = model.fusion
    assert isinstance(fusion, CRMTFusion) and model.is_late and model.supports_drop
    with torch.no_grad():
        fusion.bias.copy_(torch.randn(4, generator=torch.Generator().manual_seed(0)))
        for i, m in enumerate(model.modalities):
            fusion.scale_raw[m].add_(0.3 * i)
    _check_constraints(fusion)
    x, y = batch
    with torch.no_grad():
        z = model.encode(x)
        ref = fusion.bias.clone()
        for m in model.modalities:
            ref = ref + fusion.scale(m) * (z[m] @ fusion.direction(m).T)
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
        uni = model.unimodal_logits(x)
        for m in model.modalities:  # a modality's logits = the model with every other modality dropped
            others = [o for o in model.modalities if o != m]
            torch.testing.assert_close(uni[m], model(x, drop=others), rtol=0, atol=1e-6)
    head = C.late_head(model)  # certify reads the effective weights diag(a) W̃ and b
    for m in model.modalities:
        torch.testing.assert_close(head.weight[m], fusion.scale(m).detach()[:, None] * fusion.direction(m).detach())
    mg = C.margins(model, x, y)
    with torch.no_grad():
        s = model(x)
    torch.testing.assert_close(mg.total, s.gather(1, y[:, None]) - s, rtol=0, atol=1e-5)


def test_conversion_of_a_late_model(data, batch):
    late = mr.models.create("late", data.spec, **SMALL, fusion_kwargs={"prior": [0.1, 0.2, 0.3, 0.4]})
    mr.train(late, data, epochs=1, quiet=True)
    x, _ = batch
    exact = CRMT("JT").convert(late)
    assert exact.config["fusion"] == "crmt" and exact.fusion_name == "crmt"
    with torch.no_grad():  # rownorm: the exact factorisation, same logits (bias and prior folded)
        torch.testing.assert_close(exact(x), late(x), rtol=0, atol=1e-5)
        for m in late.modalities:
            torch.testing.assert_close(exact.fusion.scale(m), late.fusion.heads[m].weight.norm(dim=1))
    ortho = CRMT("JT", mode="orthonormal").convert(late)
    _check_constraints(ortho.fusion)
    assert isinstance(late.fusion, mr.models.fusion.LateFusion)  # the input model is untouched


def test_bad_inputs_are_named(data):
    concat = mr.models.create("concat", data.spec, embed_dim=8)
    with pytest.raises(InputError, match=r"late-fusion.*'concat'"):
        CRMT().apply(concat, data)
    with pytest.raises(InputError, match="late-fusion"):
        CRMT().check(mr.models.create("attention", data.spec, embed_dim=8))
    text_only = mr.models.create("unimodal", data.spec, modality="text", embed_dim=8)
    with pytest.raises(InputError, match=r"crmt: .*continuous"):
        CRMT().check(text_only)
    with pytest.raises(InputError, match=r"orthonormal.*embed_dim"):
        CRMT(mode="orthonormal").check(mr.models.create("late", data.spec, embed_dim=2))
    with pytest.raises(InputError, match="DatasetBundle"):
        CRMT().apply(mr.models.create("late", data.spec, embed_dim=8), data.train)
    for kwargs, match in [
        ({"variant": "PGD"}, "variant 'PGD'"),
        ({"rho": -1.0}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"mode": "unit"}, "mode 'unit'"),
        ({"epochs": 0}, "epochs"),
        ({"radius_epochs": -1}, "radius_epochs"),
        ({"train": {"lr": 0}}, r"crmt: invalid train settings: lr=0 \(Input should be greater than 0\)"),
        ({"train": {"weight_decay": -1e-4}}, "weight_decay=-0.0001"),
        ({"radius_lr": 0}, "radius_lr must be a finite number > 0, got 0"),
        ({"eps": 0.0}, "eps"),
        ({"attack_steps": 1.5}, "attack_steps"),
        ({"lipschitz": "exact"}, "lipschitz kind 'exact'"),
        ({"lipschitz_samples": 0}, "lipschitz_samples"),
        ({"train": {"batch_size": True}}, r"train\['batch_size'\] must be an integer, got True"),
        ({"train": {"lrr": 1e-3}}, "crmt: unknown train setting 'lrr'; train accepts batch_size, lr, weight_decay"),
        ({"train": {"unimodal_loss": 0.0}}, r"train\['unimodal_loss'\] does not apply: .*set rho"),
        ({"train": {"seed": 1}}, r"train\['seed'\] is set by the defence; use apply\(seed=...\)"),
        ({"train": [("lr", 1e-3)]}, "train must be a dict"),
    ]:
        with pytest.raises(InputError, match=match):
            CRMT(**kwargs)
    with pytest.raises(InputError, match="mode 'unit'"):
        mr.models.create("crmt", data.spec, fusion_kwargs={"mode": "unit"})
    with pytest.raises(InputError, match="orthonormal"):
        mr.models.create("crmt", data.spec, embed_dim=3, fusion_kwargs={"mode": "orthonormal"})
    with pytest.raises(UnsupportedError, match="CRMT model"):
        direction_lipschitz(mr.models.create("late", data.spec, embed_dim=8), "sound")
    assert CRMT("mix").variant == "Mix" and mr.defenses.create("crmt").kind == "training"


# ------------------------------------------------------------------------------------------ losses
def test_margin_loss_against_loops():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 7, 5, generator=g)
    y = torch.randint(0, 5, (7,), generator=g)
    y2 = torch.randint(0, 5, (7,), generator=g)
    excl = torch.nn.functional.one_hot(y2, 5).bool()
    plain, mixed = margin_loss(scores, y), margin_loss(scores, y, excl)
    for i in range(7):
        terms = [float(scores[m, i, k] - scores[m, i, y[i]]) for m in range(3) for k in range(5) if k != y[i]]
        assert float(plain[i]) == pytest.approx(math.log(sum(math.exp(t) for t in terms)), rel=1e-5)
        terms = [float(scores[m, i, k] - scores[m, i, y[i]]) for m in range(3) for k in range(5)
                 if k not in (int(y[i]), int(y2[i]))]
        assert float(mixed[i]) == pytest.approx(math.log(sum(math.exp(t) for t in terms)), rel=1e-5)
    two = margin_loss(torch.randn(2, 3, 2, generator=g), torch.tensor([0, 1, 0]),
                      torch.tensor([[False, True], [True, False], [False, False]]))
    assert two[:2].tolist() == [0.0, 0.0] and math.isfinite(float(two[2]))  # nothing left to push above


# ------------------------------------------------------------------------------------------ radius
def test_crmt_radii_match_the_formula():
    g = torch.Generator().manual_seed(1)
    n, k = 9, 4
    margin = torch.randn(n, k, generator=g).double().abs() + 0.1
    label = torch.randint(0, k, (n,), generator=g)
    margin[torch.arange(n), label] = 0.0
    margin[0, (int(label[0]) + 1) % k] = -0.5  # misclassified sample
    scale, tau = torch.rand(2, k, generator=g).double() + 0.2, torch.rand(2, k, generator=g).double() + 0.5
    joint, single, _ = C.crmt_radii(margin, label, scale, tau)
    for i in range(n):
        y = int(label[i])
        rj, rs = math.inf, [math.inf, math.inf]
        for c in range(k):
            if c == y:
                continue
            den = [float(scale[m, y] * tau[m, y] + scale[m, c] * tau[m, c]) for m in range(2)]
            rj = min(rj, float(margin[i, c]) / math.sqrt(sum(d * d for d in den)))
            rs = [min(rs[m], float(margin[i, c]) / den[m]) for m in range(2)]
        assert float(joint[i]) == pytest.approx(max(rj, 0.0), rel=1e-12)
        for m in range(2):
            assert float(single[m, i]) == pytest.approx(max(rs[m], 0.0), rel=1e-12)
    assert float(joint[0]) == 0.0
    signed = signed_radius(-margin.float(), label, scale.float(), tau.float())  # logits −margin: s_y − s_k = margin
    torch.testing.assert_close(signed[1:].double(), joint[1:], rtol=1e-5, atol=0)
    assert float(signed[0]) < 0


def test_certify_crmt_against_direct_formula(trained, data, batch):
    x, y = batch
    tau = direction_lipschitz(trained, "empirical", data.train)
    cert = certify_crmt(trained, data.test, lipschitz=tau)
    f = trained.fusion
    with torch.no_grad():
        s = f.unimodal_scores(trained.encode(x))
        a = {m: f.scale(m) for m in trained.modalities}
        b = f.bias.detach()
    for i in range(0, y.shape[0], 5):
        yi, rj = int(y[i]), math.inf
        for c in range(4):
            if c == yi:
                continue
            num = sum(float(a[m][yi] * s[m][i, yi] - a[m][c] * s[m][i, c]) for m in trained.modalities)
            num += float(b[yi] - b[c])
            den = [float(a[m][yi] * tau.per_class[m][yi] + a[m][c] * tau.per_class[m][c]) for m in CONT]
            rj = min(rj, num / math.sqrt(sum(d * d for d in den)))
        assert float(cert.joint[i]) == pytest.approx(max(rj, 0.0), rel=1e-4, abs=1e-7)
    # the generic margin-Lipschitz radius with constants from the same samples is at least as large
    generic = C.certify_dataset(trained, data.test, lipschitz=C.empirical_lipschitz(trained, data.train))
    assert bool((generic.joint >= cert.joint - 1e-9).all()) and bool((generic.joint > cert.joint).any())
    for m in CONT:
        assert bool((generic.single[m] >= cert.single[m] - 1e-9).all())


def _linear_crmt(k: int, modalities: tuple[str, ...]):
    spec = DatasetSpec(
        modalities=(
            ModalitySpec("img", "image", (1, 4, 4)),
            ModalitySpec("vec", "features", (5,)),
            ModalitySpec("tok", "text", (4,), dtype="int64", vocab_size=7, pad_id=0, perturbable=False),
        ),
        num_classes=k,
        name="linear",
    ).subset(list(modalities))
    model = mr.models.create("crmt", spec, embed_dim=6, seed=3)
    torch.manual_seed(5)
    if "img" in modalities:
        model.encoders["img"] = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(8, 6))
    model.encoders["vec"] = nn.Sequential(nn.Flatten(), nn.Linear(5, 6))
    with torch.no_grad():
        for m in modalities:
            model.fusion.scale_raw[m].uniform_(-1.0, 1.5)
        model.fusion.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(1)
    x = {"vec": torch.randn(30, 5, generator=g), "tok": torch.randint(1, 7, (30, 4), generator=g)}
    if "img" in modalities:
        x["img"] = torch.randn(30, 1, 4, 4, generator=g)
    return model.eval(), x


def _exact_distances(model, x, mods):
    """Distance to the nearest decision boundary of a model that is affine in ``mods``, per sample."""
    with torch.no_grad():
        s = model(x).double()
    y = s.argmax(1)
    first = {o: t[:1] for o, t in x.items()}
    jac = {}
    for m in mods:  # the Jacobian of the logits in x_m is the same at every point
        def f(xm, m=m):
            return model(dict(first, **{m: xm[None]}))[0]

        jac[m] = torch.autograd.functional.jacobian(f, x[m][0]).reshape(s.shape[1], -1).double()
    dist = torch.full((s.shape[0],), math.inf, dtype=torch.float64)
    for c in range(s.shape[1]):
        rows = torch.cat([jac[m][y] - jac[m][c] for m in mods], 1)  # (N, D)
        d = (s.gather(1, y[:, None])[:, 0] - s[:, c]) / rows.norm(dim=1)
        dist = torch.where(y == c, dist, torch.minimum(dist, d))
    return dist, y


def test_linear_encoder_radius_against_the_true_distance():
    model, x = _linear_crmt(3, ("img", "vec", "tok"))
    mods = ["img", "vec"]
    tau = direction_lipschitz(model, "sound")  # exact for affine encoders
    emp = direction_lipschitz(model, "empirical", x)
    for m in mods:
        torch.testing.assert_close(tau.per_class[m], emp.per_class[m], rtol=1e-5, atol=1e-7)
    dist, y = _exact_distances(model, x, mods)
    crmt = C.crmt_radii(C.margins(model, x).total, y, crmt_scales(model, mods).detach(),
                        torch.stack([tau.per_class[m] for m in mods]))[0]
    generic = C.certify(model, x, lipschitz=C.sound_lipschitz(model)).joint
    torch.testing.assert_close(generic, dist, rtol=1e-5, atol=0)  # the effective head's radius is exact
    assert bool((crmt <= dist * (1 + 1e-6)).all()) and bool((crmt < dist * 0.999).any())  # CRMT's is a bound

    # two classes with opposite directions: the triangle inequality is tight and CRMT's radius is exact
    model, x = _linear_crmt(2, ("vec", "tok"))
    with torch.no_grad():
        v = model.fusion.directions["vec"].weight
        v[1] = -v[0]
    tau = direction_lipschitz(model, "sound")
    dist, y = _exact_distances(model, x, ["vec"])
    cert = certify_crmt(model, _as_split(model, x, y), lipschitz=tau)
    torch.testing.assert_close(cert.joint, dist, rtol=1e-5, atol=0)
    with torch.no_grad():  # one step along the worst direction: unchanged at 0.999 r, flipped at 1.001 r
        grad = (model.encoders["vec"][1].weight.T @ model.fusion.direction("vec").T).T  # (K, 5) rows W̃ A
        sign = torch.where(y == 0, -1.0, 1.0)[:, None]
        unit = sign * grad[0] / grad[0].norm()
        for factor, flips in ((0.999, False), (1.001, True)):
            moved = dict(x, vec=x["vec"] + unit * (cert.joint * factor).float()[:, None])
            assert bool((model(moved).argmax(1) != y).all()) == flips


def _as_split(model, x, y):
    from mmrobust.datasets.dataset import MultimodalDataset, compute_stats

    return MultimodalDataset(x, y, model.spec, stats=compute_stats(x, model.spec))


# ------------------------------------------------------------------------------------------ τ̃ and the authors' bugs
def test_direction_constants_match_per_sample_gradients(trained, data):
    x, _ = data.train.batch(torch.arange(10))
    tau = direction_lipschitz(trained, "empirical", x)
    f = trained.fusion
    for m in CONT:  # reference: every modality and class on its own, one sample at a time
        ref = torch.zeros(4, dtype=torch.float64)
        for i in range(10):
            for c in range(4):
                xm = x[m][i : i + 1].clone().requires_grad_(True)
                score = (trained.encode_one(m, xm) @ f.direction(m).T)[0, c]
                (grad,) = torch.autograd.grad(score, xm)
                ref[c] = max(float(ref[c]), float(grad.double().norm()))
        assert bool((ref > 0).all())  # the second modality's gradient is read, not zeroed
        torch.testing.assert_close(tau.per_class[m], ref, rtol=1e-5, atol=1e-8)  # nothing accumulates over classes
    sound = direction_lipschitz(trained, "sound")
    for m in CONT:
        assert bool((sound.per_class[m] >= tau.per_class[m]).all())


def test_a_enters_the_denominator_once(trained, data, batch):
    x, y = batch
    model = copy.deepcopy(trained)
    before = direction_lipschitz(model, "empirical", x)
    with torch.no_grad():
        for m in model.modalities:
            model.fusion.scale_raw[m].add_(torch.linspace(-1.0, 2.0, 4))
    after = direction_lipschitz(model, "empirical", x)
    eff = C.empirical_lipschitz(model, x)  # constants of the effective head diag(a) W̃ φ
    for m in CONT:
        torch.testing.assert_close(after.per_class[m], before.per_class[m])  # τ̃ does not see a
        torch.testing.assert_close(eff.per_class[m], model.fusion.scale(m).detach().double() * after.per_class[m])
    # the training objective's radius equals the certificate's (a once in the denominator)
    tau = torch.stack([after.per_class[m] for m in CONT]).float()
    with torch.no_grad():
        r = signed_radius(model(x), y, crmt_scales(model, CONT), tau).double()
    cert = C.crmt_radii(C.margins(model, x, y).total, y, crmt_scales(model, CONT).detach(), tau)[0]
    torch.testing.assert_close(r.clamp_min(0), cert, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------ training
class _Snapshot(CRMT):
    """Records the model between the two steps."""

    def _estimate_tau(self, model, data):
        self.between = copy.deepcopy(model.state_dict())
        return super()._estimate_tau(model, data)


def test_step2_changes_only_a_and_keeps_batchnorm_statistics(data):
    late = mr.models.create("late", data.spec, **SMALL)
    late.encoders["image"] = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveMaxPool2d((2, 2)), nn.Flatten(),
        nn.Linear(16, 16), nn.ReLU(),
    )
    defence = _Snapshot("JT", epochs=2, radius_epochs=3)
    out = defence.apply(late, data)
    assert out.defense_info["step2"]["kept"]
    after = out.state_dict()
    assert set(after) == set(defence.between)
    changed = {k for k in after if not torch.equal(after[k], defence.between[k])}
    assert changed and all(k.startswith("fusion.scale_raw.") for k in changed)  # only a moved in step 2
    bn = [k for k in after if k.startswith("encoders.image.1.")]
    assert {"encoders.image.1.running_mean", "encoders.image.1.running_var"} <= set(bn)
    assert not any(k in changed for k in bn)  # BatchNorm statistics frozen (eval mode) in step 2
    assert all(p.requires_grad for p in out.parameters())  # flags restored after step 2
    assert isinstance(late.fusion, mr.models.fusion.LateFusion)  # the input model is untouched


@pytest.mark.parametrize("variant,mode", [("JT", "orthonormal"), ("AT", "rownorm"), ("Mix", "orthonormal")])
def test_variants_train_deterministically_and_keep_constraints(late, data, variant, mode):
    a = CRMT(variant, mode=mode, epochs=2, radius_epochs=2).apply(late, data, seed=3)
    b = CRMT(variant, mode=mode, epochs=2, radius_epochs=2).apply(late, data, seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    _check_constraints(a.fusion)
    info = a.defense_info
    assert info["val_radius_after"] >= info["val_radius_before"] and a.config["defense"]["params"]["variant"] == variant
    assert set(info["tau"]) == set(CONT) and all(t > 0 for m in CONT for t in info["tau"][m])
    c = CRMT(variant, mode=mode, epochs=2, radius_epochs=2).apply(late, data, seed=4)
    assert any(not torch.equal(sa[k], c.state_dict()[k]) for k in sa)


def test_at_attacks_inside_the_joint_ball_and_restores_the_mode(late, data, monkeypatch):
    from mmrobust.attacks.pgd import PGD

    defence = CRMT("AT", eps=0.3, attack_steps=3)
    net = defence.convert(late)
    net.train()
    seen = {}
    perturb, apply = PGD._perturb, PGD.apply

    def spy_perturb(self, obj, ctx):
        seen["eval"] = not any(m.training for m in obj.model.modules())
        seen["frozen"] = not any(p.requires_grad for p in obj.model.parameters())
        seen["steps"], seen["alpha"] = self.steps, self.step_sizes(obj.threat)
        return perturb(self, obj, ctx)

    def spy_apply(self, model, x, y, ctx):
        out = apply(self, model, x, y, ctx)
        seen.update(x=x, adv=out.x)
        return out

    monkeypatch.setattr(PGD, "_perturb", spy_perturb)
    monkeypatch.setattr(PGD, "apply", spy_apply)
    x, y = data.train.batch(torch.arange(32))
    loss, _ = defence._step1_objective(net, CONT)(net, x, y, torch.Generator().manual_seed(0))
    assert seen["eval"] and seen["frozen"]  # the attack ran in eval mode with frozen parameters
    assert seen["steps"] == 3 and seen["alpha"] == {"image": pytest.approx(0.1), "audio": pytest.approx(0.1)}
    assert net.training and all(m.training for m in net.modules())  # both restored after the attack
    assert all(p.requires_grad for p in net.parameters()) and loss.requires_grad
    delta = torch.cat([(seen["adv"][m] - seen["x"][m]).flatten(1) for m in CONT], 1).norm(dim=1)
    assert bool((delta <= 0.3 * (1 + 1e-5)).all()) and bool((delta > 0.1).all())  # one joint ℓ2 ball
    assert torch.equal(seen["adv"]["text"], x["text"])


def test_held_fixed_modalities_in_step2(trained, data):
    # drop (default): the margin step 2 maximises leaves the fixed text out and text's a is not trained
    base = copy.deepcopy(trained)
    for held, text_moves in (("drop", False), ("keep", True)):
        net = copy.deepcopy(base)
        info = CRMT("JT", radius_epochs=2, held_fixed=held).step2(net, data)
        assert info["step2"]["kept"] and info["step2"]["numerator"] == (CONT if held == "drop" else [*CONT, "text"])
        moved = not torch.equal(net.fusion.scale_raw["text"], base.fusion.scale_raw["text"])
        assert moved == text_moves
        assert all(not torch.equal(net.fusion.scale_raw[m], base.fusion.scale_raw[m]) for m in CONT)
    # the score of "drop" is the certified radius of the model without text
    tau = direction_lipschitz(base, "empirical", data.train)
    info = CRMT("JT", radius_epochs=0).step2(copy.deepcopy(base), data, tau=tau)
    x, y = data.val.batch(torch.arange(len(data.val)))
    with torch.no_grad():
        s = base(x, drop=["text"])
    ref = C.crmt_radii(s.gather(1, y[:, None]) - s, y, crmt_scales(base, CONT).detach(),
                       torch.stack([tau.per_class[m] for m in CONT]))[0]
    assert info["val_radius_before"] == pytest.approx(float(ref.mean()), rel=1e-6)
    with pytest.raises(InputError, match="held_fixed 'x'"):
        CRMT(held_fixed="x")


def test_train_settings_reach_both_steps(late, data, monkeypatch):
    # step 1 gets every train setting; step 2 shares only batch_size and has its own epochs and lr
    import mmrobust.defenses.crmt as crmt_module

    calls = []
    real = crmt_module.train

    def spy(model, data, config=None, **kw):
        calls.append(mr.TrainConfig.model_validate({**(config or {}), **{k: v for k, v in kw.items()
                                                                            if k in mr.TrainConfig.model_fields}}))
        return real(model, data, config, **kw)

    monkeypatch.setattr(crmt_module, "train", spy)
    d = CRMT("JT", epochs=1, radius_epochs=1, radius_lr=0.03,
             train={"weight_decay": 1e-4, "lr": 5e-3, "batch_size": 50, "patience": 2})
    assert d.params()["train"] == {"batch_size": 50, "lr": 5e-3, "weight_decay": 1e-4, "patience": 2}
    assert list(d.params()["train"]) == ["batch_size", "lr", "weight_decay", "patience"]  # canonical order
    d.apply(late, data, seed=1)
    step1, step2 = calls
    assert (step1.epochs, step1.lr, step1.batch_size, step1.weight_decay, step1.patience) == (1, 5e-3, 50, 1e-4, 2)
    assert (step1.unimodal_loss, step1.seed) == (0.0, 1)
    assert (step2.epochs, step2.lr, step2.batch_size, step2.weight_decay, step2.patience) == (1, 0.03, 50, 0.0, None)
    # the defaults are TrainConfig's: lr 2e-3, batch 64, no weight decay (reported train={})
    calls.clear()
    CRMT("JT", epochs=1, radius_epochs=1).apply(late, data, seed=1)
    assert CRMT().params()["train"] == {} and CRMT().batch_size == 64
    assert [(c.lr, c.batch_size, c.weight_decay) for c in calls] == [(2e-3, 64, 0.0), (1e-2, 64, 0.0)]


def test_never_reads_the_test_split(late):
    class Poison:
        def __getattr__(self, name):
            raise AssertionError(f"the test split was read ({name})")

    data = make_toy_bundle()
    data.test = Poison()
    CRMT("Mix", epochs=1, radius_epochs=1).apply(late, data)


def test_checkpoint_round_trip_and_soundness(trained, batch, tmp_path):
    x, _ = batch
    path = mr.models.save(trained, tmp_path / "crmt.pt")
    back = mr.models.load(path)
    assert back.config["fusion"] == "crmt" and back.fusion.mode == "rownorm"
    assert back.defense_info["tau"] == trained.defense_info["tau"] and back.config["defense"]["name"] == "crmt"
    with torch.no_grad():
        assert torch.equal(back(x), trained(x))
    ortho = mr.models.create("crmt", trained.spec, fusion_kwargs={"mode": "orthonormal"}, **SMALL).eval()
    back = mr.models.load(mr.models.save(ortho, tmp_path / "ortho.pt"))
    with torch.no_grad():
        assert torch.equal(back(x), ortho(x))
    # sound certificates of a CRMT model hold under PGD inside the radius (generic and CRMT's own)
    sound = C.sound_lipschitz(trained)
    cert = C.certify(trained, x, lipschitz=sound)
    tau = direction_lipschitz(trained, "sound")
    crmt = C.crmt_radii(cert.margin, cert.label, crmt_scales(trained, CONT).detach(),
                        torch.stack([tau.per_class[m] for m in CONT]))[0]
    assert bool((crmt <= cert.joint + 1e-12).all())
    for radius in (cert.joint, crmt):
        res = C.attack_within_radius(trained, x, radius, modalities=CONT, steps=10, restarts=1)
        assert res.violations == 0 and int(res.attacked.sum()) > 0.5 * x["image"].shape[0]
