"""End-to-end checks on the full MM-Digits dataset (the foundation's acceptance points).

Marked ``slow``; CI runs them. The default benchmark is run once per session into a temporary
runs folder, then its results are checked.
"""

import csv
import json

import pytest

import mmrobust as mr
from mmrobust.cli import main

pytestmark = pytest.mark.slow

UNIMODAL = ["unimodal-image", "unimodal-audio", "unimodal-text"]
FUSIONS = ["late", "concat", "attention", "gated"]
DEFENDED = ["late+jr", "late+crmt", "concat+ooo", "concat+at", "concat+mixup", "concat+plain_mixup",
            "concat+modality_dropout"]


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    import torch

    from conftest import DEFAULT_THREADS

    runs = tmp_path_factory.mktemp("runs")
    one = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS)  # as `mmrobust run` runs for a user (the tests pin 1 thread)
    try:
        assert main(["run", "--runs-dir", str(runs), "--quiet"]) == 0
    finally:
        torch.set_num_threads(one)
    return runs / "default"


def read_rows(folder):
    with (folder / "results.csv").open() as f:
        return list(csv.DictReader(f))


def clean_acc(rows):
    return {r["model"]: float(r["accuracy"]) for r in rows if r["condition"] == "clean"}


def test_run_folder_contents(default_run):
    for name in ("config.yaml", "results.csv", "summary.json"):
        assert (default_run / name).is_file()
    summary = json.loads((default_run / "summary.json").read_text())
    assert summary["seed"] == 0
    assert summary["provenance"]["versions"]["torch"]
    assert len(summary["dataset"]["checksum"]) == 64
    assert set(summary["models"]) == set(UNIMODAL + FUSIONS + DEFENDED)
    for label in UNIMODAL + FUSIONS + DEFENDED:
        assert (default_run / "samples" / label / "attack-pgd-each.npz").is_file()
        assert (default_run / "cells" / label / "attack-pgd-each.json").is_file()
    for label in FUSIONS + DEFENDED:
        assert (default_run / "samples" / label / "missing.npz").is_file()
        for m in ("image", "audio", "text"):
            assert (default_run / "cells" / label / f"corruption-{m}.json").is_file()


def test_default_run_covers_attacks_corruptions_and_missing(default_run):
    rows = read_rows(default_run)
    acc = clean_acc(rows)
    assert sum(r["condition"] == "clean" for r in rows) == len(acc)  # one clean row per model
    for label in UNIMODAL + FUSIONS + DEFENDED:
        mine = [r for r in rows if r["model"] == label]
        fams = {r["family"] for r in mine}
        assert {"clean", "attack", "corruption"} <= fams, (label, fams)
        assert next(r for r in mine if r["condition"] == "clean")["threat"] == "clean"
        pgd = [float(r["accuracy"]) for r in mine if r["threat"] == "attack-pgd-each" and r["family"] == "attack"]
        assert len(pgd) == 2 and pgd[1] <= pgd[0] <= acc[label] + 1e-9, (label, pgd)  # robust <= clean, monotone
    summary = json.loads((default_run / "summary.json").read_text())
    for label in FUSIONS:
        head = summary["headline"][label]
        assert head["attacks"]["attack-pgd-each"][1] < head["clean"] - 0.3, (label, head)  # single-source override


def test_accuracy_targets(default_run):
    acc = clean_acc(read_rows(default_run))
    for m in UNIMODAL:
        assert 0.50 <= acc[m] <= 0.88, (m, acc[m])
    best_uni = max(acc[m] for m in UNIMODAL)
    for f in FUSIONS:
        assert acc[f] >= 0.90, (f, acc[f])
        assert acc[f] >= best_uni + 0.05, (f, acc[f], best_uni)


def test_missing_modality_lowers_accuracy_but_late_drop_beats_remaining_unimodal(default_run):
    rows = read_rows(default_run)
    acc = clean_acc(rows)
    uni = {m.split("-")[1]: acc[m] for m in UNIMODAL}
    missing = [r for r in rows if r["family"] == "missing"]
    assert missing
    for r in missing:
        assert float(r["accuracy"]) <= acc[r["model"]] + 1e-9, r
    for gone in uni:
        row = next(r for r in missing if r["model"] == "late" and r["modalities"] == gone and r["fill"] == "drop")
        remaining = max(a for m, a in uni.items() if m != gone)
        assert float(row["accuracy"]) > remaining, (gone, row["accuracy"], remaining)


