"""The standard evaluation ``auto`` and APGD-T: the survivors-only sequence, presets, class limits, adaptivity.

The threat-model contract (budget, valid range, untouched modalities, ε = 0, evaluate) is checked
for both by the registry-walking tests of ``tests/test_attacks.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmrobust as mr
from conftest import ctx
from mmrobust.attacks import ATTACKS, Square, Transfer
from mmrobust.attacks.adaptive import Bpda
from mmrobust.attacks.apgdt import target_classes
from mmrobust.attacks.auto import CLEAN_WRONG, PRESETS, ROBUST, Auto
from mmrobust.attacks.evade import EvadeAPGD, EvadeAPGDT
from mmrobust.attacks.gradient import TARGETED_LOSSES, targeted_dlr_loss
from mmrobust.defenses.jr import build_jr_model
from mmrobust.reliability import ReliabilityChecks
from mmrobust.spec import DatasetSpec, ModalitySpec

GRADIENT_ONLY = ["apgd-ce", "apgd-t"]


def auto(mods="image", eps=0.2, **kw):
    kw.setdefault("version", "fast")
    return mr.attacks.create("auto", modalities=mods, eps=eps, **kw)


def predictions(model, out):
    with torch.no_grad():
        return model(out.x, embeddings=out.embeddings or None).argmax(1)


# ------------------------------------------------------------------------------------ losses
def test_targeted_losses_by_hand():
    logits = torch.tensor([[4.0, 1.0, 3.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0, 3.0]])
    y, t = torch.tensor([0, 1]), torch.tensor([2, 4])
    # sorted: [4, 3, 1, 0, -1] -> s_π1 − (s_π3 + s_π4)/2 = 4 − 0.5 = 3.5; [5, 3, 2, 1, 0] -> 5 − 1.5 = 3.5
    torch.testing.assert_close(targeted_dlr_loss(logits, y, t), torch.tensor([(3.0 - 4.0) / 3.5, (3.0 - 2.0) / 3.5]))
    torch.testing.assert_close(TARGETED_LOSSES["cw"](logits, y, t), torch.tensor([-1.0, 1.0]))
    ce = -torch.nn.functional.cross_entropy(logits, t, reduction="none")
    torch.testing.assert_close(TARGETED_LOSSES["ce"](logits, y, t), ce)
    # shift and scale invariant, like DLR
    torch.testing.assert_close(targeted_dlr_loss(3 * logits + 7, y, t), targeted_dlr_loss(logits, y, t))
    with pytest.raises(mr.InputError, match="at least 4 classes"):
        targeted_dlr_loss(logits[:, :3], y, t % 3)


def test_target_classes_are_the_top_non_true_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 10, generator=g)
    y = torch.randint(0, 10, (20,), generator=g)
    got = target_classes(logits, y, 9)
    for i in range(20):  # brute force: sort every class but y by its logit
        order = [k for k in sorted(range(10), key=lambda k: -float(logits[i, k])) if k != int(y[i])]
        assert got[i].tolist() == order
    # for a correctly classified sample, AutoAttack's "2nd, 3rd, ... largest logit"
    right = logits.argmax(1) == y
    ref = logits.sort(dim=1, descending=True).indices[:, 1:4]
    assert torch.equal(target_classes(logits, y, 3)[right], ref[right])


# ------------------------------------------------------------------------------------ APGD-T
def test_apgdt_caps_targets_and_runs_on_survivors(toy_late, toy_data, toy_batch, monkeypatch):
    x, y = toy_batch
    atk = mr.attacks.create("apgdt", modalities="image", eps=0.2, steps=5, targets=9)
    assert atk.target_count(toy_late.num_classes) == 3  # K − 1 for the 4-class toy model
    seen = []
    run = type(atk).run

    def spy(self, obj, start):
        seen.append((obj.y.shape[0], obj.y_target.clone()))
        return run(self, obj, start)

    monkeypatch.setattr(type(atk), "run", spy)
    out = atk.apply(toy_late, x, y, ctx(toy_data))
    assert len(seen) == 3 and seen[0][0] == y.shape[0]
    assert seen[1][0] <= seen[0][0] and seen[2][0] <= seen[1][0]  # later targets: only the survivors
    with torch.no_grad():
        ranked = target_classes(toy_late(x), y, 3)
    assert torch.equal(seen[0][1], ranked[:, 0])
    assert torch.equal(out.info["success"], predictions(toy_late, out) != y)


class RowLookupView(torch.nn.Module):
    """The model as a function of the image in [0, 1], for any subset of the rows of ``x``.

    torchattacks' APGD-T attacks each target on the rows still correct: every call finds the clean
    rows its inputs were perturbed from (the nearest clean image in ℓ∞) to fetch their other modalities.
    """

    def __init__(self, model, x):
        super().__init__()
        self.model, self.x = model, x
        self.keys = x["image"].flatten(1)

    def forward(self, u):
        rows = torch.cdist(u.flatten(1), self.keys, p=float("inf")).argmin(1)
        return self.model({**{k: v[rows] for k, v in self.x.items()}, "image": u}, check=False)


def test_apgdt_similar_robust_accuracy_to_torchattacks(toy_late, toy_data, toy_batch):
    torchattacks = pytest.importorskip("torchattacks")

    x, y = toy_batch
    with torch.no_grad():
        correct = toy_late(x).argmax(1) == y
    xc, yc = {k: v[correct] for k, v in x.items()}, y[correct]
    view = RowLookupView(toy_late, xc)
    with torch.no_grad():  # every row is found again, also after a perturbation of the size attacked below
        assert torch.equal(view(xc["image"]), toy_late(xc))
        noisy = (xc["image"] + 0.3 * torch.sign(torch.randn_like(xc["image"]))).clamp(0, 1)
        assert torch.equal(torch.cdist(noisy.flatten(1), view.keys, p=float("inf")).argmin(1), torch.arange(len(yc)))
    with torch.random.fork_rng():
        ref = torchattacks.APGDT(view, norm="Linf", eps=0.3, steps=20, n_classes=4, seed=0)
        adv = ref(xc["image"], yc)
    with torch.no_grad():
        ref_acc = float((view(adv).argmax(1) == yc).sum()) / len(y)
    atk = mr.attacks.create("apgdt", modalities="image", eps=0.3, steps=20, targets=3)
    ours = 1.0 - float(atk.apply(toy_late, x, y, ctx(toy_data)).info["success"].float().mean())
    assert ref_acc < float(correct.float().mean()) - 0.2  # the reference attack does something
    assert abs(ours - ref_acc) <= 0.06, (ours, ref_acc)


def test_apgdt_errors(toy_data):
    with pytest.raises(mr.InputError, match="targets must be an integer >= 1, got 0"):
        mr.attacks.create("apgdt", modalities="image", eps=0.1, targets=0)
    spec3 = DatasetSpec((ModalitySpec("image", "image", (1, 8, 8), low=0.0, high=1.0),), num_classes=3)
    three = mr.models.create("late", spec3)
    with pytest.raises(mr.InputError, match=r"targeted dlr loss needs at least 4 classes.*has 3"):
        mr.attacks.create("apgdt", modalities="image", eps=0.1).check(three)
    mr.attacks.create("apgdt", modalities="image", eps=0.1, loss="cw").check(three)  # the margin works


# ------------------------------------------------------------------------------------ auto
def test_presets_and_params():
    assert [s.label for s in PRESETS["standard"]][:2] == ["apgd-ce", "apgd-t"]
    std = {s.label: s for s in PRESETS["standard"]}
    assert std["apgd-ce"].params == {"loss": "ce", "steps": 100, "restarts": 1}  # AutoAttack's standard budget
    assert std["apgd-t"].params["steps"] == 100 and std["apgd-t"].params["targets"] == 9
    assert std["square"].params["queries"] == 5000 and std["square"].black_box
    assert [s.black_box for s in PRESETS["fast"]] == [False, False, True]
    atk = mr.attacks.create("auto", modalities="audio", eps=0.05, attacks=GRADIENT_ONLY)
    assert atk.params() == {"modalities": ["audio"], "norm": "linf", "eps": 0.05, "budget": "per_modality",
                            "version": "standard", "attacks": "apgd-ce+apgd-t"}
    assert atk.id == "auto[audio|norm=linf,eps=0.05,budget=per_modality,version=standard,attacks=apgd-ce+apgd-t]"
    # the version's order, whatever order the labels come in
    swapped = mr.attacks.create("auto", modalities="audio", eps=0.05, attacks=["apgd-t", "apgd-ce"])
    assert swapped.labels == GRADIENT_ONLY


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"version": "plus"}, r"auto: version must be one of standard, fast, got 'plus'"),
        ({"attacks": ["fab-t"]}, r"auto: unknown attack label\(s\) \['fab-t'\]"),
        ({"attacks": ["apgd-ce", "apgd-ce"]}, r"auto: duplicate attack labels"),
        ({"attacks": []}, r"auto: attacks must be a non-empty list"),
        ({"norm": "l0"}, r"auto: unsupported norm 'l0'"),
        ({"eps": -1.0}, r"auto: eps .* must be"),
        ({"cascade": True}, r"auto: cascade=True runs the list over the modalities of modalities=\"each\""),
        ({"cascade": "yes"}, r"auto: cascade must be true or false, got 'yes'"),
    ],
)
def test_bad_hyper_parameters(kw, match):
    base = {"modalities": "audio", "eps": 0.1, "attacks": GRADIENT_ONLY, **kw}
    with pytest.raises(mr.InputError, match=match):
        mr.attacks.create("auto", **base)


def test_survivors_only_sequence_matches_a_hand_written_loop(toy_late, toy_data, toy_batch):
    """auto = AutoAttack's loop written by hand: each attack on the samples every earlier one left correct."""
    x, y = toy_batch
    atk = auto("image", attacks=GRADIENT_ONLY)
    out = atk.apply(toy_late, x, y, ctx(toy_data, 5))
    g = ctx(toy_data, 5)  # the same generator, drawn in the same order
    with torch.no_grad():
        alive = toy_late(x).argmax(1) == y
    broken_by = torch.where(alive, ROBUST, CLEAN_WRONG)
    for i, stage in enumerate(s for s in PRESETS["fast"] if s.label in GRADIENT_ONLY):
        sub = ATTACKS.create(stage.attack, modalities="image", eps=0.2, **stage.params)
        idx = alive.nonzero().squeeze(1)
        o = sub.apply(toy_late, {k: v[idx] for k, v in x.items()}, y[idx], g)
        assert torch.equal(out.info[f"ran/{stage.label}"], torch.zeros_like(alive).index_fill(0, idx, True))
        wrong = predictions(toy_late, o) != y[idx]
        broken_by[idx[wrong]] = i
        alive[idx[wrong]] = False
        assert torch.equal(out.info[f"success/{stage.label}"], broken_by == i)
    assert torch.equal(out.info["broken_by"], broken_by)
    assert torch.equal(out.info["success"], ~alive)
    assert torch.equal(out.info["success"], predictions(toy_late, out) != y)
    assert bool(out.info["success/apgd-ce"].any())  # the first attack breaks samples, the second sees fewer
    assert 0 < int(out.info["ran/apgd-t"].sum()) < int(out.info["ran/apgd-ce"].sum())
    # loss: the CW margin at the returned point, > 0 exactly where misclassified
    assert torch.equal(out.info["loss"] > 0, out.info["success"])
    assert not bool(out.info["black_box_only"].any())


