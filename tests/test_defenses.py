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


def test_unknown_defense_suggests_a_name():
    with pytest.raises(mr.UnknownNameError, match="Did you mean 'crmt'"):
        mr.defenses.create("crmtt")