def test_rerun_resumes_without_recomputing(default_run, capsys):
    before = (default_run / "results.csv").read_text()
    assert main(["run", "--runs-dir", str(default_run.parent)]) == 0
    out = capsys.readouterr().out
    assert out.count("checkpoint found, skipping training") == len(UNIMODAL + FUSIONS)
    assert out.count("checkpoint found, skipping the defence") == len(DEFENDED)
    assert (default_run / "results.csv").read_text() == before
    # a lost cell is recomputed alone, with identical results
    (default_run / "cells" / "late" / "attack-pgd-each.json").unlink()
    assert main(["run", "--runs-dir", str(default_run.parent)]) == 0
    out = capsys.readouterr().out
    assert "late: attack-pgd-each" in out and "concat: attack-pgd-each" not in out
    assert (default_run / "results.csv").read_text() == before


def test_default_run_compares_every_defence_adaptively(default_run):
    rows = read_rows(default_run)
    acc = clean_acc(rows)
    summary = json.loads((default_run / "summary.json").read_text())
    for label in DEFENDED:
        base = label.split("+")[0]
        info = summary["models"][label]
        assert info["base_model"] == base and info["defense"] == label.split("+")[1]
        attack = [r for r in rows if r["model"] == label and r["family"] == "attack"]
        adaptive = info["adaptive"] != "white-box"
        assert all(r["condition"].startswith("worst_case[" if adaptive else "pgd[") for r in attack), label
        assert acc[label] >= acc[base] - 0.05, (label, acc[label], acc[base])  # no defence gives up clean accuracy
    assert summary["models"]["late+jr"]["adaptive"] == "transfer+bpda+full"
    certified = {r["model"] for r in rows if r["family"] == "certified"}
    assert certified == {"unimodal-image", "unimodal-audio", "late", "late+crmt"}
    html = (default_run / "report.html").read_text()
    assert "<h2>Defences</h2>" in html and "<h2>Certified accuracy</h2>" in html


def test_same_seed_same_bytes_full_build(tmp_path):
    a = mr.datasets.load("mmdigits")
    b = mr.datasets.load("mmdigits", cache_dir=tmp_path, rebuild=True)
    assert a.meta["checksum"] == b.meta["checksum"]
    assert b.meta["build_seconds"] <= 120


def test_trained_fusions_raise_no_reliability_flag(default_run):
    """methods.md §8: the normal MM-Digits models raise no flag at default settings."""
    data = mr.datasets.load("mmdigits")
    test = data.test.subset(list(range(200)))
    for name in FUSIONS:
        model = mr.models.load(default_run / "models" / f"{name}.pt")
        conds = [
            mr.attacks.create("pgd", modalities="each", eps=eps, steps=10, token_surface="embedding")
            for eps in (0.02, 0.1)
        ]
        res = mr.evaluate(model, test, conds)
        assert res.flags == [], (name, res.flag_report())
        assert res.accuracy(conds[1].id) <= res.accuracy(conds[0].id) <= res.accuracy()


# ------------------------------------------------------------------------------------ your own model
MMDL_DEFENDED = ["mmdl+ooo", "mmdl+at", "mmdl+mixup", "mmdl+plain_mixup", "mmdl+modality_dropout"]


@pytest.fixture(scope="session")
def multibench_run(tmp_path_factory):
    from pathlib import Path

    runs = tmp_path_factory.mktemp("runs-multibench")
    config = Path(__file__).resolve().parents[1] / "configs" / "multibench.yaml"
    assert main(["run", str(config), "--runs-dir", str(runs), "--quiet"]) == 0
    return runs / "multibench"


def test_multibench_model_meets_every_threat_and_defence(multibench_run, capsys):
    """configs/multibench.yaml: a MultiBench-layout module, trained by mr.train through its declared hooks."""
    rows = read_rows(multibench_run)
    acc = clean_acc(rows)
    assert set(acc) == {"mmdl", *MMDL_DEFENDED}
    assert acc["mmdl"] >= 0.85, acc
    for label in acc:
        mine = [r for r in rows if r["model"] == label]
        assert {r["family"] for r in mine} == {"clean", "missing", "attack", "corruption"}, label
        assert {r["modalities"] for r in mine if r["family"] == "corruption"} == {"image", "audio", "text"}
        pgd = [float(r["accuracy"]) for r in mine if r["threat"] == "attack-pgd-each" and r["family"] == "attack"]
        assert len(pgd) == 2 and pgd[1] <= pgd[0] <= acc[label] + 1e-9, (label, pgd)
    summary = json.loads((multibench_run / "summary.json").read_text())
    assert summary["models"]["mmdl+ooo"]["adaptive"] == "evade+cw+ce"
    assert main(["run", str(multibench_run / "config.yaml"), "--runs-dir", str(multibench_run.parent)]) == 0
    out = capsys.readouterr().out
    assert out.count("checkpoint found, skipping training") == 1
    assert out.count("checkpoint found, skipping the defence") == len(MMDL_DEFENDED)