def test_deterministic_and_robust_at_most_clean(toy_late, toy_data):
    atk = auto("audio", attacks=GRADIENT_ONLY)
    a = mr.evaluate(toy_late, toy_data.test, [atk], seed=3, checks=False)
    b = mr.evaluate(toy_late, toy_data.test, [atk], seed=3, checks=False)
    assert np.array_equal(a.correct(atk.id), b.correct(atk.id))
    assert a.accuracy(atk.id) < a.accuracy("clean")
    assert np.array_equal(a.samples[f"info/{atk.id}/broken_by"], b.samples[f"info/{atk.id}/broken_by"])


def test_apgd_t_is_left_out_below_four_classes(toy_batch, toy_data):
    spec3 = DatasetSpec((ModalitySpec("image", "image", (1, 8, 8), low=0.0, high=1.0),), num_classes=3)
    three = mr.models.create("late", spec3).eval()
    x, y = toy_batch
    atk = auto("image", eps=0.3)
    atk.check(three)  # no error: APGD-T is left out, as AutoAttack cannot run it with 3 classes
    out = atk.apply(three, {"image": x["image"]}, y % 3, ctx(toy_data))
    assert not bool(out.info["ran/apgd-t"].any()) and not bool(out.info["success/apgd-t"].any())
    assert bool(out.info["ran/apgd-ce"].any())
    assert atk.params()["attacks"].startswith("apgd-ce+apgd-t")  # broken_by still indexes the full list


