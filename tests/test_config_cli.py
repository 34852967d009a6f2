import pytest

from mmrobust.bench.config import load_config, validate_config
from mmrobust.cli import main
from mmrobust.errors import ConfigError


def test_default_config_covers_unimodal_and_fusions():
    cfg = load_config(None)
    labels = [m.label for m in cfg.models]
    assert labels == ["unimodal-image", "unimodal-audio", "unimodal-text", "late", "concat", "attention", "gated"]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"epochs": 3}, "epochs: unknown key"),
        ({"train": {"epoch": 3}}, "train.epoch: unknown key"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"threats": {"missing": {"fills": ["median"]}}}, "unknown fill(s) ['median']"),
        ({"dataset": {"size": "huge"}}, "dataset.size"),
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
