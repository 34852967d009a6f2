import numpy as np
import pytest

from mmrobust.datasets.cache import cache_dir, cached_build
from mmrobust.errors import CacheError
from mmrobust.utils.io import load_arrays, save_arrays


def builder(calls):
    def build():
        calls.append(1)
        rng = np.random.default_rng(0)
        return {"train/x": rng.random((50, 4), dtype=np.float32), "train/label": np.arange(50)}, {"seed": 0}

    return build


def test_round_trip_and_checksum(tmp_path):
    calls = []
    arrays, meta = cached_build(tmp_path / "d.npz", builder(calls))
    arrays2, meta2 = cached_build(tmp_path / "d.npz", builder(calls))
    assert len(calls) == 1  # second call read the cache
    assert meta["checksum"] == meta2["checksum"]
    for k in arrays:
        assert np.array_equal(arrays[k], arrays2[k])


def test_truncated_cache_rebuilds_with_warning(tmp_path):
    calls = []
    p = tmp_path / "d.npz"
    _, meta = cached_build(p, builder(calls))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match="truncated or corrupt.*rebuilding"):
        _, meta2 = cached_build(p, builder(calls))
    assert len(calls) == 2 and meta2["checksum"] == meta["checksum"]
    load_arrays(p)  # repaired


def test_flipped_byte_detected(tmp_path):
    p = tmp_path / "d.npz"
    save_arrays(p, {"a": np.arange(10, dtype=np.float32)}, {})
    raw = bytearray(p.read_bytes())
    i = bytes(raw).index(np.arange(10, dtype=np.float32).tobytes())
    raw[i + 4] ^= 0xFF  # flip one byte of the array payload
    p.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="truncated or corrupt"):
        load_arrays(p)


def test_tampered_cache_detected(tmp_path):
    """A well-formed archive whose arrays were changed after the checksum was taken."""
    p = tmp_path / "d.npz"
    arrays = {"a": np.arange(10, dtype=np.float32)}
    save_arrays(p, arrays, {})
    with np.load(p) as z:
        payload = {k: z[k] for k in z.files}
    payload["a"] = payload["a"] + 1
    np.savez(p, **payload)
    with pytest.raises(CacheError, match="does not match its checksum"):
        load_arrays(p)
    with pytest.raises(CacheError, match="Delete it or rebuild"):
        cached_build(p, lambda: (arrays, {}), on_corrupt="raise")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MMROBUST_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    assert cache_dir(tmp_path / "x") == tmp_path / "x"


def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path):
    import os

    from mmrobust.utils.io import write_text

    (tmp_path / "plain.txt").write_text("x")
    write_text(tmp_path / "atomic.txt", "x")  # e.g. report.html: readable by whoever may read a plain file
    plain = os.stat(tmp_path / "plain.txt").st_mode & 0o777
    assert os.stat(tmp_path / "atomic.txt").st_mode & 0o777 == plain
