"""The cached MM-Digits loader (tiny size, private cache folder)."""

import numpy as np
import pytest
import torch

import mmrobust as mr
from conftest import copy_of
from mmrobust.cli import main
from mmrobust.datasets.mmdigits.loader import cache_path


@pytest.fixture(scope="module")
def cache(tmp_path_factory, mmdigits_tiny_cache):
    """A private copy of the session's tiny cache (these tests corrupt and rebuild it)."""
    return copy_of(mmdigits_tiny_cache, tmp_path_factory, "cache")


def test_tiny_bundle_has_the_contract(cache):
    data = mr.datasets.load("mmdigits", size="tiny", cache_dir=cache)
    assert data.spec.names == ["image", "audio", "text"]
    assert data.spec.num_classes == 10
    assert data.spec["text"].is_tokens and not data.spec["text"].perturbable
    for split in (data.train, data.val, data.test):
        x, _y = split.batch(np.arange(4))
        assert data.spec.validate_batch(x) == 4
        assert set(np.unique(split.labels.numpy())) == set(range(10))
    # all splits carry the training statistics
    for m in ("image", "audio"):
        assert data.test.stats[m].mean is data.train.stats[m].mean
        torch.testing.assert_close(data.train.stats[m].mean, data.train.inputs[m].mean(0))
    assert len(data.meta["checksum"]) == 64


def test_reload_reads_cache_with_same_checksum(cache, monkeypatch):
    a = mr.datasets.load("mmdigits", size="tiny", cache_dir=cache)

    def fail(**_):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr("mmrobust.datasets.mmdigits.build_arrays", fail)
    b = mr.datasets.load("mmdigits", size="tiny", cache_dir=cache)
    assert a.meta["checksum"] == b.meta["checksum"]
    for s in ("train", "test"):
        assert torch.equal(a.splits[s].inputs["audio"], b.splits[s].inputs["audio"])


def test_corrupt_cache_rebuilt_or_reported(cache, capsys):
    good = mr.datasets.load("mmdigits", size="tiny", cache_dir=cache).meta["checksum"]
    p = cache_path(0, "tiny", "logmel", cache)
    p.write_bytes(p.read_bytes()[:1000])
    assert main(["data", "build", "--size", "tiny", "--cache-dir", str(cache), "--strict"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        again = mr.datasets.load("mmdigits", size="tiny", cache_dir=cache)
    assert again.meta["checksum"] == good


def test_cli_data_build_prints_summary(cache, capsys):
    assert main(["data", "build", "--size", "tiny", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "image" in out and "audio" in out and "text" in out and "checksum" in out


def test_bad_loader_arguments(cache):
    with pytest.raises(mr.InputError, match="unknown MM-Digits size"):
        mr.datasets.load("mmdigits", size="huge", cache_dir=cache)
    with pytest.raises(mr.InputError, match="audio representation"):
        mr.datasets.load("mmdigits", audio="mp3", cache_dir=cache)
    with pytest.raises(mr.UnknownNameError, match="unknown dataset 'mnist'"):
        mr.datasets.load("mnist")
