"""The adapter for foreign nn.Modules: evaluation end to end, attacks equal to a native model's, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mmrobust as mr
from conftest import ctx
from mmrobust.attacks import EvalContext
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models import ModelAdapter
from mmrobust.models.fusion.ooo import has_odd_one_out

MODS = ["image", "audio", "text"]


class PositionalNet(nn.Module):
    """A plain three-input model: forward(image, audio, text) -> logits (N, 4)."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.img = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.aud = nn.Sequential(nn.Flatten(), nn.Linear(128, 16), nn.ReLU())
        self.emb = nn.Embedding(12, 8)
        self.head = nn.Linear(40, k)

    def features(self, image, audio, text):
        return torch.cat([self.img(image), self.aud(audio), self.emb(text).mean(1)], 1)

    def forward(self, image, audio, text):
        return self.head(self.features(image, audio, text))


class DictNet(nn.Module):
    """The same network behind a dict forward, returning (logits, features)."""

    def __init__(self, net: PositionalNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch):
        return self.net(batch["image"], batch["audio"], batch["text"]), None


class NativeInside(nn.Module):
    """A native mmrobust model behind a positional forward (computes exactly the native function)."""

    def __init__(self, native: nn.Module) -> None:
        super().__init__()
        self.native = native

    def forward(self, image, audio, text):
        return self.native({"image": image, "audio": audio, "text": text})


