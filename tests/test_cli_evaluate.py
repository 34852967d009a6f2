"""``mmrobust evaluate`` with attacks, corruptions and missing modalities; condition spec strings."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import copy_of
from mmrobust.attacks.parse import parse_condition, parse_spec, parse_value
from mmrobust.cli import main
from mmrobust.errors import InputError, UnknownNameError


def test_parse_values_and_specs():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("1e-3") == 1e-3
    assert parse_value("true") is True and parse_value("None") is None
    assert parse_value("image+audio") == ["image", "audio"]
    assert parse_value("image:0.1/audio:2") == {"image": 0.1, "audio": 2}
    assert parse_spec("pgd:eps=0.1,steps=5") == ("pgd", {"eps": 0.1, "steps": 5})
    atk = parse_condition("pgd:modalities=image+audio,eps=image:0.1/audio:0.05,steps=5")
    assert atk.modalities == ["image", "audio"] and atk.eps == {"image": 0.1, "audio": 0.05}
    # the id renders the same values back
    assert "eps=image:0.1/audio:0.05" in atk.id


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("pgd:eps=0.1,stpes=3", InputError, "Did you mean 'steps'"),
        ("pgdd:eps=0.1", UnknownNameError, "Did you mean 'pgd'"),
        ("pgd:eps", InputError, "write key=value"),
        ("pgd:eps=-1", InputError, ">= 0"),
        ("pgd:eps=0.1,eps=0.2", InputError, "given twice"),
        ("", InputError, "empty condition spec"),
    ],
)
def test_bad_spec_strings(text, error, message):
    with pytest.raises(error, match=message):
        parse_condition(text)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, mmdigits_tiny_cache):
    import os

    folder = tmp_path_factory.mktemp("cli")
    old = os.environ.get("MMROBUST_CACHE")
    os.environ["MMROBUST_CACHE"] = str(copy_of(mmdigits_tiny_cache, tmp_path_factory, "cli-cache"))
    ckpt = folder / "late.pt"
    assert main(["train", "--model", "late", "--size", "tiny", "--epochs", "2", "--out", str(ckpt), "--quiet"]) == 0
    yield ckpt
    if old is None:
        os.environ.pop("MMROBUST_CACHE", None)
    else:
        os.environ["MMROBUST_CACHE"] = old


def test_evaluate_attacks_corruptions_missing(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main([
        "evaluate", str(checkpoint), "--quiet", "--out", str(out),
        "--attack", "pgd:modalities=audio,steps=3", "--attack", "fgsm:modalities=each,token_surface=embedding",
        "--eps", "0.02,0.1", "--corruptions", "image", "--severities", "1,5", "--missing", "text",
        "--fills", "zeros",
    ])
    assert code == 0
    text = capsys.readouterr().out
    assert "pgd[audio|eps=0.02,steps=3]" in text  # short labels in the table
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    conds = [r["condition"] for r in rows]
    assert conds[0] == "clean"
    assert sum(c.startswith("pgd[audio|") for c in conds) == 2  # the eps grid
    assert sum(c.startswith("fgsm[each|") for c in conds) == 2
    assert sum(c.startswith("corruption[image|") for c in conds) == 12  # 6 kinds x 2 severities
    assert sum(c.startswith("missing[text|") for c in conds) == 1
    assert {"label", "flags", "attack_success_rate"} <= set(rows[0])
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert "flags" in summary and "provenance" in summary
    assert summary["provenance"]["cpu"].endswith(" cores")  # results depend on the CPU family: recorded
    import numpy as np

    samples = np.load(out / "samples.npz")
    assert any(k.startswith("info__fgsm[each") and k.endswith("success__audio") for k in samples.files)


def test_evaluate_the_standard_evaluation(checkpoint, tmp_path, capsys):
    out = tmp_path / "auto"
    assert main(["evaluate", str(checkpoint), "--quiet", "--out", str(out), "--no-checks",
                 "--attack", "auto:modalities=audio,version=fast", "--eps", "0.05"]) == 0
    assert "auto[audio|eps=0.05,version=fast" in capsys.readouterr().out
    with (out / "results.csv").open() as f:
        rows = {r["condition"]: r for r in csv.DictReader(f)}
    (cid,) = [c for c in rows if c.startswith("auto[")]
    assert float(rows[cid]["accuracy"]) < float(rows["clean"]["accuracy"])
    import numpy as np

    samples = np.load(out / "samples.npz")
    broken = samples[next(k for k in samples.files if k.startswith("info__auto") and k.endswith("broken_by"))]
    assert set(np.unique(broken)) <= {-2, -1, 0, 1, 2} and (broken >= 0).any()
    assert any(k.endswith("queries__square") for k in samples.files)  # Square's queries per sample


def test_evaluate_preference_certificates_geometry(checkpoint, tmp_path, capsys):
    out = tmp_path / "extras"
    code = main([
        "evaluate", str(checkpoint), "--quiet", "--out", str(out), "--no-checks",
        "--preference", "image:0.1/audio:0.05/text:0.5", "--certify", "both", "--radii", "0,0.05,0.2",
        "--geometry",
    ])
    assert code == 0
    text = capsys.readouterr().out
    assert "modality preference" in text and "CRMT's finding" in text and "certified accuracy" in text
    with (out / "preference.csv").open() as f:
        pref = list(csv.DictReader(f))
    assert [r["modality"] for r in pref] == ["image", "audio", "text"]
    assert sum(r["preferred"] == "True" for r in pref) == 1
    with (out / "certified.csv").open() as f:
        cert = list(csv.DictReader(f))
    assert {r["lipschitz"] for r in cert} == {"sound", "empirical"}
    for kind in ("sound", "empirical"):
        joint = [float(r["certified_accuracy"]) for r in cert if r["lipschitz"] == kind and "joint" in r["perturbed"]]
        assert len(joint) == 3 and joint == sorted(joint, reverse=True)  # non-increasing in the radius
    sound = {(r["perturbed"], r["radius"]): float(r["certified_accuracy"]) for r in cert if r["lipschitz"] == "sound"}
    emp = {(r["perturbed"], r["radius"]): float(r["certified_accuracy"]) for r in cert if r["lipschitz"] == "empirical"}
    assert all(sound[k] <= emp[k] + 1e-12 for k in sound)  # a sound bound is never tighter than the estimate
    with (out / "geometry.csv").open() as f:
        geo = list(csv.DictReader(f))
    assert {"fused", "image", "audio", "text"} <= {r["space"] for r in geo}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preference"]["preferred"] in ("image", "audio", "text")
    assert len(summary["certified"]) == len(cert) and "geometry" in summary


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preference", "image:-1/audio:0.1"], ">= 0"),
        (["--preference", "video:0.1"], "unknown modality"),
        (["--certify", "sound", "--radii", "a,b"], "--radii must be"),
        (["--attack", "pgd:modalities=audo,eps=0.1"], "unknown modality 'audo'"),
        (["--attack", "pgd:eps=0.1,stpes=3"], "Did you mean 'steps'"),
        (["--attack", "pgd:modalities=text,eps=0.1"], "token ids"),
        (["--attack", "fgsm:modalities=audio,eps=1,norm=l0"], "unsupported norm"),
        (["--corruptions", "smell"], "unknown modality 'smell'"),
        (["--corruptions", "image", "--severities", "9"], "severity"),
        (["--attack", "pgd:modalities=audio", "--eps", "big"], "must be a number"),
    ],
)
def test_evaluate_bad_input_is_one_line(checkpoint, capsys, args, message):
    assert main(["evaluate", str(checkpoint), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_train_with_defenses_then_evaluate(checkpoint, tmp_path, capsys):
    import mmrobust as mr

    out = tmp_path / "late+dropout.pt"
    assert main(["train", "--from", str(checkpoint), "--size", "tiny", "--defense",
                 "modality_dropout:p=0.5,epochs=1,train=lr:0.001/batch_size:32", "--out", str(out), "--quiet"]) == 0
    model = mr.models.load(out)
    assert model.config["defense"]["name"] == "modality_dropout" and model.config["defense"]["params"]["p"] == 0.5
    assert model.config["defense"]["params"]["train"] == {"batch_size": 32, "lr": 0.001}  # a nested train dict
    jr_out = tmp_path / "late+jr.pt"
    assert main(["train", "--from", str(checkpoint), "--size", "tiny", "--defense", "jr:gamma=0.1",
                 "--out", str(jr_out), "--quiet"]) == 0
    jr = mr.models.load(jr_out)
    assert jr.fusion_name == "jr" and jr.config["defense"]["name"] == "jr"
    capsys.readouterr()
    assert main(["evaluate", str(jr_out), "--quiet", "--no-checks",
                 "--attack", "pgd:modalities=audio,eps=0.05,steps=2"]) == 0
    assert "pgd[audio|" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "late", "--defense", "jr"], "training-free"),
        (["--model", "late", "--defense", "crmtt"], "Did you mean 'crmt'"),
        (["--model", "late", "--defense", "mixup", "--epochs", "3"], "inside the defence spec"),
        (["--model", "concat", "--defense", "crmt:epochs=1"], "late-fusion"),
        (["--model", "late", "--defense", "crmt:epochs=1,lr=0.001,batch_size=32"],
         "crmt takes lr, batch_size inside train (a TrainConfig dict): write --defense "
         "crmt:train=lr:0.001/batch_size:32"),
        (["--model", "late", "--defense", "crmt:train=lrr:0.001"], "crmt: unknown train setting 'lrr'"),
        (["--defense", "mixup"], "give --model NAME"),
    ],
)
def test_train_defense_errors_are_one_line(checkpoint, capsys, args, message):
    assert main(["train", "--size", "tiny", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
