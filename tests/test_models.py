import pytest
import torch

import mmrobust as mr
from mmrobust.errors import InputError, UnknownNameError, UnsupportedError
from mmrobust.models import FUSIONS, MODELS


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(n, 1, 8, 8, generator=g),
        "audio": torch.rand(n, 1, 8, 16, generator=g),
        "text": torch.randint(0, 12, (n, 6), generator=g),
    }


def make(name, spec, **kw):
    if name == "unimodal":
        kw.setdefault("modality", "image")
    return mr.models.create(name, spec, **kw)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_runs_and_exposes_hooks(name, spec):
    model = make(name, spec).eval()
    x = {m: t for m, t in batch().items() if m in model.modalities}
    logits = model(x)
    assert logits.shape == (4, spec.num_classes)
    z = model.encode(x)
    assert set(z) == set(model.modalities)
    fused, aux = model.fuse(z)
    assert isinstance(aux, dict)
    torch.testing.assert_close(model.head_from_fused(fused), logits)
    # gradients reach every float input
    xs = {m: (t.clone().requires_grad_(True) if t.is_floating_point() else t) for m, t in x.items()}
    model(xs).sum().backward()
    for _m, t in xs.items():
        if t.is_floating_point():
            assert t.grad is not None and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_same_seed_same_init(name, spec):
    a, b, c = make(name, spec, seed=1), make(name, spec, seed=1), make(name, spec, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_late_fusion_is_sum_of_unimodal_logits(spec):
    model = mr.models.create("late", spec).eval()
    x = batch()
    uni = model.unimodal_logits(x)
    lp = model.fusion.log_prior
    expected = sum(uni.values()) - (len(uni) - 1) * lp
    torch.testing.assert_close(model(x), expected)
    # dropping a modality sums only the present ones
    xd = {k: v for k, v in x.items() if k != "audio"}
    torch.testing.assert_close(model(xd, drop=["audio"]), uni["image"] + uni["text"] - lp)


@pytest.mark.parametrize("name", ["late", "attention", "gated"])
def test_drop_equals_model_without_that_input(name, spec):
    """Dropping must not depend on the dropped tensor's values at all."""
    model = mr.models.create(name, spec).eval()
    x = batch()
    y1 = model({k: v for k, v in x.items() if k != "text"}, drop=["text"])
    x2 = dict(x, text=torch.randint(0, 12, (4, 6)))
    y2 = model({k: v for k, v in x2.items() if k != "text"}, drop=["text"])
    torch.testing.assert_close(y1, y2)
    if name == "gated":
        _, aux = model.fuse(model.encode(x, drop=["text"]))
        assert torch.all(aux["gates"][:, 2] == 0)
        torch.testing.assert_close(aux["gates"].sum(1), torch.ones(4))


def test_concat_refuses_drop(spec):
    model = mr.models.create("concat", spec)
    with pytest.raises(UnsupportedError, match="cannot drop"):
        model({k: v for k, v in batch().items() if k != "audio"}, drop=["audio"])


def test_unknown_names_are_clear(spec):
    with pytest.raises(UnknownNameError, match=r"unknown model 'latee'.*Did you mean 'late'"):
        mr.models.create("latee", spec)
    with pytest.raises(UnknownNameError, match="unknown fusion 'sum'"):
        mr.models.MultimodalModel(spec, fusion="sum")
    with pytest.raises(InputError, match="unimodal model needs modality"):
        mr.models.create("unimodal", spec)
    with pytest.raises(InputError, match="unknown modality 'video'"):
        mr.models.create("unimodal", spec, modality="video")
    with pytest.raises(InputError, match="embed_dim"):
        mr.models.create("late", spec, embed_dim=0)


def test_model_rejects_bad_batches(spec):
    model = mr.models.create("late", spec)
    x = batch()
    x.pop("image")
    with pytest.raises(InputError, match="missing modality 'image'"):
        model(x)
    x = batch()
    x["audio"][0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model(x)


def test_unimodal_logits_need_late_fusion(spec):
    with pytest.raises(UnsupportedError, match="late-fusion"):
        mr.models.create("concat", spec).unimodal_logits(batch())


def test_text_embedding_hook_matches_forward(spec):
    model = mr.models.create("unimodal", spec, modality="text").eval()
    tokens = batch()["text"]
    enc = model.encoders["text"]
    emb = model.embed("text", tokens)
    torch.testing.assert_close(enc.forward_embedded(emb, enc.mask(tokens)), enc(tokens))


def test_all_pad_text_is_finite(spec):
    model = mr.models.create("unimodal", spec, modality="text").eval()
    out = model({"text": torch.zeros(2, 6, dtype=torch.long)})
    assert torch.isfinite(out).all()


def test_fusion_registry_lists_required(spec):
    assert {"late", "concat", "attention", "gated"} <= set(FUSIONS.names())
    assert "unimodal" in mr.models.names()


def test_checkpoint_round_trip(spec, tmp_path):
    model = mr.models.create("gated", spec, seed=3).eval()
    path = mr.models.save(model, tmp_path / "m.pt", {"note": "x"})
    loaded = mr.models.load(path)
    x = batch()
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.config == model.config
    assert loaded.checkpoint_meta["note"] == "x"
    assert "versions" in loaded.checkpoint_meta["provenance"]


def test_checkpoint_corrupt_is_reported(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(mr.CacheError, match="truncated or not a torch file"):
        mr.models.load(p)
    with pytest.raises(mr.CacheError, match="does not exist"):
        mr.models.load(tmp_path / "none.pt")
