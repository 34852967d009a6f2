import pytest
import torch

import mmrobust as mr
from mmrobust.train import accuracy


def test_training_learns_and_selects_on_validation(toy, tmp_path):
    model = mr.models.create("late", toy.spec)
    before = accuracy(model, toy.val)
    res = mr.train(model, toy, epochs=6, quiet=True, checkpoint=tmp_path / "late.pt")
    assert res.best_val_accuracy == pytest.approx(max(h["val_accuracy"] for h in res.history))
    assert accuracy(model, toy.val) == pytest.approx(res.best_val_accuracy)
    assert res.best_val_accuracy > before + 0.2
    assert not model.training
    loaded = mr.models.load(tmp_path / "late.pt")
    assert accuracy(loaded, toy.test) == pytest.approx(accuracy(model, toy.test))
    assert loaded.checkpoint_meta["train"]["best_epoch"] == res.best_epoch


def test_same_seed_same_accuracies(toy):
    accs = []
    for _ in range(2):
        model = mr.models.create("attention", toy.spec, seed=0)
        res = mr.train(model, toy, epochs=3, seed=0, quiet=True)
        accs.append(([h["val_accuracy"] for h in res.history], accuracy(model, toy.test),
                     [p.detach().clone() for p in model.parameters()]))
    assert accs[0][0] == accs[1][0]
    assert accs[0][1] == accs[1][1]
    assert all(torch.equal(a, b) for a, b in zip(accs[0][2], accs[1][2], strict=True))


def test_different_seed_different_run(toy):
    losses = []
    for seed in (0, 1):
        model = mr.models.create("concat", toy.spec, seed=seed)
        losses.append(mr.train(model, toy, epochs=1, seed=seed, quiet=True).history[0]["train_loss"])
    assert losses[0] != losses[1]


def test_unimodal_model_trains_on_its_modality(toy):
    model = mr.models.create("unimodal", toy.spec, modality="text")
    mr.train(model, toy, epochs=15, lr=3e-3, quiet=True)
    assert model.modalities == ["text"]
    assert accuracy(model, toy.test) > 0.5


def test_bad_training_config_is_clear(toy):
    model = mr.models.create("late", toy.spec)
    with pytest.raises(mr.ConfigError, match="epochs"):
        mr.train(model, toy, epochs=0)
    with pytest.raises(mr.ConfigError, match="learning_rate"):
        mr.train(model, toy, learning_rate=0.1)
    with pytest.raises(mr.InputError, match="DatasetBundle"):
        mr.train(model, toy.train)


def test_modality_dropout_zeroes_one_modality_per_hit_sample(toy):
    from mmrobust.train import _drop_modalities

    model = mr.models.create("late", toy.spec)
    x, _ = toy.train.batch(torch.arange(64))
    out = _drop_modalities(x, model, 0.999, torch.Generator().manual_seed(0))
    zeroed = torch.stack(
        [(out[m] == 0).flatten(1).all(1) & ~(x[m] == 0).flatten(1).all(1) for m in model.modalities], 1
    )
    assert torch.equal(zeroed.sum(1), torch.ones(64, dtype=torch.long))  # exactly one modality each
    for i, m in enumerate(model.modalities):
        keep = ~zeroed[:, i]
        assert torch.equal(out[m][keep], x[m][keep])
    res = [mr.train(mr.models.create("concat", toy.spec), toy, epochs=1, modality_dropout=0.3, quiet=True)
           for _ in range(2)]
    assert res[0].history == res[1].history  # seeded


def test_tensorboard_logging_writes_one_point_per_epoch(toy_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = mr.models.create("late", toy_data.spec, embed_dim=8)
    res = mr.train(model, toy_data, epochs=2, quiet=True, tensorboard=str(tmp_path / "tb"))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train_loss", "train_accuracy", "val_accuracy"}
    vals = [e.value for e in acc.Scalars("val_accuracy")]
    assert [e.step for e in acc.Scalars("val_accuracy")] == [1, 2]
    assert vals == pytest.approx([h["val_accuracy"] for h in res.history])


def test_custom_objective_parameters_and_score(toy_data):
    model = mr.models.create("late", toy_data.spec, embed_dim=8)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fusion.")}
    calls = []

    def objective(m, x, y, generator):
        calls.append(len(y))
        logits = m(x)
        return torch.nn.functional.cross_entropy(logits, y), logits

    scores = iter([0.1, 0.9, 0.5])
    res = mr.train(model, toy_data, epochs=3, quiet=True, objective=objective,
                   parameters=model.fusion.parameters(), score=lambda m, val: next(scores))
    assert sum(calls) == 3 * len(toy_data.train)
    assert res.best_epoch == 2 and res.best_val_accuracy == 0.9  # selection by the given score
    for k, v in model.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k  # encoders were not optimised
    with pytest.raises(mr.InputError, match="no parameters"):
        mr.train(model, toy_data, epochs=1, quiet=True, parameters=[])


def test_sgd_optimizer_takes_momentum_and_weight_decay(toy, monkeypatch):
    made = []
    real = torch.optim.SGD

    def spy(params, **kw):
        made.append(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    model = mr.models.create("late", toy.spec, seed=0)
    before = accuracy(model, toy.val)
    res = mr.train(model, toy, epochs=4, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, quiet=True)
    assert made == [{"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}]
    assert res.config["optimizer"] == "sgd" and res.best_val_accuracy > before + 0.2
    adam = mr.models.create("late", toy.spec, seed=0)
    mr.train(adam, toy, epochs=1, quiet=True)
    assert len(made) == 1  # the default stays Adam
    with pytest.raises(mr.ConfigError, match="optimizer"):
        mr.train(model, toy, optimizer="rmsprop")
    with pytest.raises(mr.ConfigError, match="momentum"):
        mr.train(model, toy, optimizer="sgd", momentum=1.5)


def test_step_schedule_decays_the_learning_rate(toy):
    model = mr.models.create("late", toy.spec, seed=0)
    res = mr.train(model, toy, epochs=5, optimizer="sgd", lr=0.05, lr_step=2, lr_gamma=0.5, quiet=True)
    assert [h["lr"] for h in res.history] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.0125])
    constant = mr.train(mr.models.create("late", toy.spec, seed=0), toy, epochs=3, quiet=True)
    assert [h["lr"] for h in constant.history] == [2e-3] * 3  # no schedule by default
    # the same schedule, the same numbers; a different one changes the run
    again = mr.train(mr.models.create("late", toy.spec, seed=0), toy, epochs=5, optimizer="sgd", lr=0.05,
                     lr_step=2, lr_gamma=0.5, quiet=True)
    assert again.history == res.history
    for bad in ({"lr_step": 0}, {"lr_gamma": 0.0}, {"lr_gamma": 1.5}):
        with pytest.raises(mr.ConfigError, match=next(iter(bad))):
            mr.train(model, toy, epochs=1, quiet=True, **bad)


def test_crmt_takes_the_authors_recipe(toy):
    from mmrobust.defenses.crmt import AUTHORS_RECIPE

    crmt = mr.defenses.create("crmt", epochs=1, radius_epochs=0, train=AUTHORS_RECIPE)
    assert crmt.params()["train"] == AUTHORS_RECIPE
    model = crmt.apply(mr.models.create("late", toy.spec, seed=0), toy)
    assert model.config["fusion"] == "crmt"
    with pytest.raises(mr.InputError, match="train\\['optimizer'\\] must be one of 'adam', 'sgd'"):
        mr.defenses.create("crmt", train={"optimizer": "lbfgs"})
