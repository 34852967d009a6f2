"""Gradient attacks return, per sample, the first misclassified iterate, else the highest-loss one.

A constructed one-feature model whose loss has a peak inside the ball: fixed-size sign steps jump
over it and oscillate between a = 0.4 (near the peak) and a = 0.8 (past it), so the last iterate is
worse than an earlier one. The class logits are [c, f(a)] with f(a) = 1 − 4(a − 0.5)², f(0.4) =
0.96, f(0.8) = 0.64, the true class 0 and c a second (unattacked) input feature.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mmrobust as mr
from mmrobust.attacks.gradient import LOSSES, Objective, attack_mode


class Bump(nn.Module):
    """Logits [c, 1 − 4(a − 0.5)²] (the true class is 0)."""

    def forward(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.stack([c[:, 0], 1.0 - 4.0 * (a[:, 0] - 0.5) ** 2], 1)


def bump_model(k=2):
    feats = (mr.ModalitySpec("a", "features", (1,), low=-1.0, high=1.0), mr.ModalitySpec("c", "features", (1,)))
    return mr.models.adapt(Bump(), mr.DatasetSpec(feats, k), order=["a", "c"]).eval()


def batch(c):
    n = len(c)
    return {"a": torch.zeros(n, 1), "c": torch.tensor(c)[:, None]}, torch.zeros(n, dtype=torch.long)


# c = 2.0: never misclassified, the best iterate is a = 0.4; c = 0.9: misclassified at a = 0.4 only.
@pytest.mark.parametrize("early_stop", [False, True])
@pytest.mark.parametrize("steps", [2, 4, 5])
def test_pgd_keeps_the_best_iterate_not_the_last(steps, early_stop):
    model = bump_model()
    x, y = batch([2.0, 0.9])
    atk = mr.attacks.create(
        "pgd", modalities="a", eps=1.0, alpha=0.4, steps=steps, random_start=False, early_stop=early_stop, loss="cw"
    )
    out = atk.apply(model, x, y, ctx_for())
    # iterates 0, 0.4, 0.8, 0.4, 0.8, ...: the last one is a = 0.8 for even step counts
    torch.testing.assert_close(out.x["a"][:, 0], torch.tensor([0.4, 0.4]))
    assert out.info["success"].tolist() == [False, True]
    torch.testing.assert_close(out.info["loss"], torch.tensor([0.96 - 2.0, 0.96 - 0.9]))
    with torch.no_grad():  # the loss and success describe the returned point
        assert ((model(out.x).argmax(1) != y) == out.info["success"]).all()


def test_pgd_restarts_keep_the_best_run():
    model = bump_model()
    x, y = batch([2.0])
    atk = mr.attacks.create("pgd", modalities="a", eps=1.0, alpha=0.4, steps=4, restarts=3, loss="cw")
    out = atk.apply(model, x, y, ctx_for())
    single = [mr.attacks.create("pgd", modalities="a", eps=1.0, alpha=0.4, steps=4, loss="cw") for _ in range(3)]
    g = torch.Generator().manual_seed(0)
    c = mr.attacks.EvalContext(stats={}, generator=g)
    losses = [float(s.apply(model, x, y, c).info["loss"]) for s in single]
    assert float(out.info["loss"]) == pytest.approx(max(losses))


@pytest.mark.parametrize("name", ["apgd", "apgdt"])
def test_apgd_keeps_the_best_iterate_not_the_last(name):
    # APGD's first step is 2ε = 1.2 long: from a = 0 it lands on the ball's edge a = 0.6 (f = 0.96);
    # the later iterates oscillate around the peak a = 0.5, the last one is not the best.
    model = bump_model()
    x, y = batch([2.0])
    kw = {"targets": 1, "loss": "cw"} if name == "apgdt" else {"loss": "cw"}
    atk = mr.attacks.create(name, modalities="a", eps=0.6, steps=7, random_start=False, **kw)
    with attack_mode(model):
        obj = Objective(model, x, y, atk.resolve(model), LOSSES["cw"])
        run = atk.run(obj, obj.origin)
    assert float(run.losses[-1, 0]) < float(run.losses[:, 0].max()) - 1e-3  # the last iterate is worse
    out = atk.apply(model, x, y, ctx_for())
    assert float(out.info["loss"][0]) == pytest.approx(float(run.losses[:, 0].max()), abs=1e-6)
    f = 1.0 - 4.0 * (out.x["a"][:, 0] - 0.5) ** 2
    assert float(f[0] - 2.0) == pytest.approx(float(out.info["loss"][0]), abs=1e-6)


def ctx_for():
    return mr.attacks.EvalContext(stats={}, generator=torch.Generator().manual_seed(0))

