"""Gradient attacks (FGSM/FGM, PGD) and threat models on the toy 3-modality dataset.

The generic tests walk the attack registry: every registered gradient attack is checked for the
threat-model contract (budget, valid range, bit-identical untouched modalities, ε = 0, consistency
with ``evaluate``) before anyone writes a dedicated test for it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import mmrobust as mr
from conftest import TOY_ENCODERS, ctx
from mmrobust.attacks import ATTACKS, GradientAttack, ThreatModel
from mmrobust.attacks.gradient import CPU_CHUNK_ROWS, LOSSES, Objective, attack_mode, cw_loss, dlr_loss
from mmrobust.attacks.threat import project_ball, sample_norms
from mmrobust.spec import DatasetSpec, ModalitySpec

GRADIENT_ATTACKS = [
    n for n in ATTACKS.names() if isinstance(ATTACKS.get(n), type) and issubclass(ATTACKS.get(n), GradientAttack)
]
THREATS = {
    "audio-linf": {"modalities": "audio", "norm": "linf", "eps": 0.1},
    "image+audio-l2": {"modalities": ["image", "audio"], "norm": "l2", "eps": {"image": 0.5, "audio": 1.0}},
    "image+audio-joint": {"modalities": ["image", "audio"], "norm": "l2", "budget": "joint", "eps": 1.0},
}
TOL = 1e-6
#: The registry walks check invariants that hold at any iteration budget; attacks whose default
#: budget is larger (APGD's 100 steps, Square's 5000 queries) run with this budget there.
MAX_BUDGET = {"steps": 10, "queries": 100}


def make(name, threat, **kw):
    params = inspect.signature(ATTACKS.get(name).__init__).parameters
    for key, cap in MAX_BUDGET.items():
        p = params.get(key)
        if p is not None and isinstance(p.default, int) and p.default > cap:
            kw.setdefault(key, cap)
    return create(name, **threat, **kw)


def create(name, **kw):
    """The attack; the standard evaluation runs the first attack of its fast version only.

    Its other attacks (APGD-T, Square) are walked on their own, and ``tests/test_auto.py`` runs the
    whole list; this keeps the walk's cost to that of APGD.
    """
    if "version" in inspect.signature(ATTACKS.get(name).__init__).parameters:
        kw.setdefault("version", "fast")
        kw.setdefault("attacks", ["apgd-ce"])
    return mr.attacks.create(name, **kw)


def takes(name, param):
    return param in inspect.signature(ATTACKS.get(name).__init__).parameters


def extra_info(name, out):
    """Per-sample info beyond success, loss and norms (the standard evaluation's per-attack record)."""
    if name != "auto":
        return set()
    return {k for k in out.info if k.startswith(("success/", "ran/", "queries/"))} | {"broken_by", "black_box_only"}


def zero_eps(threat):
    eps = threat["eps"]
    return {**threat, "eps": dict.fromkeys(eps, 0.0) if isinstance(eps, dict) else 0.0}


def attacked(threat):
    m = threat["modalities"]
    return [m] if isinstance(m, str) else list(m)


def eps_of(threat, m):
    return threat["eps"][m] if isinstance(threat["eps"], dict) else threat["eps"]


# ------------------------------------------------------------------------------ registry-walking
def test_registry_lists_gradient_attacks():
    assert {"fgsm", "pgd"} <= set(GRADIENT_ATTACKS)
    atk = mr.attacks.create("pgd", modalities=["audio"], norm="linf", eps=0.1, steps=20)
    assert atk.family == "attack" and atk.steps == 20 and atk.modalities == ["audio"]
    assert atk.id.startswith("pgd[audio|norm=linf,eps=0.1,")


@pytest.mark.parametrize("threat", THREATS.values(), ids=THREATS.keys())
@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_budget_range_and_untouched(name, threat, toy_late, toy_data, toy_batch):
    x, y = toy_batch
    out = make(name, threat).apply(toy_late, x, y, ctx(toy_data))
    mods = attacked(threat)
    n = y.shape[0]
    for m in toy_late.modalities:
        if m in mods:
            a = out.x[m]
            assert a.shape == x[m].shape and a.dtype == x[m].dtype and not a.requires_grad
            assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0  # valid range of the spec
            achieved = sample_norms(a - x[m], threat["norm"])
            torch.testing.assert_close(out.info[f"norm/{m}"], achieved)
            if threat.get("budget") != "joint":
                assert float(achieved.max()) <= eps_of(threat, m) + TOL
        else:
            assert out.x[m] is x[m] and torch.equal(out.x[m], x[m])  # the very same tensor
    if threat.get("budget") == "joint":
        joint = torch.stack([sample_norms(out.x[m] - x[m], "l2") ** 2 for m in mods]).sum(0).sqrt()
        assert float(joint.max()) <= threat["eps"] + TOL
        torch.testing.assert_close(out.info["norm/joint"], joint)
    assert set(out.info) == {"success", "loss"} | {f"norm/{m}" for m in mods} | (
        {"norm/joint"} if threat.get("budget") == "joint" else set()
    ) | set(ATTACKS.get(name).counters) | extra_info(name, out)
    assert all(v.shape == (n,) for v in out.info.values())
    assert out.drop == () and out.embeddings == {}
    with torch.no_grad():
        wrong = toy_late(out.x).argmax(1) != y
        clean_wrong = toy_late(x).argmax(1) != y
    assert torch.equal(out.info["success"], wrong)
    assert int(wrong.sum()) > int(clean_wrong.sum())  # the attack flips some correct samples


@pytest.mark.parametrize("threat", THREATS.values(), ids=THREATS.keys())
@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_eps_zero_gives_the_clean_batch(name, threat, toy_late, toy_data, toy_batch):
    x, y = toy_batch
    out = make(name, zero_eps(threat)).apply(toy_late, x, y, ctx(toy_data))
    for m in toy_late.modalities:
        assert torch.equal(out.x[m], x[m])
    with torch.no_grad():
        clean_wrong = toy_late(x).argmax(1) != y
    assert torch.equal(out.info["success"], clean_wrong)
    assert all(float(v.max()) == 0.0 for k, v in out.info.items() if k.startswith("norm/"))


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_evaluate_robust_accuracy_at_most_clean(name, toy_late, toy_data, toy_batch):
    atk = make(name, THREATS["image+audio-l2"])
    res = mr.evaluate(toy_late, toy_data.test, [atk])
    assert res.accuracy(atk.id) <= res.accuracy("clean")
    assert res.accuracy(atk.id) < res.accuracy("clean")  # it finds adversarial examples
    # evaluate() seeds the only batch (first index 0) with seed 0: same adversarial batch as here.
    x, y = toy_batch
    out = atk.apply(toy_late, x, y, ctx(toy_data, 0))
    assert np.array_equal(~res.correct(atk.id), out.info["success"].numpy())


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_mode_and_parameters_restored(name, toy_late, toy_data, toy_batch):
    x, y = toy_batch
    seen = []
    hook = toy_late.encoders["audio"].register_forward_pre_hook(lambda mod, _: seen.append(mod.training))
    toy_late.train()
    try:
        make(name, THREATS["audio-linf"]).apply(toy_late, x, y, ctx(toy_data))
    finally:
        hook.remove()
        was = [m.training for m in toy_late.modules()]
        flags = [p.requires_grad for p in toy_late.parameters()]
        toy_late.eval()
    assert seen and not any(seen)  # attacked in eval mode
    assert all(was) and all(flags)  # train mode and trainable parameters restored


# ------------------------------------------------------------------------------- attack-specific
def test_pgd_beats_fgsm(toy_late, toy_data):
    threat = {"modalities": ["image", "audio"], "norm": "linf", "eps": 0.2}
    fgsm, pgd = make("fgsm", threat), make("pgd", threat)
    res = mr.evaluate(toy_late, toy_data.test, [fgsm, pgd])
    assert res.accuracy(pgd.id) <= res.accuracy(fgsm.id) < res.accuracy("clean")


def test_only_attacked_modalities_are_reencoded(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    calls = dict.fromkeys(toy_late.modalities, 0)
    hooks = [
        toy_late.encoders[m].register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
        for m in toy_late.modalities
    ]
    try:
        make("pgd", THREATS["audio-linf"], steps=5).apply(toy_late, x, y, ctx(toy_data))
    finally:
        for h in hooks:
            h.remove()
    blocks = -(-len(y) // CPU_CHUNK_ROWS)  # the gradient pass goes in blocks of rows on CPU
    assert calls == {"image": 1, "text": 1, "audio": 5 * blocks + 1}  # clean once; attacked: steps + final score


@pytest.mark.parametrize(
    "threat",
    [THREATS["audio-linf"], THREATS["image+audio-joint"],
     {"modalities": ["text", "image"], "norm": "linf", "eps": 0.1, "token_surface": "embedding"}],
)
def test_blocked_gradient_pass_matches_one_pass(toy_late, toy_batch, threat):
    x, y = toy_batch
    atk = make("pgd", threat, steps=1)
    resolved = atk.resolve(toy_late)
    with attack_mode(toy_late):
        whole = Objective(toy_late, x, y, resolved, LOSSES["cw"], chunk=10**9)
        blocked = Objective(toy_late, x, y, resolved, LOSSES["cw"], chunk=7)
        start = whole.start(True, torch.Generator().manual_seed(0))
        (l1, s1, g1), (l2, s2, g2) = whole.loss_and_grad(start), blocked.loss_and_grad(start)
    assert len(y) > 7
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s2, s1, rtol=1e-5, atol=1e-6)
    assert g2.keys() == g1.keys()
    for m in g1:
        torch.testing.assert_close(g2[m], g1[m], rtol=1e-4, atol=1e-6)


def test_pgd_restarts_keep_first_success(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    threat = THREATS["image+audio-joint"]
    one = make("pgd", threat, steps=5).apply(toy_late, x, y, ctx(toy_data, 3))
    three = make("pgd", threat, steps=5, restarts=3).apply(toy_late, x, y, ctx(toy_data, 3))
    s1, s3 = one.info["success"], three.info["success"]
    assert bool((s3 | ~s1).all())  # never loses a success of the first run
    for m in attacked(threat):
        assert torch.equal(three.x[m][s1], one.x[m][s1])  # the first success is kept
    assert bool((three.info["loss"][~s3] >= one.info["loss"][~s3]).all())  # else the highest loss
    assert float(three.info["norm/joint"].max()) <= threat["eps"] + TOL


def test_pgd_early_stop(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    threat = {"modalities": ["image", "audio"], "norm": "linf", "eps": 0.2}
    plain = make("pgd", threat, random_start=False).apply(toy_late, x, y, ctx(toy_data))
    early = make("pgd", threat, random_start=False, early_stop=True).apply(toy_late, x, y, ctx(toy_data))
    assert bool((early.info["success"] | ~plain.info["success"]).all())
    with torch.no_grad():
        clean_wrong = toy_late(x).argmax(1) != y
    for m in attacked(threat):  # misclassified from the start: frozen at the clean input
        assert torch.equal(early.x[m][clean_wrong], x[m][clean_wrong])


@pytest.mark.parametrize("loss", ["cw", "dlr"])
def test_pgd_margin_losses(loss, toy_late, toy_data, toy_batch):
    x, y = toy_batch
    out = make("pgd", THREATS["audio-linf"], loss=loss).apply(toy_late, x, y, ctx(toy_data))
    assert float(out.info["norm/audio"].max()) <= 0.1 + TOL
    assert torch.equal(out.info["loss"] > 0, out.info["success"])  # both margins > 0 iff misclassified


def test_cw_and_dlr_losses_and_gradients():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(16, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (16,), generator=g)
    for fn, direct in ((cw_loss, _cw_direct), (dlr_loss, _dlr_direct)):
        value = fn(s, y)
        (grad,) = torch.autograd.grad(value.sum(), s)
        ref_value, ref_grad = direct(s.detach(), y)
        torch.testing.assert_close(value.detach(), ref_value)
        torch.testing.assert_close(grad, ref_grad)
        assert torch.autograd.gradcheck(lambda t, fn=fn: fn(t, y), (s,))


def _cw_direct(s, y):
    values, grads = [], torch.zeros_like(s)
    for i in range(s.shape[0]):
        others = [k for k in range(s.shape[1]) if k != y[i]]
        k_star = max(others, key=lambda k: s[i, k])
        values.append(s[i, k_star] - s[i, y[i]])
        grads[i, k_star], grads[i, y[i]] = 1.0, -1.0
    return torch.stack(values), grads


def _dlr_direct(s, y):
    """L = (s_k* − s_y)/(s_π1 − s_π3) and its gradient by the quotient rule."""
    values, grads = [], torch.zeros_like(s)
    for i in range(s.shape[0]):
        row = s[i].tolist()
        order = sorted(range(len(row)), key=lambda k: -row[k])
        k_star = max((k for k in range(len(row)) if k != y[i]), key=lambda k: row[k])
        num, den = row[k_star] - row[y[i]], row[order[0]] - row[order[2]] + 1e-12
        values.append(num / den)
        grads[i, k_star] += 1 / den
        grads[i, y[i]] -= 1 / den
        grads[i, order[0]] -= num / den**2
        grads[i, order[2]] += num / den**2
    return torch.tensor(values, dtype=s.dtype), grads


def test_projection_helpers():
    g = torch.Generator().manual_seed(0)
    d = {"a": torch.randn(8, 3, 4, generator=g) * 5, "b": torch.randn(8, 7, generator=g)}
    p = project_ball(d, {"a": 1.0, "b": 0.5}, "linf")
    assert float(p["a"].abs().max()) <= 1.0 and float(p["b"].abs().max()) <= 0.5
    p = project_ball(d, {"a": 1.0, "b": 0.5}, "l2")
    torch.testing.assert_close(sample_norms(p["a"], "l2"), torch.full((8,), 1.0))
    p = project_ball(d, {"a": 2.0, "b": 2.0}, "l2", "joint")
    joint = (sample_norms(p["a"], "l2") ** 2 + sample_norms(p["b"], "l2") ** 2).sqrt()
    torch.testing.assert_close(joint, torch.full((8,), 2.0))
    # one joint factor: the direction of the concatenation is kept
    torch.testing.assert_close(p["a"] / d["a"], (p["b"] / d["b"])[:, :1, None].expand(8, 3, 4))
    small = {"a": d["a"] * 1e-3}
    assert torch.equal(project_ball(small, {"a": 1.0}, "l2")["a"], small["a"])  # inside: unchanged


# --------------------------------------------------------------------------------- token surface
def test_text_through_embeddings(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    atk = mr.attacks.create("pgd", modalities="text", norm="l2", eps=1.0, token_surface="embedding")
    out = atk.apply(toy_late, x, y, ctx(toy_data))
    assert out.x["text"] is x["text"] and out.x["image"] is x["image"] and out.x["audio"] is x["audio"]
    emb = out.embeddings["text"]
    with torch.no_grad():
        clean = toy_late.embed("text", x["text"])
    assert emb.shape == clean.shape
    assert float(out.info["norm/text"].max()) <= 1.0 + TOL
    pad = x["text"] == toy_late.spec["text"].pad_id
    assert torch.equal(emb[pad], clean[pad])  # padding is not perturbable
    with torch.no_grad():
        wrong = toy_late(out.x, embeddings=out.embeddings).argmax(1) != y
        assert torch.equal(toy_late(x, embeddings={}), toy_late(x))
    assert torch.equal(out.info["success"], wrong) and bool(wrong.any())
    zero = mr.attacks.create("fgsm", modalities="text", norm="linf", eps=0.0, token_surface="embedding")
    out0 = zero.apply(toy_late, x, y, ctx(toy_data))
    assert torch.equal(out0.embeddings["text"], clean)
    with torch.no_grad():
        assert torch.equal(toy_late(out0.x, embeddings=out0.embeddings), toy_late(x))
    # evaluate() scores the adversarial embeddings, never the clean tokens
    res = mr.evaluate(toy_late, toy_data.test, [atk])
    assert res.accuracy(atk.id) < res.accuracy("clean")


# ---------------------------------------------------------------------------------------- errors
def test_unknown_attack_name():
    with pytest.raises(mr.UnknownNameError, match=r"unknown attack 'pgdd'.*fgsm.*Did you mean 'pgd'"):
        mr.attacks.create("pgdd", modalities="audio", eps=0.1)


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_bad_hyper_parameters(name):
    with pytest.raises(mr.InputError, match=r"eps \(attacked modalities: audio\) must be >= 0, got -0.1"):
        create(name, modalities="audio", eps=-0.1)
    with pytest.raises(mr.InputError, match="eps for modality 'image' must be >= 0"):
        create(name, modalities=["audio", "image"], eps={"audio": 0.1, "image": -1})
    cls = ATTACKS.get(name)
    if "l0" not in cls.norms:
        with pytest.raises(mr.InputError, match=f"{name}: unsupported norm 'l0'; {name} supports linf, l2"):
            create(name, modalities="audio", norm="l0", eps=1)
    with pytest.raises(mr.InputError, match=f"{name}: unsupported norm 'l1'; {name} supports linf, l2"):
        create(name, modalities="audio", norm="l1", eps=0.1)
    with pytest.raises(mr.InputError, match="needs norm='l2'"):
        create(name, modalities=["audio", "image"], budget="joint", eps=0.1)
    with pytest.raises(mr.InputError, match="no radius for attacked modality 'image'"):
        create(name, modalities=["audio", "image"], eps={"audio": 0.1})
    with pytest.raises(mr.InputError, match="must be finite"):
        create(name, modalities="audio", eps=math.inf)
    if takes(name, "loss"):
        with pytest.raises(mr.InputError, match="unknown loss 'xent'"):
            create(name, modalities="audio", eps=0.1, loss="xent")


def test_bad_pgd_schedule():
    with pytest.raises(mr.InputError, match="steps must be an integer >= 1"):
        mr.attacks.create("pgd", modalities="audio", eps=0.1, steps=0)
    with pytest.raises(mr.InputError, match="alpha must be a finite number > 0"):
        mr.attacks.create("pgd", modalities="audio", eps=0.1, alpha=-1.0)
    with pytest.raises(mr.InputError, match="restarts > 1 without random_start"):
        mr.attacks.create("pgd", modalities="audio", eps=0.1, restarts=2, random_start=False)


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_errors_against_the_model(name, toy_late, toy_data, toy_batch):
    x, y = toy_batch
    with pytest.raises(mr.InputError, match=r"unknown modality 'video'; the model has \['image', 'audio', 'text'\]"):
        mr.evaluate(toy_late, toy_data.test, [create(name, modalities="video", eps=0.1)])
    for mods in ("text", "all"):  # token ids are not perturbable without the embedding surface
        atk = create(name, modalities=mods, eps=0.1)
        with pytest.raises(mr.InputError, match=r"'text' holds token ids.*token_surface='embedding'"):
            atk.apply(toy_late, x, y, ctx(toy_data))
    atk = create(name, modalities="all", eps={"image": 0.1, "audio": 0.1})
    with pytest.raises(mr.InputError, match="no radius for attacked modality 'text'"):
        atk.check(toy_late)
    atk = create(name, modalities="audio", eps=0.1)
    with pytest.raises(mr.InputError, match="labels must lie in"):
        atk.apply(toy_late, x, y + 10, ctx(toy_data))
    with pytest.raises(mr.InputError, match="outside the valid range"):
        atk.apply(toy_late, {**x, "audio": x["audio"] + 2}, y, ctx(toy_data))
    with pytest.raises(mr.InputError, match="batch is missing modality 'image'"):
        atk.apply(toy_late, {k: v for k, v in x.items() if k != "image"}, y, ctx(toy_data))


@pytest.mark.parametrize("name", [n for n in GRADIENT_ATTACKS if takes(n, "loss")])
def test_dlr_needs_three_classes(name, toy_data, toy_batch):
    spec2 = DatasetSpec(
        modalities=(ModalitySpec("image", "image", (1, 8, 8), low=0.0, high=1.0),),
        num_classes=2,
    )
    model2 = mr.models.create("late", spec2)
    if "dlr" not in ATTACKS.get(name).losses:  # e.g. Square: margin and ce only
        with pytest.raises(mr.InputError, match=f"{name}: unknown loss 'dlr'"):
            create(name, modalities="image", eps=0.1, loss="dlr")
        return
    atk = create(name, modalities="image", eps=0.1, loss="dlr")
    need = ATTACKS.get(name).dlr_min_classes  # 3; APGD-T's targeted DLR reads a 4th logit
    with pytest.raises(mr.InputError, match=rf"dlr loss needs at least {need} classes.*has 2"):
        atk.check(model2)
    x, y = toy_batch
    with pytest.raises(mr.InputError, match=f"dlr loss needs at least {need} classes"):
        atk.apply(model2, {"image": x["image"]}, y % 2, ctx(toy_data))


def test_threat_model_standalone(toy_late):
    tm = ThreatModel(["audio", "image"], eps={"audio": 0.2, "image": 0.1}, norm="l2")
    r = tm.resolve(toy_late)
    assert r.modalities == ("image", "audio")  # the model's order
    assert r.eps == {"image": 0.1, "audio": 0.2} and r.low["audio"] == 0.0 and r.high["audio"] == 1.0
    each = ThreatModel("each", eps=0.1, token_surface="embedding")
    assert each.each and each.expand(toy_late) == ["image", "audio", "text"]
    assert each.single("audio").resolve(toy_late).modalities == ("audio",)
    with pytest.raises(mr.InputError, match="one single-source threat per modality"):
        each.resolve(toy_late)
    with pytest.raises(mr.InputError, match="one eps"):
        ThreatModel(["audio", "image"], eps={"audio": 0.1, "image": 0.1}, norm="l2", budget="joint")
    r = ThreatModel("all", eps=0.1, token_surface="embedding").resolve(toy_late)
    assert r.surface == {"image": "input", "audio": "input", "text": "embedding"} and r.low["text"] is None


# -------------------------------------------------------------------- equivalence with torchattacks
class OneModalityView(nn.Module):
    """The model as a function of one modality rescaled to [0, 1]; the other modalities are fixed."""

    def __init__(self, model, x, name):
        super().__init__()
        self.model, self.x, self.name = model, x, name
        spec = model.spec[name]
        self.low, self.width = spec.low, spec.high - spec.low

    def forward(self, u):
        return self.model({**self.x, self.name: self.low + self.width * u}, check=False)


@pytest.mark.parametrize("low_high", [(0.0, 1.0), (-0.3, 1.7)], ids=["unit", "affine"])
@pytest.mark.parametrize("variant", ["pgd-linf", "pgd-l2", "fgsm"])
def test_same_adversarial_examples_as_torchattacks(variant, low_high, toy_late, toy_data, toy_batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = toy_batch
    low, high = low_high
    width = high - low
    if low_high != (0.0, 1.0):  # the same network reading audio in other units
        spec = replace(
            toy_late.spec,
            modalities=tuple(replace(s, low=low, high=high) if s.name == "audio" else s for s in toy_late.spec),
        )
        rescaled = mr.models.create("late", spec, encoder_kwargs=TOY_ENCODERS)
        rescaled.load_state_dict(toy_late.state_dict())
        toy_late, x = rescaled.eval(), {**x, "audio": low + width * x["audio"]}
    view = OneModalityView(toy_late, x, "audio")
    u = (x["audio"] - low) / width
    if variant == "pgd-linf":
        ref = torchattacks.PGD(view, eps=0.1, alpha=0.02, steps=10, random_start=False)
        ours = mr.attacks.create(
            "pgd", modalities="audio", eps=0.1 * width, alpha=0.02 * width, steps=10, random_start=False
        )
    elif variant == "pgd-l2":
        ref = torchattacks.PGDL2(view, eps=1.0, alpha=0.2, steps=10, random_start=False)
        ours = mr.attacks.create(
            "pgd", modalities="audio", norm="l2", eps=width, alpha=0.2 * width, steps=10, random_start=False
        )
    else:
        ref = torchattacks.FGSM(view, eps=0.1)
        ours = mr.attacks.create("fgsm", modalities="audio", eps=0.1 * width)
    expected = ref(u, y)
    if variant != "fgsm":
        # torchattacks returns the last iterate, PGD the first misclassified one, else the one with
        # the highest loss: replay torchattacks' iterates 0..T (its runs are deterministic here)
        iterates = [u]
        for t in range(1, 11):
            ref.steps = t
            iterates.append(ref(u, y))
        torch.testing.assert_close(iterates[-1], expected, rtol=0, atol=0)
        with torch.no_grad():
            logits = [view(it) for it in iterates]
        wrong = torch.stack([lg.argmax(1) != y for lg in logits])  # (T + 1, N)
        loss = torch.stack([LOSSES["ce"](lg, y) for lg in logits])
        pick = torch.where(wrong.any(0), wrong.float().argmax(0), loss.argmax(0))
        expected = torch.stack(iterates)[pick, torch.arange(len(y))]
        assert bool((pick < 10).any())  # the last iterate is not always the one returned
    out = ours.apply(toy_late, x, y, ctx(toy_data))
    got = (out.x["audio"] - low) / width
    assert float((expected - u).abs().max()) > 0.05  # the attack moved the input
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
