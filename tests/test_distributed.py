"""Scale-out: evaluation sharded over ``torch.distributed`` ranks gives exactly the one-process results."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mmrobust as mr

_STATE: dict = {}


def _conditions():
    return [
        mr.attacks.create("pgd", modalities="audio", eps=0.3, steps=3),  # random start: seeded per batch
        mr.attacks.create("fgsm", modalities="each", eps=0.2, token_surface="embedding"),
        mr.attacks.create("missing", modalities="text", fill="drop"),
        mr.attacks.create("corruption", modalities="image", kind="gaussian_noise", severity=3),
    ]


def _rank_main(rank: int, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}/store", rank=rank, world_size=2)
    try:
        res = mr.evaluate(_STATE["model"], _STATE["data"].test, _conditions(), batch_size=16, seed=3)
        torch.save({"samples": res.samples, "flags": res.flags, "rows": res.rows()}, f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_one_process_result(toy_late, toy_data, tmp_path):
    single = mr.evaluate(toy_late, toy_data.test, _conditions(), batch_size=16, seed=3)
    assert len(toy_data.test) > 3 * 16  # several batches per rank
    _STATE.update(model=toy_late, data=toy_data)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_rank_main, args=(str(tmp_path),), nprocs=2, join=True, start_method=method)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert set(got["samples"]) == set(single.samples)
        for k, v in single.samples.items():
            np.testing.assert_array_equal(got["samples"][k], v, err_msg=k)
        assert got["flags"] == single.flags and got["rows"] == single.rows()
    np.testing.assert_array_equal(single.samples["index"], np.arange(len(toy_data.test)))  # no duplicates


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path, tmp_path_factory, mmdigits_tiny_cache):
    from conftest import copy_of

    env = dict(os.environ, OMP_NUM_THREADS="1",
               MMROBUST_CACHE=str(copy_of(mmdigits_tiny_cache, tmp_path_factory, "dist-cache")))
    cfg = tmp_path / "d.yaml"
    cfg.write_text(
        "name: d\ndataset: {size: tiny}\nmodels: [{name: late}, {name: unimodal, modality: audio}]\n"
        "train: {epochs: 1}\neval_batch_size: 16\n"
        "threats: {missing: {fills: [zeros, drop]}, attacks: [{name: pgd, eps: [{image: 0.1, audio: 0.05, "
        "text: 0.5}], params: {steps: 2}}], corruptions: {kinds: [noise, blur], severities: [4]}}\n"
    )
    one = subprocess.run([sys.executable, "-m", "mmrobust.cli", "run", str(cfg), "--runs-dir", str(tmp_path / "one"),
                          "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"]
    two = subprocess.run([*torchrun, "-m", "mmrobust.cli", "run", str(cfg), "--runs-dir", str(tmp_path / "two"),
                          "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = tmp_path / "one" / "d", tmp_path / "two" / "d"
    assert (a / "results.csv").read_text() == (b / "results.csv").read_text()
    files = sorted(p.relative_to(a / "samples") for p in (a / "samples").rglob("*.npz"))
    assert files == sorted(p.relative_to(b / "samples") for p in (b / "samples").rglob("*.npz")) and files
    for f in files:
        with np.load(a / "samples" / f) as za, np.load(b / "samples" / f) as zb:
            assert za.files == zb.files
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[k], err_msg=f"{f}:{k}")
