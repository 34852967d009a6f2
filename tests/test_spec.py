import pytest
import torch

from mmrobust.errors import InputError
from mmrobust.spec import DatasetSpec, ModalitySpec


def batch(spec, n=3):
    return {
        "image": torch.rand(n, 1, 8, 8),
        "audio": torch.rand(n, 1, 8, 16),
        "text": torch.randint(0, 12, (n, 6)),
    }


def test_valid_batch_returns_size(spec):
    assert spec.validate_batch(batch(spec, 5)) == 5


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x: x.pop("audio"), "missing modality 'audio'"),
        (lambda x: x.update(depth=torch.rand(3, 2)), "unexpected key 'depth'"),
        (lambda x: x.update(image=torch.rand(3, 1, 8, 9)), "modality 'image': expected shape (N, 1, 8, 8)"),
        (lambda x: x.update(image=torch.rand(3, 8, 8)), "modality 'image': expected shape"),
        (lambda x: x.update(image=torch.zeros(3, 1, 8, 8, dtype=torch.int64)), "expected a floating-point"),
        (lambda x: x.update(text=torch.rand(3, 6)), "token ids must be an integer tensor"),
        (lambda x: x.update(text=torch.full((3, 6), 12)), "token ids must lie in [0, 12)"),
        (lambda x: x.update(audio=torch.rand(4, 1, 8, 16)), "mismatched batch sizes"),
        (lambda x: x["audio"].__setitem__((1, 0, 0, 0), float("nan")), "audio': 1 sample(s) contain NaN"),
        (lambda x: x["image"].__setitem__((0, 0, 0, 0), float("inf")), "image': 1 sample(s) contain NaN"),
        (lambda x: x.update(image=[[0.0]]), "expected a torch.Tensor"),
    ],
)
def test_bad_batches_name_the_problem(spec, mutate, message):
    x = batch(spec)
    mutate(x)
    with pytest.raises(InputError) as e:
        spec.validate_batch(x)
    assert message in str(e.value)


def test_not_a_dict(spec):
    with pytest.raises(InputError, match="must be a dict"):
        spec.validate_batch(torch.rand(3, 4))


def test_drop_allows_absent_key(spec):
    x = batch(spec)
    x.pop("audio")
    assert spec.validate_batch(x, drop=["audio"]) == 3
    with pytest.raises(InputError, match="unknown modality 'depth'"):
        spec.validate_batch(x, drop=["depth"])


def test_spec_round_trip_and_subset(spec):
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    sub = spec.subset(["text", "image"])
    assert sub.names == ["image", "text"]  # keeps spec order
    with pytest.raises(InputError, match="unknown modality"):
        spec.subset(["video"])


def test_modality_spec_validation():
    with pytest.raises(InputError, match="kind"):
        ModalitySpec("v", "video", (3,))
    with pytest.raises(InputError, match="vocab_size"):
        ModalitySpec("t", "text", (5,), dtype="int64")
    with pytest.raises(InputError, match="low"):
        ModalitySpec("a", "audio", (3,), low=1.0, high=0.0)
