"""JR (sample-wise Jacobian regularisation, methods.md §2): fusion layer, defence, transfer attack."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mmrobust as mr
from conftest import ctx
from mmrobust.attacks import Transfer
from mmrobust.defenses.jr import JR, build_jr_model, set_gamma
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.fusion import FUSIONS
from mmrobust.models.fusion.jr import JRFusion, bind_input_jacobians, jr_mode
from mmrobust.models.fusion.sylvester import jr_weights

D = torch.float64
MODES = ["logits", "features", "input"]


@pytest.fixture(scope="module")
def batch(toy_batch):
    x, y = toy_batch
    return {m: t[:12] for m, t in x.items()}, y[:12]


def brute_force_logits(late, x, gamma, jacobian, apply_to=None):
    """Σ_m W_m z_m − (M−1) log π with W_m from the K²×K² linear system, per sample (float64).

    ``apply_to``: the modalities that get W_m (the others add z_m unchanged); ``None``: all.
    """
    with torch.no_grad():
        uni = {m: v.double() for m, v in late.unimodal_logits(x).items()}
    lp = late.fusion.log_prior.double()
    s0 = sum(uni.values()) - (len(uni) - 1) * lp
    p0 = s0.softmax(1)
    k = s0.shape[1]
    out = torch.zeros_like(s0)
    for i in range(s0.shape[0]):
        s = torch.diag(p0[i]) - torch.outer(p0[i], p0[i])
        for m, zm in uni.items():
            if apply_to is not None and m not in apply_to:
                out[i] += zm[i]
                continue
            a = late.fusion.heads[m].weight.detach().double()
            if jacobian == "logits":
                h = torch.eye(k, dtype=D)
            elif jacobian == "features" or late.spec[m].is_tokens:
                h = a @ a.T
            else:
                enc = late.encoders[m]
                jac = torch.autograd.functional.jacobian(
                    lambda v, enc=enc, m=m: late.fusion.heads[m](enc(v[None]))[0], x[m][i]
                )
                g = jac.reshape(k, -1).double()
                h = g @ g.T
            big = torch.kron(h.T.contiguous(), (s @ s).contiguous()) + gamma * torch.eye(k * k, dtype=D)
            w = torch.linalg.solve(big, gamma * torch.eye(k, dtype=D).T.reshape(-1)).reshape(k, k).T
            out[i] += w @ zm[i]
    return out - (len(uni) - 1) * lp


def test_registered():
    assert "jr" in mr.defenses.names() and mr.defenses.create("jr").kind == "training-free"
    assert "transfer" in mr.attacks.names()
    assert FUSIONS.get("jr") is JRFusion


@pytest.mark.parametrize("jacobian", MODES)
def test_logits_match_brute_force(toy_late, batch, jacobian):
    x, _ = batch
    model = build_jr_model(toy_late, 0.05, jacobian)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out.double(), brute_force_logits(toy_late, x, 0.05, jacobian), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("jacobian", MODES)
def test_large_gamma_recovers_the_ci_fusion_and_input_is_untouched(toy_late, batch, jacobian):
    x, _ = batch
    before = {k: v.clone() for k, v in toy_late.state_dict().items()}
    model = build_jr_model(toy_late, 1e9, jacobian)
    with torch.no_grad():
        torch.testing.assert_close(model(x), toy_late(x), atol=1e-4, rtol=1e-5)
    assert type(toy_late.fusion).__name__ == "LateFusion"
    assert all(torch.equal(v, toy_late.state_dict()[k]) for k, v in before.items())


def test_constant_shift_of_a_modality_changes_nothing_in_logits_mode(toy_late, batch):
    x, _ = batch
    model = build_jr_model(toy_late, 1e-3, "logits")
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.fusion.heads["audio"].bias += 3.7  # z_audio + 3.7·1
        a, b = model(x), shifted(x)
    torch.testing.assert_close(b - a, torch.full_like(a, 3.7), atol=1e-4, rtol=0)
    assert torch.equal(a.argmax(1), b.argmax(1))


def synthetic_fusion(k, jacobian, gamma, seed=0):
    f = JRFusion(["a", "b", "c"], dict.fromkeys("abc", k), k, gamma=gamma, jacobian=jacobian)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in "abc":
            w = torch.eye(k) if jacobian == "logits" else torch.eye(k) + 0.3 * torch.randn(k, k, generator=g)
            f.heads[m].weight.copy_(w)
            f.heads[m].bias.zero_()
    return f.double().eval()


@pytest.mark.parametrize("gamma", [1e-3, 1e-2, 1e-1, 1.0, 10.0])
def test_never_changes_the_prediction_when_modalities_agree_confidently(gamma):
    """The documented tolerance: K = 10, three modalities agreeing by δ >= 3, ‖z_m − mean‖ <= 50."""
    k, n = 10, 400
    f = synthetic_fusion(k, "logits", gamma)
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, k, (n,), generator=g)
    z = {}
    for m in "abc":
        v = torch.randn(n, k, generator=g, dtype=D) * 4
        v[torch.arange(n), y] = v.amax(1) + 3 + torch.rand(n, generator=g, dtype=D) * 5  # margin >= 3
        v = v - v.mean(1, keepdim=True)
        z[m] = v * torch.clamp(50 / torch.linalg.vector_norm(v, dim=1, keepdim=True), max=1.0) * 0.999
        assert bool(((z[m].topk(2).values[:, 0] - z[m].topk(2).values[:, 1]) >= 2.99).all())
    with torch.no_grad():
        fused, aux = f(z)
        cert = f.unchanged_certificate(z)
    assert bool(cert.all())
    assert torch.equal(fused.argmax(1), aux["undefended_logits"].argmax(1))


@pytest.mark.parametrize("jacobian", ["logits", "features"])
def test_unchanged_certificate_is_sound(jacobian):
    k, n = 6, 600
    for gamma in (1e-3, 1e-1, 10.0):
        f = synthetic_fusion(k, jacobian, gamma, seed=2)
        g = torch.Generator().manual_seed(3)
        z = {m: torch.randn(n, k, generator=g, dtype=D) * torch.rand(n, 1, generator=g, dtype=D) * 12 for m in "abc"}
        with torch.no_grad():
            fused, aux = f(z)
            cert = f.unchanged_certificate(z)
        assert 0 < int(cert.sum()) < n  # the test sees both cases
        same = fused.argmax(1) == aux["undefended_logits"].argmax(1)
        assert bool(same[cert].all())


def test_mode_switch_and_bpda_gradient(toy_late, batch):
    x, _ = batch
    model = build_jr_model(toy_late, 1e-2, "logits")
    assert model.fusion.mode == "full"
    with pytest.raises(InputError, match="mode"), jr_mode(model, "fast"):
        pass
    with pytest.raises(RuntimeError), jr_mode(model, "bpda"):
        assert model.fusion.mode == "bpda"
        raise RuntimeError("boom")
    assert model.fusion.mode == "full"  # restored even after an exception
    with pytest.raises(UnsupportedError, match="JR-defended"), jr_mode(toy_late, "bpda"):
        pass
    f = copy.deepcopy(model.fusion).double()
    with torch.no_grad():
        z = {m: v.double() for m, v in model.encode(x).items()}
    v = torch.randn(12, toy_late.num_classes, dtype=D, generator=torch.Generator().manual_seed(0))
    za = z["audio"].clone().requires_grad_(True)
    with f.using("bpda"):
        fused, aux = f({**z, "audio": za})
        assert aux["jr_mode"] == "bpda"
        (g_bpda,) = torch.autograd.grad((fused * v).sum(), za)
        uni = f.unimodal_logits(z)
        p0 = (sum(uni.values()) - 2 * f.log_prior).softmax(1)
        w = jr_weights(p0, f.gamma)  # W held fixed: ∂/∂z_audio = A_audioᵀ Wᵀ v
        expected = ((w.transpose(1, 2) @ v[:, :, None])[:, :, 0]) @ f.heads["audio"].weight
    torch.testing.assert_close(g_bpda, expected, atol=1e-10, rtol=1e-8)
    fused, _ = f({**z, "audio": za})
    (g_full,) = torch.autograd.grad((fused * v).sum(), za)
    assert (g_full - g_bpda).abs().max() > 1e-6  # the full mode differentiates through the solve


@pytest.mark.parametrize("jacobian", ["logits", "features"])
def test_full_white_box_gradient_matches_finite_differences(toy_late, batch, jacobian):
    x, _ = batch
    f = copy.deepcopy(build_jr_model(toy_late, 1e-2, jacobian).fusion).double()
    with torch.no_grad():
        z = {m: v[:3].double() for m, v in toy_late.encode(x).items()}
        z["image"] = z["image"] * 4  # nearly one-hot fused point for some rows
    zs = tuple(z[m].clone().requires_grad_(True) for m in f.names)
    assert torch.autograd.gradcheck(lambda *t: f(dict(zip(f.names, t, strict=True)))[0], zs)


def test_input_mode_white_box_gradient_matches_finite_differences(toy_late, batch):
    x, _ = batch
    model = copy.deepcopy(build_jr_model(toy_late, 0.05, "input")).double()
    xi, xt = x["image"][:2].double(), x["text"][:2]
    xa = x["audio"][:2].double().requires_grad_(True)

    def f(a):
        z = {"image": model.encode_one("image", xi), "audio": model.encode_one("audio", a)}
        return model.logits_from_embeddings({**z, "text": model.encode_one("text", xt)})

    assert torch.autograd.gradcheck(f, (xa,), fast_mode=True, atol=1e-6)


def test_input_mode_finds_inputs_of_row_blocks_and_refuses_foreign_embeddings(toy_late, batch, tmp_path):
    x, _ = batch
    model = build_jr_model(toy_late, 0.05, "input")
    with torch.no_grad():
        z = model.encode(x)
        full = model.logits_from_embeddings(z)
        part = model.logits_from_embeddings({m: v[4:8] for m, v in z.items()})
        torch.testing.assert_close(part, full[4:8], atol=1e-5, rtol=1e-5)
        copied = model.logits_from_embeddings({**z, "audio": z["audio"].clone()})  # a copy: matched by value
        torch.testing.assert_close(copied, full)
        with pytest.raises(UnsupportedError, match="not produced by this model's encoder"):
            model.logits_from_embeddings({**z, "audio": z["audio"] + 1e-3})
    # checkpoints round-trip the weights and γ; loading re-binds the hooks
    path = mr.models.save(model, tmp_path / "jr_input.pt")
    loaded = mr.models.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    bind_input_jacobians(loaded)  # idempotent: one hook per encoder
    assert sum(type(h).__name__ == "_RecordHook" for h in loaded.encoders["audio"]._forward_hooks.values()) == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    twin = copy.deepcopy(model)  # hooks follow the copy
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))


@pytest.mark.parametrize("jacobian", ["logits", "features"])
def test_checkpoint_round_trip(toy_late, toy_data, batch, tmp_path, jacobian):
    x, _ = batch
    model = JR(gamma=0.1, jacobian=jacobian).apply(toy_late, toy_data)
    path = mr.models.save(model, tmp_path / "jr.pt")
    loaded = mr.models.load(path)
    assert isinstance(loaded.fusion, JRFusion) and loaded.fusion.gamma == 0.1 and loaded.fusion.jacobian == jacobian
    assert loaded.config["defense"]["name"] == "jr" and loaded.defense_info["gamma"] == 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_attacks_go_through_jr_in_every_mode(toy_late, toy_data):
    data = toy_data
    test = data.test.subset(list(range(48)))
    model = build_jr_model(toy_late, 1e-2, "features")
    pgd = mr.attacks.create("pgd", modalities="audio", eps=0.1, steps=5)
    transfer = Transfer(pgd, toy_late)
    res = mr.evaluate(model, test, [pgd, transfer], seed=0, checks=False)
    with jr_mode(model, "bpda"):
        res_b = mr.evaluate(model, test, [pgd], seed=0, checks=False)
    again = mr.evaluate(model, test, [pgd, transfer], seed=0, checks=False)
    for k in res.samples:
        np.testing.assert_array_equal(res.samples[k], again.samples[k])  # deterministic
    clean = res.accuracy()
    for acc in (res.accuracy(pgd.id), res.accuracy(transfer.id), res_b.accuracy(pgd.id)):
        assert acc <= clean
    assert f"info/{transfer.id}/source/success" in res.samples
    # the transferred batch is exactly the source attack's batch
    x, y = test.batch(torch.arange(16))
    a = transfer.apply(model, x, y, ctx(data, 5))
    b = pgd.apply(toy_late, x, y, ctx(data, 5))
    assert torch.equal(a.x["audio"], b.x["audio"]) and a.x["image"] is x["image"]


def test_transfer_ids_embeddings_and_errors(toy_late, toy_data):
    data = toy_data
    other = mr.models.create("late", data.spec, seed=5)  # untrained: other weights, other embedding table
    pgd = mr.attacks.create("pgd", modalities="text", eps=0.5, steps=2, token_surface="embedding")
    t1, t2 = Transfer(pgd, toy_late), Transfer(pgd, other)
    assert t1.id != t2.id and "source=late#" in t1.id and pgd.id in t1.id
    assert Transfer(pgd, toy_late, source_name="undefended").params()["source"] == "undefended"
    x, y = data.test.batch(torch.arange(8))
    jr_model = build_jr_model(toy_late, 0.1)
    out = t1.apply(jr_model, x, y, ctx(data, 1))  # same embedding table: the adversarial embeddings as they are
    src = pgd.apply(toy_late, x, y, ctx(data, 1))
    assert torch.equal(out.embeddings["text"], src.embeddings["text"])
    moved = t1.apply(other, x, y, ctx(data, 1))  # another table: the perturbation δ is transferred
    with torch.no_grad():
        delta_t = moved.embeddings["text"] - other.embed("text", x["text"])
        delta_s = src.embeddings["text"] - toy_late.embed("text", x["text"])
    torch.testing.assert_close(delta_t, delta_s, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="condition"):
        Transfer("pgd", toy_late)
    with pytest.raises(InputError, match="MultimodalModel"):
        Transfer(pgd, "late")
    with pytest.raises(InputError, match="already a transfer"):
        Transfer(t1, toy_late)
    audio_only = mr.models.create("unimodal", data.spec, modality="audio")
    with pytest.raises(InputError, match="lacks"):
        Transfer(mr.attacks.create("pgd", modalities="image", eps=0.1), toy_late).check(audio_only)


def test_bad_inputs(toy_late, toy_data):
    spec = toy_data.spec
    concat = mr.models.create("concat", spec)
    with pytest.raises(InputError, match="late-fusion"):
        JR(gamma=0.1).apply(concat, toy_data)
    for bad in (0, -1.0, float("nan"), "big"):
        with pytest.raises(InputError, match="gamma"):
            JR(gamma=bad)
    with pytest.raises(InputError, match="gamma"):
        JRFusion(["a", "b"], {"a": 2, "b": 2}, 3, gamma=0.0)
    with pytest.raises(InputError, match="jacobian"):
        JR(jacobian="hessian")
    with pytest.raises(InputError, match="precision"):
        JR(precision="float16")
    with pytest.raises(InputError, match="gammas"):
        JR(gammas=[])
    with pytest.raises(InputError, match="gamma"):
        JR(gammas=[0.1, -1])
    with pytest.raises(InputError, match="select_eps"):
        JR(select_eps=0)
    with pytest.raises(InputError, match="max_clean_drop"):
        JR(max_clean_drop=2)
    with pytest.raises(InputError, match="select_steps"):
        JR(select_steps=0)
    with pytest.raises(InputError, match="only"):
        JR(gamma=1.0).apply(mr.models.create("unimodal", spec, modality="audio"), toy_data)
    defended = JR(gamma=1.0).apply(toy_late, toy_data)
    with pytest.raises(InputError, match="already JR-defended"):
        JR(gamma=1.0).apply(defended, toy_data)
    with pytest.raises(InputError, match="unknown modalities"):
        JR(select_eps={"video": 0.1}).check(toy_late)
    with pytest.raises(InputError, match="set_gamma"):
        set_gamma(toy_late, 1.0)


def test_fixed_gamma_apply(toy_late, toy_data, batch):
    x, _ = batch
    jr = JR(gamma=0.1, jacobian="features")
    model = jr.apply(toy_late, toy_data)
    assert model is not toy_late and not model.training
    params = {"gamma": 0.1, "jacobian": "features", "precision": "float64"}
    assert model.config["defense"] == {"name": "jr", "params": params}
    assert model.config["name"] == "late+jr" and model.config["fusion_kwargs"]["gamma"] == 0.1
    assert jr.id == "jr[gamma=0.1,jacobian=features,precision=float64]"
    with torch.no_grad():
        torch.testing.assert_close(model(x), build_jr_model(toy_late, 0.1, "features")(x))


def test_auto_gamma_selection_is_recorded_deterministic_and_follows_the_criterion(toy_late, toy_data):
    jr = JR(select_samples=32, select_steps=2, select_eps=0.1, max_clean_drop=0.05)
    a = jr.apply(toy_late, toy_data, seed=3)
    b = jr.apply(toy_late, toy_data, seed=3)
    sel = a.defense_info["selection"]
    assert sel == b.defense_info["selection"]
    gammas = [r["gamma"] for r in sel["sweep"]]
    assert gammas[:5] == [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    assert gammas[5:] == sel["extended"] == [1e-3 / 10**k for k in range(1, len(sel["extended"]) + 1)]
    assert sel["attacks"] == [p.id for p in jr.selection_attacks(toy_late)] and len(sel["attacks"]) == 2
    for r in sel["sweep"]:
        assert r["robust_val"] <= min(r["robust_val/transfer"], r["robust_val/bpda"], r["robust_val/full"])
        assert r["robust_val"] <= r["clean_val"]
    assert sel["clean_drop_cap"] == max(0.05, 1 / 32)
    ok = [r for r in sel["sweep"] if r["clean_val"] >= sel["undefended"]["clean_val"] - sel["clean_drop_cap"] - 1e-12]
    best = max(ok, key=lambda r: (r["robust_val"], r["gamma"])) if ok else None
    assert all(r["apply_to"] == "all" for r in sel["sweep"]) and sel["apply_to"] == "all"
    if best is not None:
        assert sel["gamma"] == best["gamma"]
    assert a.fusion.gamma == sel["gamma"] == a.defense_info["gamma"]
    assert a.config["defense"]["params"]["gamma"] == "auto"


# ---------------------------------------------------------------------------------------- apply_to


@pytest.mark.parametrize("jacobian", MODES)
def test_weighted_subset_matches_brute_force(toy_late, batch, jacobian):
    x, _ = batch
    m = toy_late.modalities[-1]
    model = build_jr_model(toy_late, 0.05, jacobian, apply_to=[m])
    with torch.no_grad():
        out = model(x)
        every = build_jr_model(toy_late, 0.05, jacobian)(x)
    ref = brute_force_logits(toy_late, x, 0.05, jacobian, apply_to=[m])
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(out, every, atol=1e-4)  # weighting one modality is not weighting all
    with torch.no_grad():  # naming every modality is the default fusion (one solve vs one per modality)
        named = build_jr_model(toy_late, 0.05, jacobian, apply_to=list(toy_late.modalities))(x)
    torch.testing.assert_close(named, every, atol=1e-5, rtol=1e-5)


def test_weighted_certificate_is_sound_and_counts_only_weighted_modalities(toy_late, batch):
    x, _ = batch
    for g in (1e-3, 1e-1, 10.0):
        for apply_to in ([toy_late.modalities[0]], None):
            model = build_jr_model(toy_late, g, "logits", apply_to=apply_to)
            with torch.no_grad():
                z = model.encode(x)
                sure = model.fusion.unchanged_certificate(z)
                fused, aux = model.fusion(z)
            kept = fused.argmax(1) == aux["undefended_logits"].argmax(1)
            assert bool(kept[sure].all())
    one = build_jr_model(toy_late, 1e-3, "logits", apply_to=[toy_late.modalities[0]])
    every = build_jr_model(toy_late, 1e-3, "logits")
    with torch.no_grad():
        assert bool((one.fusion.unchanged_certificate(one.encode(x))
                     >= every.fusion.unchanged_certificate(every.encode(x))).all())


def test_weighted_survives_a_checkpoint_and_set_apply_to(toy_late, batch, tmp_path):
    from mmrobust.defenses.jr import set_apply_to

    x, _ = batch
    m = toy_late.modalities[0]
    model = build_jr_model(toy_late, 0.01, "logits", apply_to=[m])
    loaded = mr.models.load(mr.models.save(model, tmp_path / "jrw.pt"))
    assert loaded.fusion.apply_to == (m,) and loaded.config["fusion_kwargs"]["apply_to"] == [m]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    set_apply_to(loaded, None)
    assert loaded.fusion.apply_to is None and "apply_to" not in loaded.config["fusion_kwargs"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), build_jr_model(toy_late, 0.01, "logits")(x))
    with pytest.raises(InputError, match="set_apply_to"):
        set_apply_to(toy_late, None)


def test_weighted_bad_values_are_refused(toy_late):
    names = list(toy_late.modalities)
    for bad in (["video"], [], "image", [names[0], names[0]]):
        with pytest.raises(InputError, match="apply_to"):
            JRFusion(names, {m: 4 for m in names}, 3, apply_to=bad)
    with pytest.raises(InputError, match="apply_to must be one of"):
        JR(apply_to=[1])
    with pytest.raises(InputError, match="unknown modalities \\['some'\\]"):
        JR(gamma=0.1, apply_to="some").check(toy_late)
    assert JR(gamma=0.1, apply_to=names[0]).apply_to == (names[0],)
    with pytest.raises(InputError, match="twice"):
        JR(apply_to=[names[0], names[0]])
    with pytest.raises(InputError, match="gamma='auto'"):
        JR(gamma=0.1, apply_to="select")
    with pytest.raises(InputError, match="extend"):
        JR(extend=-1)
    with pytest.raises(InputError, match="unknown modalities"):
        JR(gamma=0.1, apply_to=["video"]).apply(toy_late, None)


def test_fixed_gamma_weighted_apply_records_the_form(toy_late, toy_data):
    m = toy_late.modalities[1]
    jr = JR(gamma=0.1, apply_to=[m])
    model = jr.apply(toy_late, toy_data)
    assert model.defense_info["apply_to"] == [m] and model.fusion.apply_to == (m,)
    assert jr.id == f"jr[gamma=0.1,jacobian=logits,precision=float64,apply_to={m}]"
    assert JR(gamma=0.1).id == "jr[gamma=0.1,jacobian=logits,precision=float64]"  # ids of old runs unchanged
    again = jr.rebuild(toy_late, model.defense_info)
    assert again.fusion.apply_to == (m,)


def test_select_sweeps_every_form_and_extends_the_lower_edge(toy_late, toy_data):
    jr = JR(gammas=[1e-3, 1e-1], apply_to="select", extend=2, select_samples=24, select_steps=2, select_eps=0.1,
            max_clean_drop=0.5)
    model = jr.apply(toy_late, toy_data, seed=1)
    sel = model.defense_info["selection"]
    forms = ["all", *toy_late.modalities]
    gammas = sorted({r["gamma"] for r in sel["sweep"]}, reverse=True)
    assert sorted(r["apply_to"] for r in sel["sweep"]) == sorted(forms * len(gammas))
    assert sel["extended"] == [1e-3 / 10**k for k in range(1, len(sel["extended"]) + 1)]
    assert len(sel["extended"]) == 2 or sel["gamma"] != min(gammas)  # stopped: the choice is interior
    ok = [r for r in sel["sweep"] if r["clean_val"] >= sel["undefended"]["clean_val"] - sel["clean_drop_cap"] - 1e-12]
    best = max(ok, key=lambda r: (r["robust_val"], r["gamma"], r["apply_to"] == "all"))
    assert (sel["gamma"], sel["apply_to"]) == (best["gamma"], best["apply_to"])
    assert model.fusion.gamma == sel["gamma"]
    assert (model.fusion.apply_to or ("all",)) == tuple(sel["apply_to"].split("/"))
    assert sel["edge"] in ("interior", "lower edge (extend exhausted)") or sel["edge"].startswith("upper edge")
    none = JR(gammas=[1e-3], extend=0, select_samples=8, select_steps=1).apply(toy_late, toy_data)
    assert none.defense_info["selection"]["extended"] == [] and none.defense_info["selection"]["edge"] == "only value"


@pytest.mark.parametrize("apply_to", [None, "one"])
def test_input_mode_survives_evaluate_with_cached_and_gathered_embeddings(toy_late, toy_data, apply_to):
    """mr.evaluate hands JR gathered copies of cached clean embeddings (PGD steps only unbroken rows).

    The fusion must trace them back to their inputs (it once raised "was not produced by this model's
    encoder"), and the gram it builds from them is the one at the sample's own input.
    """
    test = toy_data.test.subset(list(range(40)))
    m = next(n for n in toy_late.modalities if not toy_late.spec[n].is_tokens)
    model = build_jr_model(toy_late, 0.1, "input", apply_to=None if apply_to is None else [m])
    pgd = mr.attacks.create("pgd", modalities=m, eps=0.3, steps=4)
    for mode in ("bpda", "full"):
        with jr_mode(model, mode):
            res = mr.evaluate(model, test, [pgd], checks=False)
        broken = ~res.correct(pgd.id) & res.correct()
        assert 0 < broken.sum() < res.correct().sum()  # some rows stop early: the attack gathers the rest
    x, _ = test.batch(torch.arange(len(test)))
    with torch.no_grad():
        z = model.encode(x)
        rows = torch.tensor([5, 1, 5, 30])
        gathered = {k: v[rows] for k, v in z.items()}  # copies, as an attack's subset of the clean cache
        fused_rows, _ = model.fusion(gathered)
        fused_all, _ = model.fusion(z)
    torch.testing.assert_close(fused_rows, fused_all[rows])


def test_equal_rows_finds_gathered_copies_and_refuses_strangers():
    from mmrobust.models.fusion.jr import _equal_rows

    out = torch.randn(7, 5)
    idx = torch.tensor([4, 0, 4, 6])
    assert torch.equal(_equal_rows(out[idx].clone(), out, chunk=3), idx)
    other = out[idx].clone()
    other[2, 1] += 1e-6
    assert _equal_rows(other, out) is None
    assert _equal_rows(out[idx].double(), out) is None
