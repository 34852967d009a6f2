"""A newcomer's run: missing optional parts refused up front, one progress bar over the whole run, the smoke config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mmrobust.bench import progress as progress_module
from mmrobust.bench.config import RUN_PATIENCE, load_config, validate_config
from mmrobust.bench.progress import RunProgress, plan_run
from mmrobust.cli import main
from mmrobust.datasets import load

ROOT = Path(__file__).resolve().parents[1]


def test_missing_matplotlib_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ndataset: {name: mmdigits, size: tiny}\nmodels: [{name: late}]\n")
    assert main(["run", str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "needs the package matplotlib, which is not installed: pip install" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before the run folder, the dataset or any training


def test_tensorboard_logging_is_checked_up_front(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ndataset: {name: mmdigits, size: tiny}\nmodels: [{name: late}]\n"
                   f"train: {{tensorboard: {tmp_path / 'tb'}}}\n")
    assert main(["run", str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "tensorboard" in capsys.readouterr().err


def test_smoke_config_is_valid_and_small():
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    assert cfg.dataset.size == "tiny" and cfg.train.epochs <= 2 and cfg.defenses


def test_run_trainings_stop_on_a_validation_plateau():
    assert validate_config({}).train.patience == RUN_PATIENCE == 5
    assert validate_config({"train": {"epochs": 5}}).train.patience == RUN_PATIENCE
    assert validate_config({"train": {"patience": None}}).train.patience is None


def test_the_bar_counts_every_item_of_the_run_once(tmp_path, monkeypatch):
    seen: list[RunProgress] = []
    original = RunProgress.__init__

    def spy(self, *a, **k):
        original(self, *a, **k)
        seen.append(self)

    monkeypatch.setattr(RunProgress, "__init__", spy)
    cfg = validate_config({
        "name": "p", "dataset": {"name": "mmdigits", "size": "tiny"},
        "models": [{"name": "unimodal", "modality": "image"}, {"name": "late"}], "train": {"epochs": 1},
        "threats": {"attacks": [{"name": "fgsm", "modalities": "each", "eps": [0.01], "samples": 16}],
                    "corruptions": {"kinds": ["gaussian_noise"]}, "certify": {"radii": [0.0]}},
        "defenses": [{"name": "jr", "models": ["late"], "params": {"select_samples": 16, "select_steps": 1,
                                                                   "gammas": [1.0]}}],
    })
    total, items = plan_run(cfg, load("mmdigits", size="tiny").spec)
    from mmrobust.bench.runner import run

    run(cfg, tmp_path, quiet=True)
    bar = seen[-1]
    assert bar.items == items and bar.done_items == items  # planned = done: the bar ends at 100 %
    assert bar.bar.total == pytest.approx(round(total, 1))
    # resumed: every item is read back and still counted
    run(cfg, tmp_path, quiet=True)
    assert seen[-1].done_items == items


def test_weights_rank_the_work(monkeypatch):
    cfg = validate_config({})
    kinds = {"image": "image", "audio": "audio", "text": "text"}
    fusion = progress_module.weight("train", cfg, ["image", "audio", "text"], kinds)
    assert fusion > progress_module.weight("train", cfg, ["text"], kinds) > progress_module.weight("missing", cfg)


# ---------------------------------------------------------------------------------- worker processes
SMALL = {
    "name": "w", "dataset": {"name": "mmdigits", "size": "tiny"},
    "models": [{"name": "unimodal", "modality": "audio"}, {"name": "late"}, {"name": "concat"}],
    "train": {"epochs": 2},
    "threats": {"missing": {"fills": ["zeros"]},
                "attacks": [{"name": "pgd", "modalities": "each", "eps": [0.05], "params": {"steps": 2},
                             "samples": 32}],
                "corruptions": {"kinds": ["gaussian_noise"]}, "certify": {"radii": [0.0, 0.01]}},
    "defenses": [{"name": "modality_dropout", "models": ["concat"], "params": {"epochs": 1}}],
}


def test_results_do_not_depend_on_the_worker_count(tmp_path):
    import numpy as np

    from mmrobust.bench.results import read_rows
    from mmrobust.bench.runner import run

    cfg = validate_config(SMALL)
    one = run(cfg, tmp_path / "one", quiet=True, workers=1)
    two = run(cfg, tmp_path / "two", quiet=True, workers=2)
    assert read_rows(one) == read_rows(two)
    files = sorted(p.relative_to(one) for p in (one / "samples").glob("*/*.npz"))
    assert files == sorted(p.relative_to(two) for p in (two / "samples").glob("*/*.npz")) and files
    for f in files:
        a, b = np.load(one / f), np.load(two / f)
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            assert np.array_equal(a[k], b[k]), (f, k)


def test_an_error_in_a_worker_stops_the_run_and_leaves_no_process(tmp_path, monkeypatch):
    import multiprocessing

    from mmrobust.bench.runner import run

    (tmp_path / "broken_net.py").write_text(
        "from torch import nn\n"
        "class Broken(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = nn.Linear(64, 10)\n"
        "    def forward(self, image):\n"
        "        if self.training:  # the up-front checks pass; the training, in a worker, fails\n"
        "            raise RuntimeError('broken forward of the test module')\n"
        "        return self.lin(image.flatten(1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    cfg = validate_config({
        **SMALL, "name": "e", "defenses": [],
        "models": [{"name": "late"}, {"name": "adapter", "id": "broken", "module": "broken_net:Broken",
                                      "order": ["image"], "train": True}],
    })
    with pytest.raises(Exception, match="broken forward of the test module"):
        run(cfg, tmp_path / "runs", quiet=True, workers=2)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_bad_worker_count_is_one_line(tmp_path, capsys, bad):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ndataset: {name: mmdigits, size: tiny}\nmodels: [{name: late}]\n")
    assert main(["run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--workers", bad]) == 2
    err = capsys.readouterr().err
    assert f"workers must be an integer >= 1, got {bad}" in err and "Traceback" not in err
