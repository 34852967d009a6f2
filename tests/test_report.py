"""The run report: ``report.html`` built from a run folder's results files alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from mmrobust.bench.config import validate_config
from mmrobust.bench.report import eps_curves, modality_matrix, radius_of
from mmrobust.bench.results import read_rows
from mmrobust.bench.runner import run
from mmrobust.cli import main


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, mmdigits_tiny_cache):
    from conftest import copy_of

    old = os.environ.get("MMROBUST_CACHE")
    os.environ["MMROBUST_CACHE"] = str(copy_of(mmdigits_tiny_cache, tmp_path_factory, "report-cache"))
    cfg = validate_config({
        "name": "small",
        "dataset": {"size": "tiny"},
        "models": [{"name": "late"}, {"name": "unimodal", "modality": "image"}],
        "train": {"epochs": 1},
        "threats": {
            "missing": {"fills": ["zeros"]},
            "attacks": [{"name": "fgsm", "eps": [{"image": 0.05, "audio": 0.02, "text": 0.25},
                                                 {"image": 0.2, "audio": 0.1, "text": 1.0}]}],
            "corruptions": {"kinds": ["gaussian_noise", "noise"], "severities": [1, 5]},
        },
    })
    folder = run(cfg, tmp_path_factory.mktemp("runs"), quiet=True)
    yield folder
    if old is None:
        os.environ.pop("MMROBUST_CACHE", None)
    else:
        os.environ["MMROBUST_CACHE"] = old


def test_radius_of_reads_scalar_and_per_modality_cells():
    assert radius_of("0.1", "image") == 0.1
    assert radius_of("image:0.05/audio:0.02", "audio") == 0.02
    assert radius_of("image:0.05", "text") is None and radius_of("", "image") is None


def test_curves_come_from_per_sample_outcomes(small_run):
    import numpy as np

    rows = read_rows(small_run)
    curves = eps_curves(small_run, rows)
    assert set(curves) == {("attack-fgsm-each", m) for m in ("image", "audio", "text")}
    late = curves[("attack-fgsm-each", "audio")]["late"]
    clean = next(r["accuracy"] for r in rows if r["model"] == "late" and r["condition"] == "clean")
    assert [e for e, _ in late] == [0.0, 0.02, 0.1] and late[0][1] == clean
    # the audio point equals the accuracy under the audio attack alone, recomputed from the samples file
    cond = next(r["condition"] for r in rows if r["model"] == "late" and r["eps"].startswith("image:0.2"))
    z = np.load(small_run / "samples" / "late" / "attack-fgsm-each.npz")
    key = f"info/{cond}/success/audio".replace("/", "__")
    assert late[2][1] == pytest.approx(1 - z[key].astype(bool).mean())
    assert list(curves[("attack-fgsm-each", "image")]) == ["late", "unimodal-image"]
    mats = modality_matrix(rows, curves)
    r, c, m = mats["late"]
    assert r == ["image", "audio", "text", "each"] and c[0] == "missing:zeros" and "attack-fgsm-each" in c
    assert m[r.index("audio"), c.index("attack-fgsm-each")] == pytest.approx(late[2][1])
    assert m[r.index("text"), c.index("corruption")] != m[r.index("text"), c.index("corruption")]  # NaN: no kind


def test_report_is_self_contained(small_run):
    html = (small_run / "report.html").read_text()
    for png in ("accuracy_vs_eps.png", "modality_matrix.png", "certified_accuracy.png"):
        assert (small_run / png).stat().st_size > 1000
    assert html.count("src='data:image/png;base64,") == 3  # ε curves, modality matrix, certified accuracy
    assert not re.search(r"(src|href)=['\"]https?:", html) and "<script" not in html  # offline, no scripts
    for text in ("Headline", "late", "unimodal-image", "Reliability flags", "Provenance", "attack-fgsm-each ε2"):
        assert text in html
    summary = json.loads((small_run / "summary.json").read_text())
    assert summary["provenance"]["versions"]["torch"] in html


def test_report_command_rebuilds_it(small_run, capsys):
    (small_run / "report.html").unlink()
    (small_run / "modality_matrix.png").unlink()
    assert main(["report", str(small_run)]) == 0
    assert "report:" in capsys.readouterr().out
    assert (small_run / "report.html").is_file() and (small_run / "modality_matrix.png").is_file()
    assert main(["report", str(small_run / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"),
                    reason="chromium is not installed (scripts/setup.sh dev installs it; required under CI)")
def test_report_renders_in_headless_chromium(small_run, tmp_path):
    """The page opens in a real browser and shows its tables and plots, not an error."""
    assert _chromium() is not None, "CI must have chromium (scripts/setup.sh dev)"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*cmd, "--dump-dom", (small_run / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert "<table>" in page and page.count("<img") == 3 and "mmrobust report" in page
    shot = tmp_path / "shot.png"
    res = subprocess.run([*cmd, f"--screenshot={shot}", "--window-size=1200,2400",
                          (small_run / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]
    # the images decoded: the screenshot holds many distinct colours (plots), not a blank or error page
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(shot)[..., :3]
    colours = np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200


USER_MODULE = '''
import torch
from torch import nn


class Net(nn.Module):
    """A foreign model with a positional forward over image and audio."""

    def __init__(self, hidden=8):
        super().__init__()
        self.a = nn.Linear(64, hidden)
        self.b = nn.LazyLinear(hidden)
        self.out = nn.Linear(2 * hidden, 10)

    def forward(self, image, audio):
        za = torch.relu(self.a(image.flatten(1)))
        zb = torch.relu(self.b(audio.flatten(1)))
        return self.out(torch.cat([za, zb], 1))
'''


def test_user_module_from_a_config(tmp_path, monkeypatch, mmdigits_tiny_cache, tmp_path_factory, capsys):
    import torch

    from conftest import copy_of

    monkeypatch.setenv("MMROBUST_CACHE", str(copy_of(mmdigits_tiny_cache, tmp_path_factory, "user-cache")))
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import usermod

    net = usermod.Net(hidden=8)
    net(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 32, 64))  # materialise the lazy layer
    torch.save(net.state_dict(), tmp_path / "net.pt")
    cfg = tmp_path / "user.yaml"
    cfg.write_text(
        "name: user\ndataset: {size: tiny}\n"
        "models: [{name: adapter, id: mine, module: 'usermod:Net', kwargs: {hidden: 8}, order: [image, audio], "
        f"weights: '{tmp_path / 'net.pt'}'}}]\n"
        "threats: {attacks: [{name: pgd, eps: [{image: 0.1, audio: 0.05}], params: {steps: 2}}], "
        "corruptions: {kinds: [blur], severities: [2]}}\n"
    )
    assert main(["run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    folder = tmp_path / "runs" / "user"
    rows = read_rows(folder)
    assert {r["model"] for r in rows} == {"mine"}
    assert {r["family"] for r in rows} == {"clean", "missing", "attack", "corruption"}
    # the clean accuracy is the module's own, with the saved weights
    from mmrobust.datasets import load

    data = load("mmdigits", size="tiny")
    x, y = data.test.batch(torch.arange(len(data.test)))
    with torch.no_grad():
        own = float((net.eval()(x["image"], x["audio"]).argmax(1) == y).float().mean())
    assert next(r["accuracy"] for r in rows if r["condition"] == "clean") == pytest.approx(own)
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: adapter, module: 'usermod:Nope', order: [image]}]\ndataset: {size: tiny}\n")
    assert main(["run", str(bad), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "has no 'Nope'" in err and "Traceback" not in err
    bad.write_text("models: [{name: late, order: [image]}]\n")
    assert main(["run", str(bad), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "are for name: adapter" in capsys.readouterr().err


def test_seed_override_makes_its_own_run_folder(small_run, tmp_path, capsys):
    """`mmrobust run CONFIG --seed S`: the config's seed replaced, the folder named <name>-seed<S>."""
    import yaml

    cfg = yaml.safe_load((small_run / "config.yaml").read_text())
    cfg["threats"] = {"missing": {"fills": ["zeros"]}, "attacks": [], "corruptions": None, "certify": None}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--seed", "3", "--quiet"]) == 0
    folder = tmp_path / "runs" / "small-seed3"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["seed"] == 3 and "seed: 3" in (folder / "config.yaml").read_text()
    assert {r["seed"] for r in read_rows(folder)} == {"3"}
    capsys.readouterr()
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--seed", "-1"]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err
