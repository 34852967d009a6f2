"""The clean batch's cached embeddings: the same predictions as full forward passes, fewer encoder runs."""

from __future__ import annotations

import pytest
import torch

import mmrobust as mr
from mmrobust.attacks import EvalContext
from mmrobust.attacks.encodings import CleanEncodings


@pytest.fixture(scope="module")
def toy_concat(toy_data):
    model = mr.models.create("concat", toy_data.spec)
    mr.train(model, toy_data, epochs=2, quiet=True)
    return model.eval()


def _conditions():
    eps = {"image": 0.1, "audio": 0.1, "text": 0.5}
    return [
        mr.attacks.create("missing", modalities="audio", fill="zeros"),
        mr.attacks.create("missing", modalities="text", fill="drop"),
        mr.attacks.create("corruption", modalities="image", kind="gaussian_noise", severity=3),
        mr.attacks.create("corruption", modalities="text", kind="char_swap", severity=3),
        mr.attacks.create("pgd", modalities="each", eps=eps, steps=3, token_surface="embedding"),
        mr.attacks.create("fgsm", modalities=["image", "audio"], eps=0.1),
    ]


@pytest.mark.parametrize("fixture", ["toy_late", "toy_concat"])
def test_cached_logits_equal_full_forward_passes(fixture, request, toy_data):
    model = request.getfixturevalue(fixture)
    x, y, _ = next(toy_data.test.batches(48))
    enc = CleanEncodings(model, x)
    with torch.no_grad():
        assert torch.equal(enc.logits(x), model(x))
    for c in _conditions():
        if c.name == "missing" and c.params().get("fill") == "drop" and not model.supports_drop:
            continue
        c.check(model)
        g = torch.Generator().manual_seed(3)
        out = c.apply(model, x, y, EvalContext(stats=toy_data.train.stats, generator=g, encodings=enc))
        with torch.no_grad():
            full = model(out.x, drop=out.drop, embeddings=out.embeddings or None)
        torch.testing.assert_close(enc.logits(out.x, out.drop, out.embeddings), full, rtol=0, atol=1e-6)


def test_evaluate_encodes_each_clean_modality_once_per_batch(toy_late, toy_data, monkeypatch):
    calls: dict[str, int] = {}
    original = toy_late.encode_one

    def counting(name, x_m):
        calls[name] = calls.get(name, 0) + 1
        return original(name, x_m)

    monkeypatch.setattr(toy_late, "encode_one", counting)
    conds = [mr.attacks.create("corruption", modalities="image", kind=k, severity=2)
             for k in ("gaussian_noise", "blur", "contrast")]
    split = toy_data.test.subset(list(range(32)))
    mr.evaluate(toy_late, split, conds, batch_size=32, checks=False)
    # audio and text: once for the clean batch, never again; image: clean + one per corruption
    assert calls["audio"] == 1 and calls["text"] == 1 and calls["image"] == 1 + len(conds)


def test_evaluate_results_match_uncached_predictions(toy_concat, toy_data):
    split = toy_data.test.subset(list(range(64)))
    conds = [c for c in _conditions() if not (c.name == "missing" and c.params().get("fill") == "drop")]
    res = mr.evaluate(toy_concat, split, conds, batch_size=32, seed=5, checks=False)
    for b, (x, y, idx) in enumerate(split.batches(32)):
        for c in conds:
            g = torch.Generator().manual_seed(5 * 1_000_003 + int(idx[0]))
            out = c.apply(toy_concat, x, y, EvalContext(stats=split.stats, generator=g, seed=5))
            with torch.no_grad():
                pred = toy_concat(out.x, drop=out.drop, embeddings=out.embeddings or None).argmax(1)
            assert (res.samples[f"pred/{c.id}"][b * 32:(b + 1) * 32] == pred.numpy()).all()


def test_a_changed_tensor_or_another_model_never_reads_the_cache(toy_late, toy_concat, toy_data):
    x, _, _ = next(toy_data.test.batches(8))
    enc = CleanEncodings(toy_late, x)
    assert enc.lookup(toy_late, "audio", x["audio"]) is not None
    assert enc.lookup(toy_late, "audio", x["audio"].clone()) is None
    assert enc.lookup(toy_concat, "audio", x["audio"]) is None
