"""mvcli 0.1's flat loss keys (``model.loss: weighted``, ``model.label_smoothing``, ...) parse
as the ``model.loss`` section they became, with one warning naming old -> new."""

from __future__ import annotations

import warnings

import pytest
import yaml

from mvcli.cli import checkpoint_defaults, main
from mvcli.commandline.renamed import translate_args, translate_config

OLD_ARGS = ["--model.loss", "{offence_severity: focal, action: weighted}",
            "--model.label_smoothing=0.1", "--model.focal_gamma", "1.5",
            "--model.class_weighting", "effective_number", "--model.effective_beta", "0.99",
            "--model.max_weight_ratio", "8", "--model.allow_double_balancing", "true",
            "--model.task_weights", "{offence_severity: 1.0, action: 2.0}",
            "--model.focal_alpha", "{offence_severity: class_weights}"]  # fmt: skip
NEW_ARGS = ["--model.loss.kind", "{offence_severity: focal, action: weighted}",
            "--model.loss.label_smoothing=0.1", "--model.loss.focal_gamma", "1.5",
            "--model.loss.class_weighting", "effective_number",
            "--model.loss.effective_beta", "0.99", "--model.loss.max_weight_ratio", "8",
            "--model.loss.allow_double_balancing", "true",
            "--model.loss.task_weights", "{offence_severity: 1.0, action: 2.0}",
            "--model.loss.focal_alpha", "{offence_severity: class_weights}"]  # fmt: skip
OLD_YAML = {
    "model": {
        "backbone": "tiny",
        "loss": "weighted",
        "label_smoothing": 0.1,
        "class_weighting": "sqrt_inverse",
        "max_weight_ratio": 5.0,
    }
}
NEW_YAML = {
    "model": {
        "backbone": "tiny",
        "loss": {
            "kind": "weighted",
            "label_smoothing": 0.1,
            "class_weighting": "sqrt_inverse",
            "max_weight_ratio": 5.0,
        },
    }
}


def _parsed(args: list[str], capsys) -> dict:
    """The config ``mvcli fit`` would run with (printed, nothing built)."""
    with pytest.raises(SystemExit):
        main(["fit", "--data.root", "data", *args, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    config.pop("config", None)  # the files given, which differ by name
    return config


def _no_warning(args: list[str], capsys) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        return _parsed(args, capsys)


def test_old_options_parse_as_the_new_section_with_one_warning(capsys):
    new = _no_warning(NEW_ARGS, capsys)
    with pytest.warns(FutureWarning) as record:
        old = _parsed(OLD_ARGS, capsys)
    assert old == new
    assert new["model"]["loss"]["kind"] == {"offence_severity": "focal", "action": "weighted"}
    messages = [str(w.message) for w in record if "renamed options" in str(w.message)]
    assert len(messages) == 1
    assert "--model.label_smoothing -> --model.loss.label_smoothing" in messages[0]
    assert "--model.loss -> --model.loss.kind" in messages[0]


def test_old_config_file_parses_as_the_new_section_with_one_warning(tmp_path, capsys):
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(OLD_YAML))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(NEW_YAML))
    new = _no_warning(["--config", str(tmp_path / "new.yaml")], capsys)
    with pytest.warns(FutureWarning, match=r"old\.yaml.*model\.loss -> model\.loss\.kind") as rec:
        old = _parsed(["--config", str(tmp_path / "old.yaml")], capsys)
    assert old == new
    assert new["model"]["loss"]["label_smoothing"] == 0.1
    assert sum("renamed options" in str(w.message) for w in rec) == 1


def test_new_forms_are_left_alone():
    args = ["--model.loss.kind", "focal", "--model.loss", "loss.yaml", "--model.backbone", "x"]
    assert translate_args(args) == (args, [])
    assert translate_config(NEW_YAML) == (NEW_YAML, [])
    # Flat keys of a dict of arguments, and a config nested under its subcommand.
    flat, renames = translate_config({"model.loss": "plain", "model.label_smoothing": 0.2})
    assert flat == {"model.loss.kind": "plain", "model.loss.label_smoothing": 0.2}
    nested, _ = translate_config({"fit": OLD_YAML})
    assert nested == {"fit": NEW_YAML}


def test_a_0_1_checkpoint_gives_its_loss_settings_under_the_new_keys(old_run):
    defaults = checkpoint_defaults(old_run / "checkpoints/last.ckpt")
    assert defaults["model.loss.label_smoothing"] == 0.1
    assert not any(k in defaults for k in ("model.label_smoothing", "model.task_weights"))