@pytest.fixture(scope="module")
def trained(toy_data):
    torch.manual_seed(0)
    net = PositionalNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = toy_data.train.batch(torch.arange(len(toy_data.train)))
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(x["image"], x["audio"], x["text"]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture
def adapter(trained, toy_data):
    return mr.models.adapt(trained, toy_data.spec, order=MODS)


# ------------------------------------------------------------------------------------ end to end
def test_evaluate_attack_missing_and_corruption(adapter, trained, toy_data):
    conds = [
        mr.attacks.create("pgd", modalities="audio", eps=0.1, steps=10),
        mr.attacks.create("missing", modalities="image", fill="zeros"),
        mr.attacks.create("missing", modalities="text", fill="mean"),
        mr.attacks.create("corruption", modalities="image", kind="gaussian_noise", severity=3),
    ]
    n = len(toy_data.test)
    res = mr.evaluate(adapter, toy_data.test, conds, batch_size=n, seed=0)
    assert res.model == "adapter"
    x, y = toy_data.test.batch(torch.arange(n))
    with torch.no_grad():
        clean = trained(x["image"], x["audio"], x["text"]).argmax(1)
        zeros = trained(torch.zeros_like(x["image"]), x["audio"], x["text"]).argmax(1)
        mode = toy_data.train.stats["text"].mode.expand(n, -1)
        mean_text = trained(x["image"], x["audio"], mode).argmax(1)
    assert np.array_equal(res.samples["pred/clean"], clean.numpy())
    assert res.accuracy() > 0.6  # the module was trained
    ids = [c.id for c in conds]
    assert np.array_equal(res.samples[f"pred/{ids[1]}"], zeros.numpy())
    assert np.array_equal(res.samples[f"pred/{ids[2]}"], mean_text.numpy())
    # the corruption: the same generator evaluate uses for a batch starting at index 0
    g = torch.Generator().manual_seed(0)
    out = conds[3].apply(adapter, x, y, EvalContext(stats=toy_data.train.stats, generator=g))
    with torch.no_grad():
        corrupted = trained(out.x["image"], x["audio"], x["text"]).argmax(1)
    assert np.array_equal(res.samples[f"pred/{ids[3]}"], corrupted.numpy())
    # PGD: per-sample success agrees with the stored predictions, within the budget, and it hurts
    pgd = ids[0]
    success = res.samples[f"info/{pgd}/success"]
    assert np.array_equal(success, res.samples[f"pred/{pgd}"] != res.samples["label"])
    assert (res.samples[f"info/{pgd}/norm/audio"] <= 0.1 + 1e-6).all()
    assert res.accuracy(pgd) < res.accuracy() - 0.1


@pytest.mark.parametrize(
    "name,kw",
    [("fgsm", {}), ("pgd", {"steps": 8, "random_start": True, "restarts": 2}), ("pgd", {"steps": 8, "norm": "l2",
                                                                                      "eps": 0.5, "loss": "cw"})],
)
def test_attacks_equal_native_model(name, kw, toy_late, toy_data, toy_batch):
    """The adapter around a native model computes the same function, so attacks find the same points."""
    adapter = mr.models.adapt(NativeInside(toy_late), toy_data.spec, order=MODS)
    atk = mr.attacks.create(name, modalities=["image", "audio"], **{"eps": 0.05, **kw})
    x, y = toy_batch
    a = atk.apply(toy_late, x, y, ctx(toy_data, 3))
    b = atk.apply(adapter, x, y, ctx(toy_data, 3))
    for m in ("image", "audio"):
        assert float((a.x[m] - x[m]).abs().max()) > 0.01  # the attack moved the inputs ...
        assert float((a.x[m] - b.x[m]).abs().max()) <= 1e-6  # ... to the same points
    assert b.x["text"] is x["text"]
    assert torch.equal(a.info["success"], b.info["success"])
    torch.testing.assert_close(a.info["loss"], b.info["loss"], atol=1e-5, rtol=1e-5)
    # and evaluate agrees, condition by condition
    conds = [atk, mr.attacks.create("missing", modalities="audio", fill="noise"),
             mr.attacks.create("corruption", modalities="image", kind="occlusion", severity=2)]
    ra = mr.evaluate(toy_late, toy_data.test, conds, checks=False)
    rb = mr.evaluate(adapter, toy_data.test, conds, checks=False)
    for key in ra.samples:
        if key.startswith("pred/"):
            assert np.array_equal(ra.samples[key], rb.samples[key]), key


def test_attack_restores_module_mode_and_flags(trained, toy_data, toy_batch):
    adapter = mr.models.adapt(trained, toy_data.spec, order=MODS)
    adapter.train()
    mr.attacks.create("pgd", modalities="image", eps=0.05, steps=2).apply(adapter, *toy_batch, ctx(toy_data))
    assert trained.training and all(p.requires_grad for p in trained.parameters())
    trained.eval()


# ------------------------------------------------------------------------------------ call conventions
def test_dict_forward_with_output_selector_and_create_options(trained, toy_data, toy_batch):
    x, _ = toy_batch
    positional = mr.models.adapt(trained, toy_data.spec, order=MODS)
    wrapped = mr.models.adapt(DictNet(trained), toy_data.spec, order=MODS, call="dict", output=lambda o: o[0],
                              name="dictnet")
    torch.testing.assert_close(wrapped(x), positional(x))
    assert isinstance(wrapped, ModelAdapter) and isinstance(wrapped, mr.models.MultimodalModel)
    assert wrapped.config["name"] == "dictnet" and wrapped.modalities == MODS
    # the hooks attacks use: the raw inputs are the "embeddings"
    z = positional.encode(x)
    assert all(z[m] is x[m] for m in MODS) and positional.encode_one("audio", x["audio"]) is x["audio"]
    torch.testing.assert_close(positional.logits_from_embeddings(z), positional(x))
    # a subset of the spec's modalities, in the module's own order
    class TwoNet(nn.Module):
        def forward(self, audio, image):
            return trained(image, audio, torch.ones(audio.shape[0], 6, dtype=torch.long))

    two = mr.models.adapt(TwoNet(), toy_data.spec, order=["audio", "image"])
    assert two.modalities == ["audio", "image"] and two.spec.names == ["audio", "image"]
    res = mr.evaluate(two, toy_data.test, [mr.attacks.create("fgsm", modalities="audio", eps=0.05)], checks=False)
    assert res.n == len(toy_data.test)


def test_supports_drop_passes_none(toy_data, toy_batch):
    class Droppable(nn.Module):
        def __init__(self):
            super().__init__()
            self.i = nn.Linear(64, 4)
            self.a = nn.Linear(128, 4)

        def forward(self, image, audio):
            out = self.i(image.flatten(1))
            return out if audio is None else out + self.a(audio.flatten(1))

    net = Droppable()
    x, _ = toy_batch
    xa = {m: x[m] for m in ("image", "audio")}
    model = mr.models.adapt(net, toy_data.spec, order=["image", "audio"], supports_drop=True)
    torch.testing.assert_close(model({"image": x["image"]}, drop=["audio"]), net.i(x["image"].flatten(1)))
    res = mr.evaluate(model, toy_data.test, [mr.attacks.create("missing", modalities="audio", fill="drop")],
                      checks=False)
    cid = "missing[audio|fill=drop]"
    with torch.no_grad():
        expected = net.i(toy_data.test.inputs["image"].flatten(1)).argmax(1).numpy()
    assert np.array_equal(res.samples[f"pred/{cid}"], expected)
    strict = mr.models.adapt(net, toy_data.spec, order=["image", "audio"])
    with pytest.raises(UnsupportedError, match=r"adapter\(Droppable\)' needs every modality"):
        strict(xa, drop=["audio"])
    with pytest.raises(UnsupportedError, match="cannot drop"):
        mr.evaluate(strict, toy_data.test, [mr.attacks.create("missing", modalities="audio", fill="drop")])


# ------------------------------------------------------------------------------------ errors
class AnonymousNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.i = nn.Linear(64, 4)
        self.a = nn.Linear(128, 4)

    def forward(self, a, b):
        return self.i(a.flatten(1)) + self.a(b.flatten(1))


def test_construction_errors(trained, toy_data):
    spec = toy_data.spec
    cases = [
        (lambda: mr.models.adapt(trained, spec, order=["image", "video", "text"]), r"unknown modality 'video'"),
        (lambda: mr.models.adapt(trained, spec, order=["image", "image", "text"]), "duplicate"),
        (lambda: mr.models.adapt(trained, spec, order="image"), "non-empty list"),
        (lambda: mr.models.adapt(trained, spec, order=[]), "non-empty list"),
        (lambda: mr.models.adapt(trained, spec, order=["audio", "image", "text"]),
         r"did you mean order=\['image', 'audio', 'text'\]"),
        (lambda: mr.models.adapt(trained, spec, order=["image", "audio"]), r"takes 3 positional input\(s\)"),
        (lambda: mr.models.adapt(lambda a: a, spec, order=["image"]), "must be a torch.nn.Module"),
        (lambda: mr.models.adapt(trained, spec.to_dict(), order=MODS), "must be a DatasetSpec"),
        (lambda: mr.models.adapt(trained, spec, order=MODS, call="kwargs"), "call must be one of"),
        (lambda: mr.models.adapt(trained, spec, order=MODS, probe="yes"), "probe must be True or False"),
        (lambda: mr.models.adapt(PositionalNet(k=5), spec, order=MODS), r"shape \(2, 5\); expected float logits of "
                                                                        r"shape \(2, 4\)"),
        (lambda: mr.models.adapt(DictNet(trained), spec, order=MODS, call="dict"), "pass output="),
        # a forward whose names say nothing: the probe catches the swapped order from the shapes
        (lambda: mr.models.adapt(AnonymousNet(), spec, order=["audio", "image"]),
         r"failed when called as module\(audio=\(2, 1, 8, 16\), image=\(2, 1, 8, 8\)\).*Check that order"),
    ]
    for make, match in cases:
        with pytest.raises(InputError, match=match):
            make()
    # without the probe the same mistake is reported at the first call, still in one clear message
    late = mr.models.adapt(AnonymousNet(), spec, order=["audio", "image"], probe=False)
    with pytest.raises(InputError, match="failed when called as"):
        mr.evaluate(late, toy_data.test)
    ok = mr.models.adapt(AnonymousNet(), spec, order=["image", "audio"])
    with pytest.raises(InputError, match="unknown modality 'text'"):
        ok.encode_one("text", torch.zeros(2, 6))
    with pytest.raises(InputError, match="unknown modality 'text'"):
        mr.evaluate(ok, toy_data.test, [mr.attacks.create("pgd", modalities="text", eps=0.1)])


def test_methods_that_need_hooks_say_why(adapter, toy_data, toy_batch):
    """Without declared hooks every method that needs one refuses in one line naming what to declare."""
    from mmrobust import certify
    from mmrobust.metrics.geometry import geometry_report

    x, _ = toy_batch
    declare = r"declare its parts: mr\.models\.adapt\(module, spec, order, hooks=mr\.models\.Hooks\("
    hooks = [
        (lambda: adapter.fuse(x), "no fusion layer or head; " + declare + r"encoders="),
        (lambda: adapter.head_from_fused(torch.zeros(2, 4)), "no fusion layer or head"),
        (lambda: adapter.unimodal_logits(x), r"no per-modality logits; .*heads=\{modality: 'path'\}\) without fuse"),
        (lambda: adapter.embed("text", x["text"]), r"no token-embedding surface for 'text'; .*embeddings="),
        (lambda: adapter(x, embeddings={"text": torch.zeros(96, 6, 8)}), "no token-embedding surface"),
        (lambda: geometry_report(adapter, toy_data.test), r"^geometry: .*" + declare),
        (lambda: certify.sound_lipschitz(adapter), "late-fusion"),
        (lambda: mr.evaluate(adapter, toy_data.test,
                             [mr.attacks.create("pgd", modalities="text", eps=0.1, token_surface="embedding")]),
         r"^pgd: .*no token-embedding surface for 'text'.*embeddings=\{modality: 'path\.to\.its\.nn\.Embedding'\}"),
    ]
    for call, match in hooks:
        with pytest.raises(UnsupportedError, match=match):
            call()
    with pytest.raises(AttributeError, match="no 'head'"):
        _ = adapter.head
    assert adapter.fusion is None and not has_odd_one_out(adapter)
    assert not adapter.is_late and not adapter.supports_drop
