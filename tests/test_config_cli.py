import pytest

from mmrobust.bench.config import load_config, validate_config
from mmrobust.cli import main
from mmrobust.errors import ConfigError


def test_default_config_covers_unimodal_and_fusions():
    cfg = load_config(None)
    labels = [m.label for m in cfg.models]
    assert labels == ["unimodal-image", "unimodal-audio", "unimodal-text", "late", "concat", "attention", "gated"]


def test_shipped_configs_validate_and_standard_eval_is_the_default_plus_auto():
    """configs/*.yaml load; standard_eval.yaml is the default benchmark with one `auto` entry added."""
    from pathlib import Path

    from mmrobust.bench.config import default_config

    folder = Path(__file__).resolve().parents[1] / "configs"
    shipped = sorted(folder.glob("*.yaml"))
    assert {p.name for p in shipped} >= {"smoke.yaml", "multibench.yaml", "standard_eval.yaml"}
    for p in shipped:
        load_config(p)
    std, default = load_config(folder / "standard_eval.yaml"), default_config()
    assert std.name == "standard_eval"
    assert std.model_dump(exclude={"name", "threats"}) == default.model_dump(exclude={"name", "threats"})
    assert std.threats.model_dump(exclude={"attacks"}) == default.threats.model_dump(exclude={"attacks"})
    assert std.threats.attacks[:-1] == default.threats.attacks  # the default run's cells are read back
    auto = std.threats.attacks[-1]
    assert (auto.name, auto.modalities, auto.params) == ("auto", "each", {"version": "fast"})
    assert auto.eps == default.threats.attacks[0].eps


@pytest.mark.parametrize(
    "data, message",
    [
        ({"epochs": 3}, "epochs: unknown key"),
        ({"train": {"epoch": 3}}, "train.epoch: unknown key"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"threats": {"missing": {"fills": ["median"]}}}, "unknown fill(s) ['median']"),
        ({"dataset": {"size": "huge"}}, "dataset.size"),
        ({"threats": {"attacks": [{"name": "pgdd", "eps": [0.1]}]}}, "unknown attack 'pgdd'"),
        ({"threats": {"attacks": [{"name": "pgd", "eps": ["big"]}]}}, "threats.attacks.0.eps"),
        ({"threats": {"attacks": [{"name": "pgd", "eps": [-0.1]}]}}, "eps must be >= 0"),
        ({"threats": {"attacks": [{"name": "pgd", "eps": []}]}}, "threats.attacks.0.eps"),
        ({"threats": {"attacks": [{"name": "pgd", "eps": [0.1], "steps": 3}]}}, "threats.attacks.0.steps: unknown key"),
        ({"threats": {"corruptions": {"severities": [7]}}}, "severities must be"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        validate_config(data, "x.yaml")
    assert message in str(e.value)


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: [{name: late, colour: red}]\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "models.0.colour: unknown key" in err and "Traceback" not in err
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    assert main(["run", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "train", "evaluate", "run", "report"):
        assert cmd in out


@pytest.mark.parametrize(
    "threats, message",
    [
        ({"attacks": [{"name": "pgd", "modalities": ["video"], "eps": [0.1]}]},
         "threats.attacks.0.modalities: 'video' is not a modality"),
        ({"attacks": [{"name": "pgd", "eps": [{"smell": 0.1}]}]}, "threats.attacks.0.eps.0: 'smell'"),
        ({"attacks": [{"name": "pgd", "eps": [0.1], "params": {"stpes": 3}}]}, "Did you mean 'steps'"),
        ({"attacks": [{"name": "pgd", "eps": [0.1]}, {"name": "pgd", "eps": [0.2]}]}, "duplicate threat ids"),
        ({"corruptions": {"modalities": ["video"]}}, "threats.corruptions.modalities: 'video'"),
        ({"corruptions": {"kinds": ["fog"]}}, "unknown kind(s) ['fog']"),
        ({"missing": {"modalities": ["video"]}}, "threats.missing.modalities: 'video'"),
    ],
)
def test_threats_are_checked_against_the_dataset(threats, message, toy_data):
    from mmrobust.bench.threats import check_threats

    cfg = validate_config({"threats": threats})
    with pytest.raises(ConfigError) as e:
        check_threats(cfg, toy_data.spec)
    assert message in str(e.value)


def test_threat_groups_per_model(toy_data):
    import mmrobust as mr
    from mmrobust.bench.threats import threat_groups

    cfg = validate_config({"threats": {
        "attacks": [{"name": "pgd", "eps": [{"image": 0.1, "audio": 0.2, "text": 0.5}, 0.3]},
                    {"name": "fgsm", "modalities": ["audio"], "eps": [0.1]}],
        "corruptions": {"kinds": ["gaussian_noise", "noise"], "severities": [1, 5]},
    }})
    late = mr.models.create("late", toy_data.spec, embed_dim=8)
    groups = {g.key: g for g in threat_groups(late, cfg)}
    assert list(groups) == ["missing", "attack-pgd-each", "attack-fgsm-audio", "corruption-image",
                            "corruption-audio"]  # no text kind listed
    pgd = groups["attack-pgd-each"].conditions
    assert [c.eps for c in pgd] == [{"image": 0.1, "audio": 0.2, "text": 0.5}, 0.3]
    assert all(c.threat.token_surface == "embedding" for c in pgd)  # text attacked through its embeddings
    assert [c.severity for c in groups["corruption-image"].conditions] == [1, 5]
    uni = mr.models.create("unimodal", toy_data.spec, modality="image", embed_dim=8)
    ugroups = {g.key: g for g in threat_groups(uni, cfg)}
    assert list(ugroups) == ["attack-pgd-each", "corruption-image"]  # no missing, no audio attack
    assert ugroups["attack-pgd-each"].conditions[0].eps == {"image": 0.1}  # radii restricted to the model