def test_each_is_the_per_modality_worst_case(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    x, y = {k: v[:48] for k, v in x.items()}, y[:48]
    each = auto("each", eps={"image": 0.2, "audio": 0.2, "text": 0.5}, token_surface="embedding",
                attacks=["apgd-ce", "square"])
    out = each.apply(toy_late, x, y, ctx(toy_data))
    assert torch.equal(out.info["success"], predictions(toy_late, out) != y)
    per = torch.stack([out.info[f"success/{m}"] for m in toy_late.modalities])
    assert torch.equal(out.info["success"], per.any(0))
    stages = torch.stack([out.info[f"success/{lb}"] for lb in each.labels])
    with torch.no_grad():
        clean_wrong = toy_late(x).argmax(1) != y
    assert torch.equal(stages.any(0) | clean_wrong, out.info["success"])
    assert set(out.info) >= {"modality", "broken_by", "black_box_only", "ran/apgd-ce", "norm/text", "queries/square"}
    # Square's queries (summed over the modalities): none on samples it never attacked
    assert bool((out.info["queries/square"][~out.info["ran/square"]] == 0).all())
    assert bool((out.info["queries/square"][out.info["ran/square"]] > 0).all())
    # the chosen modality's record: broken_by is -1 exactly where no modality broke the sample
    assert torch.equal(out.info["broken_by"] == ROBUST, ~out.info["success"])


def test_cascade_over_modalities_matches_a_hand_written_loop(toy_late, toy_data, toy_batch):
    """cascade=True: each attack of the list on each modality in turn, only on the samples still correct."""
    x, y = toy_batch
    x, y = {k: v[:48] for k, v in x.items()}, y[:48]
    eps = {"image": 0.1, "audio": 0.5, "text": 2.0}
    atk = auto("each", eps=eps, token_surface="embedding", attacks=GRADIENT_ONLY, cascade=True)
    assert atk.params()["cascade"] is True and "cascade" not in auto("each", eps=eps).params()
    out = atk.apply(toy_late, x, y, ctx(toy_data, 5))
    g = ctx(toy_data, 5)  # the same generator, drawn in the same order
    with torch.no_grad():
        alive = toy_late(x).argmax(1) == y
    broken_by = torch.where(alive, ROBUST, CLEAN_WRONG)
    via = torch.full_like(y, -1)
    ran_m = {m: torch.zeros_like(alive) for m in toy_late.modalities}
    for i, stage in enumerate(s for s in PRESETS["fast"] if s.label in GRADIENT_ONLY):
        ran = torch.zeros_like(alive)
        for j, m in enumerate(toy_late.modalities):
            surface = "embedding" if toy_data.spec[m].is_tokens else None
            sub = ATTACKS.create(stage.attack, modalities=m, eps=eps[m], token_surface=surface, **stage.params)
            idx = alive.nonzero().squeeze(1)
            o = sub.apply(toy_late, {k: v[idx] for k, v in x.items()}, y[idx], g)
            wrong = predictions(toy_late, o) != y[idx]
            ran[idx] = True
            ran_m[m][idx] = True
            broken_by[idx[wrong]] = i
            via[idx[wrong]] = j
            alive[idx[wrong]] = False
        assert torch.equal(out.info[f"ran/{stage.label}"], ran)
        assert torch.equal(out.info[f"success/{stage.label}"], broken_by == i)
    assert torch.equal(out.info["broken_by"], broken_by)
    assert torch.equal(out.info["success"], ~alive)
    assert torch.equal(out.info["success"], predictions(toy_late, out) != y)
    attacked = broken_by >= 0
    assert torch.equal(out.info["modality"][attacked], via[attacked])
    assert len(set(via[attacked].tolist())) >= 2  # the cascade broke samples through more than one modality
    for m in toy_late.modalities:
        assert torch.equal(out.info[f"ran/{m}"], ran_m[m])
        assert f"success/{m}" not in out.info  # not measured: later modalities skip broken samples
    assert int(out.info["ran/text"].sum()) < int(out.info["ran/image"].sum())
    # single-source: per sample only the chosen modality moved, within its radius
    with torch.no_grad():
        clean_text = toy_late.embed("text", x["text"])
    for j, m in enumerate(toy_late.modalities):
        moved = (out.embeddings["text"] - clean_text if m == "text" else out.x[m] - x[m]).flatten(1).abs().amax(1)
        assert bool((moved[out.info["modality"] != j] == 0).all()), m
        assert float(moved.max()) <= eps[m] + 1e-6
    # the per-modality copies are plain single-modality evaluations that rebuild
    one = atk.single("audio")
    assert not one.cascade and "cascade" not in one.params() and not one.replace().cascade
    plain = auto("each", eps=eps, token_surface="embedding", attacks=GRADIENT_ONLY)
    res = mr.evaluate(toy_late, toy_data.test.subset(list(range(32))), [atk, plain], seed=0, checks=False)
    assert res.accuracy(atk.id) <= res.accuracy("clean")
    from mmrobust.metrics import results as R

    per = R.modality_worst_case(res, plain.id)  # modalities only, not auto's per-attack flags
    assert set(per["per_modality"]) == set(toy_late.modalities)
    with pytest.raises(mr.InputError, match="cascade=True does not"):
        R.modality_worst_case(res, atk.id)


def test_black_box_flag_from_the_record():
    chk = ReliabilityChecks()
    only = torch.zeros(500, dtype=torch.bool)
    assert chk.black_box_flags("auto[x]", only) == []
    only[:1] = True  # one sample: within the noise of a random search
    assert chk.black_box_flags("auto[x]", only) == []
    only[:2] = True  # 2 of 500 = 0.4 % > 0.2 %
    (flag,) = chk.black_box_flags("auto[x]", only)
    assert flag.name == "black_box_beats_gradient" and flag.condition == "auto[x]"
    assert flag.value == pytest.approx(0.004) and "2 of 500" in flag.message
    assert chk.black_box_flags("auto[x]", torch.cat([only, torch.zeros(1000, dtype=torch.bool)])) == []


def test_quantised_gradients_raise_the_black_box_flag(toy_late, toy_data):
    from test_flags import Quantised, wrapped

    q = wrapped(toy_late, "image", Quantised)
    atk = mr.attacks.create("auto", modalities="image", eps=0.3, version="fast")
    res = mr.evaluate(q, toy_data.test, [atk])
    names = {f["name"] for f in res.flags if f["condition"] == atk.id}
    assert "black_box_beats_gradient" in names
    only = res.samples[f"info/{atk.id}/black_box_only"].astype(bool)
    assert only.sum() >= 2 and np.array_equal(only, res.samples[f"info/{atk.id}/success/square"].astype(bool))


def test_honest_model_raises_no_black_box_flag(toy_late, toy_data):
    # the same threat as the quantised model's test, on the model without the rounding step
    atk = mr.attacks.create("auto", modalities="image", eps=0.3, version="fast")
    res = mr.evaluate(toy_late, toy_data.test, [atk])
    assert not [f for f in res.flags if f["name"] == "black_box_beats_gradient"]
    assert res.accuracy(atk.id) < res.accuracy("clean")


# ------------------------------------------------------------------------------------ adaptive
def test_adaptive_auto_expands_the_gradient_attacks(toy_late):
    atk = auto("audio", eps=0.1)
    jr = mr.defenses.create("jr", gamma=0.5).adaptive(atk, toy_late)
    expected = ["apgd-ce:transfer", "apgd-ce:bpda", "apgd-ce:full", "apgd-t:transfer", "apgd-t:bpda", "apgd-t:full"]
    assert isinstance(jr, Auto) and jr.labels[:6] == expected
    assert jr.params()["adaptive"] == "transfer+bpda+full" and jr.id != atk.id
    runs = jr._runs(toy_late)
    assert isinstance(runs[0][1], Transfer) and runs[0][1].source is toy_late and isinstance(runs[1][1], Bpda)
    crmt = mr.defenses.create("crmt").adaptive(atk)
    assert crmt.labels[:4] == ["apgd-ce:cw", "apgd-ce:ce", "apgd-t:cw", "apgd-t:dlr"]
    assert [c.loss for _, c, _ in crmt._runs(toy_late)[:4]] == ["cw", "ce", "cw", "dlr"]
    ooo = mr.defenses.create("ooo").adaptive(atk)
    assert ooo.labels[:6] == ["apgd-ce:evade", "apgd-ce:cw", "apgd-ce:ce", "apgd-t:evade", "apgd-t:cw", "apgd-t:dlr"]
    kinds = [type(c) for _, c, _ in ooo._runs(toy_late)]
    assert kinds[0] is EvadeAPGD and kinds[3] is EvadeAPGDT and ooo._runs(toy_late)[0][1].kappa == 1.0
    assert mr.defenses.create("modality_dropout").adaptive(atk) is atk
    assert mr.defenses.create("adversarial_training", eps=0.1).adaptive(atk) is atk
    # the black-box attack stays as it is, on the defended model
    assert jr.labels[-1] == "square" and isinstance(jr._runs(toy_late)[-1][1], Square)


def _check_cascade(model, out, y, labels, each=False):
    assert torch.equal(out.info["success"], predictions(model, out) != y)
    broken = out.info["broken_by"]
    for i, lb in enumerate(labels):
        if each:  # per attack: broken on some modality; broken_by: the chosen modality's
            assert not bool(((broken == i) & ~out.info[f"success/{lb}"]).any())
            continue
        assert torch.equal(out.info[f"success/{lb}"], broken == i)
        if i + 1 < len(labels):  # a later attack never runs on a sample an earlier one broke
            assert not bool((out.info[f"ran/{labels[i + 1]}"] & (broken >= 0) & (broken <= i)).any())


def test_adaptive_auto_on_jr(toy_late, toy_data, toy_batch):
    x, y = toy_batch
    x, y = {k: v[:24] for k, v in x.items()}, y[:24]  # JR's per-sample solves are slow: a few samples
    jr = build_jr_model(toy_late, 0.5, "logits", "float64")
    for mods in ("image", "each"):
        kw = {"eps": {"image": 0.3, "audio": 0.3, "text": 1.0}, "token_surface": "embedding"} if mods == "each" else {
            "eps": 0.3}
        atk = mr.defenses.create("jr", gamma=0.5).adaptive(auto(mods, **kw), toy_late, model=jr)
        out = atk.apply(jr, x, y, ctx(toy_data))
        _check_cascade(jr, out, y, atk.labels, each=mods == "each")
        assert bool(out.info["ran/apgd-ce:transfer"].any())
        assert int((out.info["broken_by"] >= 0).sum()) > 0  # the adaptive list breaks samples
    assert jr.fusion.mode == "full"  # BPDA mode restored


def test_adaptive_auto_on_crmt(toy_data, toy_batch):
    x, y = toy_batch
    model = mr.models.create("crmt", toy_data.spec.subset(["image", "audio"]), embed_dim=8)
    mr.train(model, toy_data, epochs=2, quiet=True)
    model.eval()
    xs = {m: x[m] for m in ("image", "audio")}
    atk = mr.defenses.create("crmt").adaptive(auto(["image", "audio"], eps=0.2))
    out = atk.apply(model, xs, y, ctx(toy_data))
    _check_cascade(model, out, y, atk.labels)
    assert bool(out.info["ran/apgd-ce:cw"].any())


def test_adaptive_auto_on_odd_one_out(toy_data, toy_batch):
    x, y = toy_batch
    model = mr.models.create("ooo", toy_data.spec).eval()
    atk = mr.defenses.create("ooo").adaptive(auto("audio", eps=0.2))
    out = atk.apply(model, x, y, ctx(toy_data))
    _check_cascade(model, out, y, atk.labels)
    evade = atk._runs(model)[0][1]
    assert isinstance(evade, EvadeAPGD) and evade.kappa == 1.0
    o = evade.apply(model, x, y, ctx(toy_data))
    assert {"ooo_pred", "ooo_p_attacked", "ooo_p_none"} <= set(o.info)
    plain = mr.attacks.create("apgd", modalities="audio", eps=0.2, steps=50)
    p = plain.apply(model, x, y, ctx(toy_data))
    assert not torch.equal(o.x["audio"], p.x["audio"])  # the same start, another objective


# ------------------------------------------------------------------------------------ runner and CLI
def test_runner_builds_auto_like_any_attack(toy_data, toy_late):
    from mmrobust.bench.config import validate_config
    from mmrobust.bench.threats import check_threats, threat_groups
    from mmrobust.errors import ConfigError

    params = {"version": "fast"}
    cfg = validate_config({"threats": {"attacks": [
        {"name": "auto", "eps": [{"image": 0.1, "audio": 0.05, "text": 0.5}, 0.2], "params": params}]}})
    check_threats(cfg, toy_data.spec)
    (group,) = [g for g in threat_groups(toy_late, cfg) if g.family == "attack"]
    assert group.key == "attack-auto-each"
    first, second = group.conditions
    assert isinstance(first, Auto) and first.threat.each and first.eps == {"image": 0.1, "audio": 0.05, "text": 0.5}
    assert second.eps == 0.2 and first.threat.token_surface == "embedding"  # text through its embeddings
    jr = mr.defenses.create("jr", gamma=0.5)
    (adapted,) = [g for g in threat_groups(toy_late, cfg, lambda c: jr.adaptive(c, toy_late, model=toy_late))
                  if g.family == "attack"]
    assert all(c.params()["adaptive"] == "transfer+bpda+full" for c in adapted.conditions)
    bad = validate_config({"threats": {"attacks": [{"name": "auto", "eps": [0.1], "params": {"attacks": ["fab"]}}]}})
    with pytest.raises(ConfigError, match=r"threats.attacks.0 \(auto\): auto: unknown attack label"):
        check_threats(bad, toy_data.spec)
