"""Defences in the runner: model × defence × threat cells, adaptive attacks, certified cells, the comparison table."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mmrobust.bench.config import load_config, validate_config
from mmrobust.bench.grid import check_defenses
from mmrobust.bench.report import _key, certified_curves, defense_rows
from mmrobust.bench.results import read_rows
from mmrobust.bench.runner import run
from mmrobust.errors import ConfigError

EPS = [{"image": 0.05, "audio": 0.02, "text": 0.25}, {"image": 0.1, "audio": 0.05, "text": 0.5}]
CONFIG = {
    "name": "defended",
    "dataset": {"size": "tiny"},
    "models": [{"name": "late"}, {"name": "concat"}],
    "train": {"epochs": 2},
    "threats": {
        "missing": {"fills": ["zeros"]},
        "attacks": [{"name": "pgd", "eps": EPS, "params": {"steps": 2}, "samples": 40}],
        "corruptions": {"kinds": ["gaussian_noise"], "severities": [3]},
        "certify": {"radii": [0.0, 0.01, 0.1]},
    },
    "defenses": [
        {"name": "jr", "params": {"gamma": 0.5}},  # no models: every model it applies to (late only)
        {"name": "crmt", "models": ["late"], "params": {"epochs": 1, "radius_epochs": 1}},
        {"name": "ooo", "models": ["concat"], "params": {"epochs": 1}},
    ],
}


@pytest.fixture(scope="module")
def defended_run(tmp_path_factory, mmdigits_tiny_cache):
    from conftest import copy_of

    old = os.environ.get("MMROBUST_CACHE")
    os.environ["MMROBUST_CACHE"] = str(copy_of(mmdigits_tiny_cache, tmp_path_factory, "defended-cache"))
    folder = run(validate_config(CONFIG), tmp_path_factory.mktemp("runs"), quiet=True)
    yield folder
    if old is None:
        os.environ.pop("MMROBUST_CACHE", None)
    else:
        os.environ["MMROBUST_CACHE"] = old


def test_every_model_defence_pair_is_evaluated_on_the_same_threats(defended_run):
    rows = read_rows(defended_run)
    models = list(dict.fromkeys(r["model"] for r in rows))
    assert models == ["late", "late+jr", "late+crmt", "concat", "concat+ooo"]  # jr skipped concat on its own
    threats = {m: {r["threat"] for r in rows if r["model"] == m and r["family"] != "certified"} for m in models}
    assert threats["late+jr"] == threats["late"] and threats["concat+ooo"] == threats["concat"]
    assert {r["defense"] for r in rows if r["model"] == "late+crmt"} == {"crmt"}
    assert {r["defense"] for r in rows if r["model"] == "late"} == {"none"}
    for r in rows:
        if r["family"] == "attack":
            assert r["n"] == "40"  # the attack cells ran on the first 40 test samples
    clean = [r for r in rows if r["condition"] == "clean"]
    assert len(clean) == len(models) and all(int(r["n"]) > 40 for r in clean)  # clean on the full test split


def test_attacks_on_defended_models_are_adaptive(defended_run):
    rows = read_rows(defended_run)
    summary = json.loads((defended_run / "summary.json").read_text())
    assert summary["models"]["late+jr"]["adaptive"] == "transfer+bpda+full"
    assert summary["models"]["late+crmt"]["adaptive"] == "cw+ce"
    assert summary["models"]["concat+ooo"]["adaptive"] == "evade+cw+ce"
    for model, labels in (("late+jr", ["transfer", "bpda", "full"]), ("concat+ooo", ["evade", "cw", "ce"])):
        attack = [r for r in rows if r["model"] == model and r["family"] == "attack"]
        assert attack and all(r["condition"].startswith("worst_case[each|") for r in attack)
        s = np.load(defended_run / "samples" / model / "attack-pgd-each.npz")
        for r in attack:
            cid = r["condition"]
            correct = s[_key(f"pred/{cid}")] == s["label"]
            assert correct.mean() == pytest.approx(float(r["accuracy"]))
            for m in ("image", "audio", "text"):
                broken = s[_key(f"info/{cid}/success/{m}")].astype(bool)
                assert not np.any(correct & broken)  # robust under the worst case => robust on every modality
                for lb in labels:  # ... and under every variant of that modality's attack
                    assert not np.any(correct & s[_key(f"info/{cid}/{m}/success/{lb}")].astype(bool))
    plain = [r for r in rows if r["model"] == "late" and r["family"] == "attack"]
    assert all(r["condition"].startswith("pgd[") for r in plain)  # undefended models get the attack itself


def test_certified_cells_for_late_fusion_models_only(defended_run):
    rows = read_rows(defended_run)
    cert = {r["model"] for r in rows if r["family"] == "certified"}
    assert cert == {"late", "late+crmt"}  # not concat, ooo, nor JR (per-sample weights: no certificate)
    curves = certified_curves(rows)
    assert ("sound", "image+audio") in curves
    for per_model in curves.values():
        for pts in per_model.values():
            accs = [a for _, a in pts]
            assert accs == sorted(accs, reverse=True)  # certified accuracy cannot rise with the radius
    clean = {r["model"]: r["accuracy"] for r in rows if r["condition"] == "clean"}
    for model, pts in curves[("sound", "image+audio")].items():
        assert pts[0][0] == 0.0 and pts[0][1] <= clean[model] + 1e-12


def test_defence_comparison_table_and_report(defended_run):
    rows = read_rows(defended_run)
    summary = json.loads((defended_run / "summary.json").read_text())
    table, cols = defense_rows(rows, summary)
    assert [r["model"] for r in table] == ["late", "late+jr", "late+crmt", "concat", "concat+ooo"]
    assert {"clean", "worst missing", "attack-pgd-each ε2", "adaptive attack", "cost (s)", "flags"} <= set(cols)
    assert all(r["flags"] for r in table)  # every line says its flags ("none" when none)
    html = (defended_run / "report.html").read_text()
    assert "<h2>Defences</h2>" in html and "<h2>Certified accuracy</h2>" in html
    assert (defended_run / "certified_accuracy.png").is_file()


def test_rerun_reads_every_cell_back(defended_run, capsys):
    before = (defended_run / "results.csv").read_text()
    cfg = validate_config(CONFIG)
    run(cfg, defended_run.parent, quiet=False)
    out = capsys.readouterr().out
    assert "late+jr: checkpoint found, skipping the defence" in out
    assert "training" not in out.replace("skipping training", "")
    assert (defended_run / "results.csv").read_text() == before


def test_default_run_has_every_defence():
    cfg = load_config(None)
    assert sorted(d.name for d in cfg.defenses) == sorted(
        ["jr", "crmt", "ooo", "adversarial_training", "mixup", "plain_mixup", "modality_dropout"])
    assert validate_config({}).defenses == []  # a config file gets defences only where it lists them


@pytest.mark.parametrize(
    "defenses, message",
    [
        ([{"name": "jrr"}], "unknown defence 'jrr'"),
        ([{"name": "jr", "params": {"gama": 1.0}}], "defenses.0 (jr)"),
        ([{"name": "jr", "params": {"gamma": -1.0}}], "gamma"),
        ([{"name": "jr", "models": ["fusion9"]}], "defenses.0 (jr).models: 'fusion9' is not a model of the grid"),
        ([{"name": "jr", "models": ["concat"]}], "cannot defend model 'concat'"),
        ([{"name": "jr", "start": "fresh"}], "start: fresh is for training defences"),
        ([{"name": "mixup", "models": ["late"]}, {"name": "mixup", "models": ["late"]}], "used twice"),
        ([{"name": "mixup", "colour": "red"}], "defenses.0.colour: unknown key"),
    ],
)
def test_bad_defence_entries_name_the_problem(defenses, message, toy_data):
    with pytest.raises(ConfigError) as e:
        cfg = validate_config({"models": [{"name": "late"}, {"name": "concat"}], "defenses": defenses})
        check_defenses(cfg, toy_data.spec)
    assert message in str(e.value)
