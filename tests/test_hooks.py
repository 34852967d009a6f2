"""Declared hooks: foreign modules in MultiBench's and TorchMultimodal's styles get every method.

The modules are written here the way those projects write them (no dependency on either):

* ``MBNet`` — MultiBench's ``MMDL``: ``encoders`` (a ModuleList in input order), ``fuse`` (tensor
  fusion over a list), ``head``; ``forward(inputs: list)``; the text encoder is a GRU over token
  embeddings (``encoders.2.embedding``);
* ``TMNet`` — TorchMultimodal's late-fusion architecture: ``encoders`` (a ModuleDict), ``fusion_module``
  (concatenation over a dict, sorted keys), ``head_module``; ``forward(modalities: dict)``; its audio
  encoder returns (N, 2, 4), which the adapter flattens for mmrobust and restores for the fusion;
* ``LateNet`` — a positional ``forward(image, audio, text)`` summing per-modality linear heads
  (declared late fusion, explicit paths).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import mmrobust as mr
from conftest import ctx
from mmrobust.bench.config import ModelConfig, validate_config
from mmrobust.defenses import DEFENSES
from mmrobust.errors import CacheError, ConfigError, InputError, UnsupportedError
from mmrobust.models import HookedAdapter, Hooks, ModelAdapter
from mmrobust.models.checkpoint import load_checkpoint, save_checkpoint
from mmrobust.models.fusion.ooo import has_odd_one_out

ORDER = ["image", "audio", "text"]
K = 4
EPS = {"image": 0.1, "audio": 0.1, "text": 0.5}
EMB = {"text": "encoders.2.embedding"}


# ------------------------------------------------------------------------------------ the user modules
def conv_encoder(freq: int, d: int) -> nn.Sequential:
    """LeNet-style: conv, ReLU, max-pool, flatten, linear, ReLU ((N, 1, 8, freq) -> (N, d))."""
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 4 * (freq // 2), d), nn.ReLU())


class GRUText(nn.Module):
    """Token ids -> embedding -> GRU -> mean over the non-pad positions (pad id 0)."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.embedding = nn.Embedding(12, 5, padding_idx=0)
        self.gru = nn.GRU(5, d, batch_first=True)

    def forward(self, tokens):
        out, _ = self.gru(self.embedding(tokens))
        keep = (tokens != 0).unsqueeze(-1).float()
        return (out * keep).sum(1) / keep.sum(1).clamp_min(1.0)


class TensorFusion(nn.Module):
    def forward(self, zs):
        n = zs[0].shape[0]
        out = torch.ones(n, 1)
        for z in zs:
            out = (out[:, :, None] * torch.cat([torch.ones(n, 1), z], 1)[:, None, :]).reshape(n, -1)
        return out


class MBNet(nn.Module):
    """MultiBench's MMDL layout."""

    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleList([conv_encoder(8, 4), conv_encoder(16, 4), GRUText(4)])
        self.fuse = TensorFusion()
        self.head = nn.Sequential(nn.Linear(125, 16), nn.ReLU(), nn.Linear(16, K))

    def forward(self, inputs):
        out = self.fuse([e(x) for e, x in zip(self.encoders, inputs, strict=True)])
        return self.head(out[0] if isinstance(out, tuple) else out)


class PairAudio(nn.Module):
    """An encoder whose output is not a vector: (N, 2, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = conv_encoder(16, 8)

    def forward(self, x):
        return self.net(x).reshape(-1, 2, 4)


class ConcatFusionModule(nn.Module):
    def forward(self, embeddings):
        return torch.cat([embeddings[k].flatten(1) for k in sorted(embeddings)], dim=-1)


class TMNet(nn.Module):
    """TorchMultimodal's LateFusion layout (encoders ModuleDict, fusion_module, head_module)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({"audio": PairAudio(), "image": conv_encoder(8, 6), "text": GRUText(6)})
        self.fusion_module = ConcatFusionModule()
        self.head_module = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, K))

    def forward(self, modalities):
        return self.head_module(self.fusion_module({k: e(modalities[k]) for k, e in self.encoders.items()}))


