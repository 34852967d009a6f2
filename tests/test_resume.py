"""Kill a run mid-way, run the same command again: it completes the missing cells only, with results
identical to an uninterrupted run, and no file is ever half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

CONFIG = """
name: resume
dataset: {size: tiny}
models: [{name: late}, {name: concat}]
train: {epochs: 2}
threats:
  missing: {fills: [zeros, mean]}
  attacks: [{name: pgd, eps: [{image: 0.05, audio: 0.02, text: 0.25}, {image: 0.2, audio: 0.1, text: 1.0}],
             params: {steps: 3}}]
  corruptions: {kinds: [gaussian_noise, noise, token_dropout], severities: [1, 5]}
"""


def _run(cfg, runs, env):
    return subprocess.Popen([sys.executable, "-m", "mmrobust.cli", "run", str(cfg), "--runs-dir", str(runs), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def env(tmp_path_factory, mmdigits_tiny_cache):
    from conftest import copy_of

    e = dict(os.environ)
    e["MMROBUST_CACHE"] = str(copy_of(mmdigits_tiny_cache, tmp_path_factory, "resume-cache"))
    e["OMP_NUM_THREADS"] = "1"
    return e


def _check_whole(folder):
    for path in folder.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".npz":
            with np.load(path) as z:
                assert "label" in z.files
        elif path.suffix == ".csv":
            assert path.read_text().endswith("\n")


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc; empty elsewhere)."""
    try:
        return [int(k) for k in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """The process runs (a zombie waiting for its reaper does not count)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_run_resumes_to_identical_results(tmp_path, env):
    cfg = tmp_path / "resume.yaml"
    cfg.write_text(CONFIG)
    ref = _run(cfg, tmp_path / "ref", env)
    _out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-2000:]
    expected = (tmp_path / "ref" / "resume" / "results.csv").read_text()

    runs = tmp_path / "killed"
    cells = runs / "resume" / "cells"
    proc = _run(cfg, runs, env)
    deadline = time.time() + 600
    while time.time() < deadline and len(list(cells.rglob("*.json"))) < 3:  # kill once a few cells are done
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    kids = _children(proc.pid)  # its worker processes and their queue's server
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.relative_to(cells) for p in cells.rglob("*.json"))
    assert 3 <= len(done) < 8  # 2 models x (missing, pgd, 3 corruption cells) + late's certified = 11 cells
    gone = time.time() + 10
    while time.time() < gone and any(_alive(k) for k in kids):
        time.sleep(0.1)
    if os.path.isdir("/proc"):
        assert kids and not [k for k in kids if _alive(k)], "workers outlived the killed run"
    assert sorted(p.relative_to(cells) for p in cells.rglob("*.json")) == done  # nothing went on after the kill
    _check_whole(runs / "resume")  # only finished files, each whole (temporaries are hidden .tmp files)

    again = _run(cfg, runs, env)
    _out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert (runs / "resume" / "results.csv").read_text() == expected
    assert not list((runs / "resume").rglob(".*.tmp"))
    assert len(list(cells.rglob("*.json"))) == 11
    _check_whole(runs / "resume")
