"""Every registered defence behind one interface: hyper-parameters only, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mmrobust as mr
from mmrobust.defenses import DEFENSES, Defense

#: the few hyper-parameters a defence cannot default (its threat radius)
REQUIRED = {"adversarial_training": {"eps": 0.1}}


@pytest.mark.parametrize("name", DEFENSES.names())
def test_registry_walk(name, toy_data):
    d = mr.defenses.create(name, **REQUIRED.get(name, {}))
    assert isinstance(d, Defense) and d.name == name
    assert d.kind in ("training", "training-free")
    params = d.params()
    json.dumps(params)  # recorded with every result
    assert d.id.startswith(name) and d.describe()["kind"] == d.kind
    assert mr.defenses.create(name, **REQUIRED.get(name, {})).id == d.id  # stable

    class Positional(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, toy_data.spec.num_classes)

        def forward(self, image):
            return self.lin(image.flatten(1))

    adapter = mr.models.adapt(Positional(), toy_data.spec, ["image"])
    with pytest.raises(mr.UnsupportedError, match="foreign module"):
        d.check(adapter)
    with pytest.raises(mr.InputError, match="needs a mmrobust MultimodalModel"):
        d.check(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", DEFENSES.names())
def test_unknown_hyper_parameter_is_named(name):
    with pytest.raises(mr.InputError, match="takes no hyper-parameter 'gama'"):
        mr.defenses.create(name, gama=1.0, **REQUIRED.get(name, {}))


TRAINING = [n for n in DEFENSES.names() if DEFENSES.get(n).kind == "training"]


def test_every_defense_is_classified():
    assert {"crmt", "ooo", "mixup", "plain_mixup", "adversarial_training", "modality_dropout"} <= set(TRAINING)
    assert "jr" not in TRAINING


@pytest.mark.parametrize("name", TRAINING)
def test_training_defenses_take_epochs_and_train(name):
    # the same two training knobs everywhere: epochs and train={TrainConfig fields}
    req = REQUIRED.get(name, {})
    d = mr.defenses.create(name, epochs=3, train={"weight_decay": 1e-4, "batch_size": 16}, **req)
    params = d.params()
    assert params["epochs"] == 3 and d.epochs == 3
    assert params["train"]["batch_size"] == 16 and params["train"]["weight_decay"] == 1e-4
    assert list(params["train"]) == [k for k in mr.TrainConfig.model_fields if k in params["train"]]  # canonical
    assert not any(k in params for k in ("lr", "batch_size", "weight_decay"))  # no flat copies of train keys
    same = mr.defenses.create(name, epochs=3, train={"batch_size": 16, "weight_decay": 1e-4}, **req)
    assert same.id == d.id  # key order does not change the id
    with pytest.raises(mr.InputError, match=rf"^{name}: unknown train setting 'bogus'; train accepts .*\blr\b"):
        mr.defenses.create(name, train={"bogus": 1}, **req)
    for key in ("seed", "quiet", "epochs"):
        with pytest.raises(mr.InputError, match=rf"^{name}: train\['{key}'\] is set by the defence"):
            mr.defenses.create(name, train={key: 1}, **req)
    with pytest.raises(mr.InputError, match=rf"^{name}: train\['lr'\] must be a finite number, got True"):
        mr.defenses.create(name, train={"lr": True}, **req)
    with pytest.raises(mr.InputError, match=rf"^{name}: invalid train settings: batch_size=0"):
        mr.defenses.create(name, train={"batch_size": 0}, **req)
    with pytest.raises(mr.InputError, match=rf"^{name}: epochs must be an integer >= 1, got 0"):
        mr.defenses.create(name, epochs=0, **req)
    with pytest.raises(mr.InputError, match=rf"^{name}: train must be a dict"):
        mr.defenses.create(name, train="lr=0.1", **req)


def test_unknown_defense_suggests_a_name():
    with pytest.raises(mr.UnknownNameError, match="Did you mean 'crmt'"):
        mr.defenses.create("crmtt")