class LateNet(nn.Module):
    """Per-modality linear heads summed: forward(image, audio, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.img, self.aud, self.txt = conv_encoder(8, 6), conv_encoder(16, 6), GRUText(6)
        self.head_img, self.head_aud, self.head_txt = nn.Linear(6, K), nn.Linear(6, K), nn.Linear(6, K)

    def forward(self, image, audio, text):
        return self.head_img(self.img(image)) + self.head_aud(self.aud(audio)) + self.head_txt(self.txt(text))


LATE_HOOKS = Hooks(encoders={"image": "img", "audio": "aud", "text": "txt"},
                   heads={"image": "head_img", "audio": "head_aud", "text": "head_txt"},
                   embeddings={"text": "txt.embedding"})


def build(style: str, spec):
    torch.manual_seed(0)
    if style == "multibench":
        return mr.models.adapt(MBNet(), spec, ORDER, hooks={"preset": "multibench", "embeddings": EMB})
    if style == "torchmultimodal":
        return mr.models.adapt(TMNet(), spec, ORDER, hooks=Hooks.torchmultimodal(
            ORDER, embeddings={"text": "encoders.text.embedding"}))
    return mr.models.adapt(LateNet(), spec, ORDER, hooks=LATE_HOOKS)


STYLES = ("multibench", "torchmultimodal", "late")


@pytest.fixture(scope="module")
def trained(toy_data):
    out = {}
    for style in STYLES:
        model = build(style, toy_data.spec)
        mr.train(model, toy_data, epochs=8, lr=1e-2, quiet=True)
        out[style] = model.eval()
    return out


# ------------------------------------------------------------------------------------ the adapter itself
def test_presets_and_declarations(toy_data):
    spec = toy_data.spec
    assert Hooks.multibench(ORDER) == Hooks(encoders={"image": "encoders.0", "audio": "encoders.1",
                                                      "text": "encoders.2"}, fuse="fuse", head="head", fuse_call="list")
    mb, tm = MBNet(), TMNet()
    assert Hooks.preset("auto", mb, ORDER) == Hooks.multibench(ORDER)
    assert Hooks.preset("auto", tm, ORDER) == Hooks.torchmultimodal(ORDER)
    a = mr.models.adapt(mb, spec, ORDER, hooks="auto")
    assert isinstance(a, HookedAdapter) and isinstance(a, ModelAdapter) and a.call == "list"
    assert a.config["hooks"] == {"encoders": {"image": "encoders.0", "audio": "encoders.1", "text": "encoders.2"},
                                 "fuse_call": "list", "fuse": "fuse", "head": "head"}
    # parts given as submodule objects become their paths
    b = mr.models.adapt(mb, spec, ORDER, call="list", hooks=Hooks(
        encoders=dict(zip(ORDER, mb.encoders, strict=True)), fuse=mb.fuse, head=mb.head))
    assert b.config["hooks"]["encoders"] == a.config["hooks"]["encoders"]
    # the state dict holds each part once; the module's parameters are the adapter's (shared objects)
    assert {id(p) for p in a.parameters()} == {id(p) for p in mb.parameters()}
    assert sorted(a.state_dict()) == sorted(f"encoders.{m}.part.{k}" for m, i in zip(ORDER, range(3), strict=True)
                                            for k in mb.encoders[i].state_dict()) + sorted(
        f"head.{k}" for k in mb.head.state_dict())
    assert a.module is mb and not a.is_late and not a.supports_drop
    assert a.hook_error("fuse") is None and a.hook_error("embeddings", "text") is not None


@pytest.mark.parametrize("style", STYLES)
def test_logits_through_the_parts_equal_the_module(style, trained, toy_batch):
    model = trained[style]
    x, _ = toy_batch
    net = model.module
    with torch.no_grad():
        if style == "multibench":
            own = net([x[m] for m in ORDER])
        elif style == "torchmultimodal":
            own = net(dict(x))
        else:
            own = net(*[x[m] for m in ORDER])
        torch.testing.assert_close(model(x), own, atol=1e-6, rtol=1e-6)
        z = model.encode(x)
        assert all(t.dim() == 2 for t in z.values())  # (N, 2, 4) audio of TMNet flattened to (N, 8)
        torch.testing.assert_close(model.logits_from_embeddings(z), own, atol=1e-6, rtol=1e-6)
        if style == "late":
            uni = model.unimodal_logits(x)
            torch.testing.assert_close(sum(uni.values()), own, atol=1e-6, rtol=1e-6)
            no_audio = model({m: x[m] for m in ("image", "text")}, drop=["audio"])
            torch.testing.assert_close(no_audio, uni["image"] + uni["text"], atol=1e-6, rtol=1e-6)
    if style == "torchmultimodal":
        assert z["audio"].shape[1] == 8 and model.fusion.shapes["audio"] == (2, 4)


def test_training_trains_the_module_and_declared_parts_only(toy_data):
    model = build("multibench", toy_data.spec)
    net = model.module
    before = copy.deepcopy(net.state_dict())
    res = mr.train(model, toy_data, epochs=2, quiet=True)
    assert res.best_epoch >= 1
    after = net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the user's own module trained
    # declared trainable parts: only the head moves, every flag is restored
    torch.manual_seed(0)
    net = MBNet()
    frozen = mr.models.adapt(net, toy_data.spec, ORDER, hooks={"preset": "multibench", "trainable": ["head"]})
    assert {id(p) for p in frozen.trainable_parameters()} == {id(p) for p in net.head.parameters()}
    before = copy.deepcopy(net.state_dict())
    mr.train(frozen, toy_data, epochs=1, quiet=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]) != k.startswith("head.") or "running" in k or "num_batches" in k, k
    assert all(p.requires_grad for p in net.parameters())


def test_checkpoints_of_your_module(trained, toy_data, toy_batch, tmp_path):
    model = trained["multibench"]
    path = save_checkpoint(model, tmp_path / "mb.pt")
    with pytest.raises(CacheError, match=r"your own module .*mr\.models\.load_weights\(model, path\)"):
        load_checkpoint(path)
    fresh = build("multibench", toy_data.spec)
    mr.models.load_weights(fresh, path)
    x, _ = toy_batch
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


# ------------------------------------------------------------------------------------ attacks
@pytest.mark.parametrize(("name", "kw"), [("fgsm", {}), ("pgd", {"steps": 5, "random_start": True, "restarts": 2}),
                                          ("apgd", {"steps": 5, "loss": "cw"})])
def test_attacks_equal_the_plain_adapter(name, kw, trained, toy_data, toy_batch):
    """The same module behind both adapters: the same adversarial examples (to float rounding)."""
    hooked = trained["multibench"]
    plain = mr.models.adapt(hooked.module, toy_data.spec, ORDER, call="list")
    x, y = toy_batch
    atk = mr.attacks.create(name, modalities=["image", "audio"], eps={"image": 0.1, "audio": 0.1}, **kw)
    a, b = atk.apply(hooked, x, y, ctx(toy_data, 4)), atk.apply(plain, x, y, ctx(toy_data, 4))
    for m in ("image", "audio"):
        assert float((a.x[m] - x[m]).abs().max()) > 0.01
        assert float((a.x[m] - b.x[m]).abs().max()) <= 1e-6
    assert a.x["text"] is x["text"] and torch.equal(a.info["success"], b.info["success"])
    each = mr.attacks.create("pgd", modalities="each", eps=EPS, steps=3, token_surface="embedding")
    res = mr.evaluate(hooked, toy_data.test, [each, mr.attacks.create("missing", modalities="audio", fill="mean")],
                      checks=False)
    ref = mr.evaluate(plain, toy_data.test, [mr.attacks.create("missing", modalities="audio", fill="mean")],
                      checks=False)
    assert np.array_equal(res.samples["pred/missing[audio|fill=mean]"], ref.samples["pred/missing[audio|fill=mean]"])
    assert res.accuracy(each.id) < res.accuracy()


def test_hooks_encode_the_clean_modalities_once(trained, toy_data, toy_batch):
    """Why declared hooks are faster: a single-source attack runs the other encoders once per batch, not per step."""
    hooked = trained["multibench"]
    plain = mr.models.adapt(hooked.module, toy_data.spec, ORDER, call="list")
    text_encoder = hooked.module.encoders[2]
    calls = []
    handle = text_encoder.register_forward_hook(lambda *a: calls.append(1))
    x, y = toy_batch
    atk = mr.attacks.create("pgd", modalities="image", eps=0.1, steps=6)
    try:
        counts = {}
        for label, model in (("hooked", hooked), ("plain", plain)):
            calls.clear()
            atk.apply(model, x, y, ctx(toy_data))
            counts[label] = len(calls)
    finally:
        handle.remove()
    assert counts["hooked"] == 1  # the clean text embedding, computed once
    assert counts["plain"] >= 6  # the whole module at every step


def test_text_attacks_go_through_the_declared_embedding_layer(trained, toy_data, toy_batch):
    model = trained["multibench"]
    x, y = toy_batch
    enc = model.module.encoders[2]
    emb = model.embed("text", x["text"])
    assert emb.shape == (len(y), 6, 5) and model.token_dim("text") == 5
    # the encoder run from given embeddings is the user's code on them (GRU, masked mean)
    g = torch.Generator().manual_seed(1)
    moved = (emb + 0.3 * torch.randn(emb.shape, generator=g)).requires_grad_(True)
    z = model.encode_embedded("text", x["text"], moved)
    out, _ = enc.gru(moved)
    keep = (x["text"] != 0).unsqueeze(-1).float()
    torch.testing.assert_close(z, (out * keep).sum(1) / keep.sum(1).clamp_min(1.0))
    (grad,) = torch.autograd.grad(z.sum(), moved)
    assert float(grad.abs().sum()) > 0 and torch.equal(grad[x["text"] == 0], torch.zeros_like(grad[x["text"] == 0]))
    atk = mr.attacks.create("pgd", modalities="text", eps=0.5, steps=5, token_surface="embedding")
    adv = atk.apply(model, x, y, ctx(toy_data))
    assert adv.x["text"] is x["text"]
    delta = adv.embeddings["text"] - emb
    assert float(delta.detach().abs().max()) <= 0.5 + 1e-6 and float(delta.detach().abs().max()) > 0.1
    assert torch.equal(delta[x["text"] == 0], torch.zeros_like(delta[x["text"] == 0]))  # padding untouched
    with torch.no_grad():
        wrong = model(x, embeddings=adv.embeddings).argmax(1) != y
    assert torch.equal(wrong, adv.info["success"]) and bool(wrong.any())


def _attack(name: str, source):
    """Each registered condition on the image (text through its embeddings where it is a gradient attack)."""
    pgd = mr.attacks.create("pgd", modalities="image", eps=0.1, steps=3)
    return {
        "apgd": lambda: mr.attacks.create("apgd", modalities=["image", "text"], eps={"image": 0.1, "text": 0.5},
                                          steps=3, token_surface="embedding"),
        "apgdt": lambda: mr.attacks.create("apgdt", modalities="image", eps=0.1, steps=3, targets=2),
        "auto": lambda: mr.attacks.create("auto", modalities="image", eps=0.1, version="fast", attacks=["apgd-ce"]),
        "bpda": lambda: mr.attacks.create("bpda", attack=pgd),
        "corruption": lambda: mr.attacks.create("corruption", modalities="image", kind="gaussian_noise", severity=3),
        "decoupling": lambda: mr.attacks.create("decoupling", modalities="image", rho_max=0.2, steps=2),
        "evade": lambda: mr.attacks.create("evade", modalities="image", eps=0.1, steps=3),
        "fgsm": lambda: mr.attacks.create("fgsm", modalities="text", eps=0.5, token_surface="embedding"),
        "missing": lambda: mr.attacks.create("missing", modalities="audio", fill="mean"),
        "pgd": lambda: mr.attacks.create("pgd", modalities="each", eps=EPS, steps=3, token_surface="embedding"),
        "square": lambda: mr.attacks.create("square", modalities="image", eps=0.1, queries=20),
        "transfer": lambda: mr.attacks.create("transfer", attack=pgd, source=source),
        "universal": lambda: mr.attacks.create("universal", modalities="audio", eps=0.1, epochs=1),
        "worst_case": lambda: mr.attacks.create("worst_case", variants=[pgd, mr.attacks.create(
            "fgsm", modalities="image", eps=0.1)]),
    }[name]()


#: Conditions that need a fusion of a kind: JR's BPDA mode (evade is plain PGD without a detector).
NEEDS = {"bpda": "no BPDA mode"}


@pytest.mark.parametrize("name", mr.attacks.names())
def test_every_attack_runs_on_a_declared_model(name, trained, toy_data):
    model, source = trained["torchmultimodal"], trained["multibench"]
    cond = _attack(name, source)
    sub = toy_data.test.subset(list(range(48)))
    if name in NEEDS:
        with pytest.raises(UnsupportedError, match=NEEDS[name]):
            mr.evaluate(model, sub, [cond], checks=False)
        return
    res = mr.evaluate(model, sub, [cond], checks=False)
    assert res.n == 48 and 0.0 <= res.accuracy(cond.id) <= 1.0
    if cond.family == "attack" and name not in ("universal", "transfer"):  # not per-sample worst cases
        assert res.accuracy(cond.id) <= res.accuracy() + 1e-9


# ------------------------------------------------------------------------------------ every method
TINY = {
    "adversarial_training": {"eps": EPS, "modalities": "random", "steps": 2, "epochs": 1},
    "crmt": {"epochs": 1, "radius_epochs": 1, "lipschitz_samples": 32},
    "jr": {"select_samples": 16, "select_steps": 2, "gammas": [0.1, 1.0]},
    "mixup": {"epochs": 2, "every": 1, "pairs_per_class": 20, "k": 3},
    "plain_mixup": {"epochs": 1},
    "modality_dropout": {"epochs": 1},
    "ooo": {"eps": EPS, "epochs": 1, "attack_steps": 2, "select_samples": 16},
}
WEIGHTS_ONLY = ("adversarial_training", "mixup", "plain_mixup", "modality_dropout")  # run on the first two styles


@pytest.mark.parametrize("name", DEFENSES.names())
@pytest.mark.parametrize("style", STYLES)
def test_every_defence_that_applies_runs(style, name, trained, toy_data):
    if style == "late" and name in WEIGHTS_ONLY:
        pytest.skip("weight-only defences are walked on the two intermediate-fusion styles")
    model = trained[style]
    defense = mr.defenses.create(name, **TINY[name])
    if defense.needs_late_fusion and not model.is_late:  # what cannot apply is refused up front, naming the hook
        with pytest.raises(InputError, match=r"needs a late-fusion model.*declare per-modality heads.*heads="):
            defense.check(model)
        return
    before = copy.deepcopy(model.state_dict())
    defended = defense.apply(model, toy_data, seed=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input model is untouched
    assert isinstance(defended, mr.models.MultimodalModel) and defended.config["defense"]["name"] == name
    assert has_odd_one_out(defended) == (name == "ooo")
    sub = toy_data.test.subset(list(range(32)))
    atk = defense.adaptive(mr.attacks.create("pgd", modalities="each", eps=EPS, steps=2, token_surface="embedding"),
                           model, model=defended)
    res = mr.evaluate(defended, sub, [atk], checks=False)
    assert res.accuracy(atk.id) <= res.accuracy()
    # what the runner does with a saved defended model of your module: rebuild the structure, load the weights
    rebuilt = defense.rebuild(model, defended.defense_info)
    rebuilt.load_state_dict(defended.state_dict())
    x, _ = sub.batch(torch.arange(len(sub)))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), defended(x))


@pytest.mark.parametrize("style", STYLES)
def test_geometry_preference_and_minimal_eps(style, trained, toy_data):
    model = trained[style]
    rep = mr.metrics.geometry_report(model, toy_data.test, pairs_per_class=20, k=3)
    assert set(rep.spaces) == {"fused", *ORDER}
    assert rep.spaces["fused"].dim == model.fusion.out_dim and rep.spaces["image"].dim == model.fusion.dims["image"]
    assert all(0.0 <= s.convexity.macro <= 1.0 for s in rep.spaces.values())
    pref = mr.analysis.modality_preference(model, toy_data.test, eps=EPS, steps=2)
    assert pref.preferred in ORDER and pref.most_vulnerable in ORDER
    assert all(np.isfinite(r["mean_margin"]) == (style == "late") for r in pref.rows)
    x, y = toy_data.test.batch(torch.arange(16))
    r = mr.analysis.minimal_eps(model, x, y, "fgsm", modalities="audio", eps_max=1.0, iterations=4)
    assert r.upper.shape == (16,)


def test_certificates_of_a_declared_late_fusion(trained, toy_data):
    from mmrobust import certify

    model = trained["late"]
    radii = {}
    for kind in ("empirical", "sound"):  # the encoders are layer sequences: sound constants apply too
        tau = certify.lipschitz_constants(model, kind, toy_data.train)
        radii[kind] = certify.certify_dataset(model, toy_data.test, lipschitz=tau).joint
    assert bool((radii["sound"] <= radii["empirical"] + 1e-9).all())
    correct = mr.evaluate(model, toy_data.test, []).correct()
    assert np.array_equal((radii["sound"] > 0).numpy(), correct)


# ------------------------------------------------------------------------------------ refusals
def test_what_cannot_apply_is_refused_in_one_line(trained, toy_data, toy_batch):
    from mmrobust import certify

    x, y = toy_batch
    mb = trained["multibench"]
    plain = mr.models.adapt(mb.module, toy_data.spec, ORDER, call="list")
    parts = r"declare its parts: mr\.models\.adapt\(module, spec, order, hooks=mr\.models\.Hooks\(encoders="
    for name in DEFENSES.names():  # every defence refuses a module without declared parts, naming them
        with pytest.raises(UnsupportedError, match=rf"^{name}: .*" + parts):
            mr.defenses.create(name, **TINY[name]).check(plain)
    cases = [
        (lambda: mr.metrics.geometry_report(plain, toy_data.test), UnsupportedError, r"^geometry: .*" + parts),
        (lambda: mr.attacks.create("decoupling", modalities="image", rho_max=0.1).check(plain), UnsupportedError,
         r"^decoupling: .*" + parts),
        (lambda: certify.margins(mb, x), UnsupportedError, r"late-fusion model.*declare per-modality heads.*heads="),
        (lambda: mb.unimodal_logits(x), UnsupportedError, r"heads=\{modality: 'path'\}\) without fuse"),
        (lambda: certify.sound_lipschitz(trained["multibench"]), UnsupportedError, "late-fusion"),
    ]
    no_emb = mr.models.adapt(mb.module, toy_data.spec, ORDER, hooks="multibench")  # text embeddings not declared
    text_pgd = mr.attacks.create("pgd", modalities="text", eps=0.5, token_surface="embedding")
    emb_hint = r"declare the token-embedding layer inside its encoder, .*embeddings=\{modality: 'path\.to\.its\.nn"
    cases += [
        (lambda: text_pgd.apply(no_emb, x, y, ctx(toy_data)), UnsupportedError, r"^pgd: modality 'text' .*" + emb_hint),
        (lambda: mr.defenses.create("mixup").check(no_emb), InputError, r"^mixup: level='input' .*embeddings="),
        (lambda: mr.defenses.create("adversarial_training", eps=EPS).check(no_emb), InputError,
         r"^adversarial_training: .*embeddings="),
        (lambda: mr.defenses.create("plain_mixup").check(no_emb), InputError,
         r"^plain_mixup: level='input' .*embeddings="),
        # odd-one-out trains on single-source attacks of every modality, text included: refused up front, not
        # after the detector has started training
        (lambda: mr.defenses.create("ooo", eps=EPS, attack_modalities="sample").check(no_emb), InputError,
         r"^ooo: .*modality 'text' .*" + emb_hint),
        # a declared intermediate fusion cannot leave a modality out (no supports_drop): use a fill
        (lambda: mr.evaluate(mb, toy_data.test.subset(list(range(8))),
                             [mr.attacks.create("missing", modalities="audio", fill="drop")], checks=False),
         UnsupportedError, r"cannot drop modalities; use fill="),
        (lambda: mb(x, drop=["audio"]), UnsupportedError, r"cannot drop \['audio'\]; use a fill"),
    ]
    # late fusion with a non-linear head: JR in logits mode applies, CRMT and JR's features mode do not
    torch.manual_seed(0)
    net = LateNet()
    net.head_aud = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, K))
    mlp = mr.models.adapt(net, toy_data.spec, ORDER, hooks=LATE_HOOKS)
    mr.defenses.create("jr", gamma=1.0).check(mlp)
    cases += [
        (lambda: mr.defenses.create("crmt").check(mlp), UnsupportedError, "linear per-modality heads.*'audio'"),
        (lambda: mr.defenses.create("jr", jacobian="features").check(mlp), InputError,
         r"jacobian='features' needs linear per-modality heads .*'audio' is a Sequential"),
    ]
    # an encoder that is not a layer sequence: no sound constants (the empirical ones apply)
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = conv_encoder(8, 6)

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    net = LateNet()
    net.img = Wrapped()
    wrapped = mr.models.adapt(net, toy_data.spec, ORDER, hooks=LATE_HOOKS)
    certify.lipschitz_constants(wrapped, "empirical", toy_data.train)
    cases.append((lambda: certify.sound_lipschitz(wrapped), UnsupportedError,
                  r"'image': encoder Wrapped is not a plain layer sequence .*use lipschitz kind 'empirical'"))
    for call, kind, match in cases:
        with pytest.raises(kind, match=match):
            call()


def test_bad_declarations_are_one_clear_error(toy_data):
    spec = toy_data.spec
    mb = MBNet()

    class Scaled(MBNet):  # the forward does more than the declared parts
        def forward(self, inputs):
            return 2.0 * super().forward(inputs)

    cases = [
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks=Hooks.multibench(ORDER, head="haed")),
         r"head='haed' is not a submodule of MBNet \(its children: \['encoders', 'fuse', 'head'\]\)"),
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks=Hooks(encoders={"image": "encoders.0"}, fuse="fuse")),
         r"encoders must name exactly the modalities .*missing \['audio', 'text'\]"),
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks=Hooks(encoders={m: f"encoders.{i}" for i, m in
                                                                        enumerate(ORDER)})),
         "declare fuse='path'"),
        (lambda: mr.models.adapt(LateNet(), spec, ORDER, hooks=Hooks(encoders=LATE_HOOKS.encoders,
                                                                     heads={"image": "head_img"})),
         "late fusion .* needs a head for every modality"),
        (lambda: mr.models.adapt(LateNet(), spec, ORDER, hooks=Hooks(encoders=LATE_HOOKS.encoders,
                                                                     heads=LATE_HOOKS.heads, head="head_img")),
         "head must not be declared"),
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks=Hooks.multibench(ORDER, embeddings={"text": "head.0"})),
         r"embeddings\['text'\]='head.0' must be a layer inside its encoder 'encoders.2'"),
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks=Hooks.multibench(ORDER, embeddings={"image": "encoders.0.0"})),
         "does not hold token ids"),
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks=Hooks.multibench(ORDER, fuse_call="dict")),
         "the declared fusion failed on a probe batch"),
        (lambda: mr.models.adapt(Scaled(), spec, ORDER, hooks="multibench"),
         r"head\(fuse\(encoders\)\) differs from the module's forward by .*check the declared paths"),
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks="torchmultimodal"),
         "does not have the torchmultimodal layout: no nn.ModuleDict 'encoders'"),
        (lambda: mr.models.adapt(LateNet(), spec, ORDER, hooks="auto"), "has neither MultiBench's layout"),
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks="mmdl"), "unknown preset 'mmdl'"),
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks={"preset": "multibench", "encoder": {}}),
         r"unknown field\(s\) \['encoder'\]"),
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks=Hooks.multibench(ORDER, trainable=["encoders.0", "zzz"])),
         r"trainable\[1\]='zzz' is not a submodule"),
        (lambda: mr.models.adapt(mb, spec, ORDER, hooks=Hooks.multibench(ORDER, encoders={
            "image": nn.Linear(2, 2), "audio": "encoders.1", "text": "encoders.2"})), "not a submodule of MBNet"),
    ]
    for make, match in cases:
        with pytest.raises(InputError, match=match):
            make()
    # probe=False skips the forward comparison, not the shapes the parts must have
    assert mr.models.adapt(Scaled(), spec, ORDER, hooks="multibench", probe=False).is_late is False


# ------------------------------------------------------------------------------------ run configs
def test_model_config_fields():
    cfg = validate_config({"models": [{"name": "adapter", "module": "pkg.mod:Net", "order": ["image"],
                                       "hooks": {"preset": "multibench"}, "train": True, "call": "list"}]})
    m = cfg.models[0]
    assert m.hooks == {"preset": "multibench"} and m.train and m.call == "list"
    with pytest.raises(ConfigError, match="are for name: adapter"):
        validate_config({"models": [{"name": "late", "hooks": "multibench"}]})
    with pytest.raises(ConfigError, match=r"models\.0\.call"):
        validate_config({"models": [{"name": "adapter", "module": "a:b", "order": ["image"], "call": "kwargs"}]})
    assert ModelConfig(name="adapter", module="a:b", order=["image"]).call is None


def test_a_run_trains_defends_and_resumes_your_module(tmp_path, monkeypatch, mmdigits_tiny_cache,
                                                      tmp_path_factory):
    from conftest import copy_of
    from mmrobust.bench.results import read_rows
    from mmrobust.bench.runner import run

    monkeypatch.setenv("MMROBUST_CACHE", str(copy_of(mmdigits_tiny_cache, tmp_path_factory, "hooks-cache")))
    entry = {"name": "adapter", "id": "mmdl", "module": "mmrobust.examples.multibench:mmdigits_mmdl",
             "kwargs": {"width": 2, "text_dim": 4, "hidden": 8}, "order": ORDER,
             "hooks": {"preset": "multibench", "embeddings": {"text": "encoders.2.embedding"}}, "train": True}
    base = {"name": "mine", "dataset": {"size": "tiny"}, "models": [entry], "train": {"epochs": 1},
            "threats": {"missing": {"fills": ["zeros"]}, "corruptions": None, "certify": None,
                        "attacks": [{"name": "pgd", "eps": [{"image": 0.1, "audio": 0.05, "text": 0.5}],
                                     "params": {"steps": 1}, "samples": 16}]}}
    bad = validate_config({**base, "name": "bad", "defenses": [{"name": "jr", "models": ["mmdl"]}]})
    with pytest.raises(ConfigError, match=r"defenses.0 \(jr\): cannot defend model 'mmdl': .*heads="):
        run(bad, tmp_path / "runs", quiet=True, workers=1)
    plain = {**entry, "hooks": None, "call": "list", "id": "plain"}  # text attacks need the declared embedding layer
    with pytest.raises(ConfigError, match=r"models \(plain\): threat attack-pgd-each cannot run on it: .*embeddings="):
        run(validate_config({**base, "name": "plain", "models": [plain]}), tmp_path / "runs", quiet=True, workers=1)
    cfg = validate_config({**base, "defenses": [
        {"name": "modality_dropout", "models": ["mmdl"], "params": {"epochs": 1}},
        {"name": "ooo", "models": ["mmdl"], "params": {"eps": EPS, "epochs": 1, "attack_steps": 1, "select": "clean"}},
        {"name": "jr"},  # no models: applies where its check passes (not to this intermediate fusion)
    ]})
    folder = run(cfg, tmp_path / "runs", quiet=True, workers=1)
    rows = read_rows(folder)
    assert {r["model"] for r in rows} == {"mmdl", "mmdl+modality_dropout", "mmdl+ooo"}
    assert {r["family"] for r in rows} == {"clean", "missing", "attack"}
    assert {p.name for p in (folder / "models").iterdir()} == {"mmdl.pt", "mmdl+modality_dropout.pt", "mmdl+ooo.pt"}
    again = run(cfg, tmp_path / "runs", quiet=True, workers=1)  # resumes: every model and cell read back
    assert read_rows(again) == rows


def test_example_mmdl_two_encoder_layout(toy_data):
    """mmdigits_mmdl(modalities=...) builds MultiBench's image + text layout; its hooks equal the module."""
    from mmrobust.examples.multibench import mmdigits_mmdl

    torch.manual_seed(0)
    net = mmdigits_mmdl(width=2, text_dim=4, hidden=8, classes=toy_data.spec.num_classes,
                        modalities=("image", "text")).eval()
    assert len(net.encoders) == 2 and net.head.net[0].in_features == (4 * 2 + 1) * (4 + 1)
    order = ["image", "text"]
    hooked = mr.models.adapt(net, toy_data.spec, order, hooks={"preset": "multibench",
                                                               "embeddings": {"text": "encoders.1.embedding"}})
    plain = mr.models.adapt(net, toy_data.spec, order, call="list")
    x, _ = toy_data.test.select(order).batch(torch.arange(8))
    with torch.no_grad():
        assert torch.allclose(hooked(x), plain(x), atol=1e-6)
        assert torch.allclose(hooked(x), net([x["image"], x["text"]]), atol=1e-6)
    for bad in ((), ("image", "image"), ("image", "video")):
        with pytest.raises(ValueError, match="modalities must be distinct names"):
            mmdigits_mmdl(modalities=bad)
