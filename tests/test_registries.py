"""Walk every registry of the package: each entry is reachable by name, builds, and refuses bad input clearly.

Attacks, defences and corruption kinds have their own deeper walks (test_attacks.py, test_defenses.py,
test_corruptions.py); this file checks what every registry shares, and walks the model, fusion and
dataset registries, so a new component is tested as soon as it registers.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import mmrobust as mr
from mmrobust.attacks import ATTACKS
from mmrobust.attacks.corruptions import CORRUPTIONS
from mmrobust.datasets import DATASETS, dataset_options
from mmrobust.datasets.registry import EXAMPLES
from mmrobust.defenses import DEFENSES
from mmrobust.errors import InputError, MMRobustError, UnknownNameError
from mmrobust.models import ENCODERS, FUSIONS, MODELS
from mmrobust.registry import Registry

REGISTRIES = {"attack": ATTACKS, "defense": DEFENSES, "fusion": FUSIONS, "model": MODELS, "encoder": ENCODERS,
              "dataset": DATASETS, "corruption kind": CORRUPTIONS, "dataset example": EXAMPLES}
CLASS_NAMED = {"attack": ATTACKS, "defense": DEFENSES, "corruption kind": CORRUPTIONS}


@pytest.mark.parametrize("kind", REGISTRIES)
def test_every_registry_is_named_and_suggests_on_typos(kind):
    reg = REGISTRIES[kind]
    assert reg.kind == kind and len(reg) > 0
    assert reg.names() == sorted(reg.ordered())
    first = reg.names()[0]
    assert reg.get(first) is not None and first in reg
    with pytest.raises(UnknownNameError, match=rf"unknown {kind} .*Did you mean {first!r}"):
        reg.get(first + "x")


@pytest.mark.parametrize("kind", CLASS_NAMED)
def test_classes_register_under_their_own_name(kind):
    reg = CLASS_NAMED[kind]
    for name in reg.names():
        assert reg.get(name).name == name


def test_register_refuses_duplicates_and_nameless_entries():
    reg: Registry[object] = Registry("thing")

    @reg.register("a")
    def a() -> object:
        return 1

    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(a)
    with pytest.raises(ValueError, match="registry name"):
        reg.register()(a)
    reg.register("b", x=2)(lambda x: x)
    assert reg.create("b") == 2 and reg.ordered() == ["a", "b"]
    with pytest.raises(InputError, match=r"takes no hyper-parameter 'y'"):
        reg.create("a", y=1)


@pytest.mark.parametrize("name", MODELS.names())
def test_model_registry_walk(name, toy_data):
    spec = toy_data.spec
    kwargs = {"modality": spec.names[0]} if name == "unimodal" else {}
    try:
        model = mr.models.create(name, spec, embed_dim=8, **kwargs)
    except MMRobustError as e:  # a fusion that needs another model to build from says so in one line
        assert name in ("crmt", "jr", "ooo") and "\n" not in str(e)
        return
    x, y, _ = next(toy_data.test.batches(4))
    x = {m: x[m] for m in model.modalities}
    assert model(x).shape == (len(y), spec.num_classes)
    assert model.config["name"] == name
    torch.manual_seed(0)
    again = mr.models.create(name, spec, embed_dim=8, **kwargs)  # seeded initialisation
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    with pytest.raises(InputError, match=rf"model {name!r} takes no hyper-parameter 'widht'"):
        mr.models.create(name, spec, widht=3, **kwargs)


def test_every_dataset_has_an_example():
    assert EXAMPLES.names() == DATASETS.names()


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_registry_walk(name, tmp_path):
    params = inspect.signature(DATASETS.get(name)).parameters
    reads = "path" in params or "root" in params
    if name == "hdf5":
        pytest.importorskip("h5py")
    kwargs = EXAMPLES.create(name, folder=tmp_path)
    data = mr.datasets.load(name, **kwargs)
    assert len(data.train) and len(data.test) and data.spec.names
    for split in (data.train, data.val, data.test):
        assert set(split.inputs) == set(data.spec.names)
        if len(split):
            assert int(split.labels.min()) >= 0 and int(split.labels.max()) < data.spec.num_classes
    assert mr.datasets.load(name, **kwargs).meta.get("checksum") == data.meta.get("checksum")  # deterministic
    # the generic options of run configs and the CLI map onto the loader's own arguments
    if reads:
        where = "path" if "path" in params else "root"
        assert dataset_options(name, path=kwargs[where])[where] == kwargs[where]
        with pytest.raises(InputError, match="reads your data: give the path"):
            dataset_options(name)
        with pytest.raises(MMRobustError, match="nope"):  # a missing file is named, never a traceback
            mr.datasets.load(name, **{where: str(tmp_path / "nope")})
    else:
        with pytest.raises(InputError, match="built offline and reads no files"):
            dataset_options(name, path="x")
