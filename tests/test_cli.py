"""The CLI through the same entry point users call: main(args)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mvcli import __version__
from mvcli.cli import main
from tests.conftest import CONFIGS, tiny_args

BASE_CONFIGS = {"demo.yaml", "mvfoul.yaml"}  # full recipes; every other file is an overlay


def _config_stack(name: str) -> list[str]:
    if name in BASE_CONFIGS:
        return ["--config", str(CONFIGS / name)]
    return ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONFIGS / name)]


def _log_dir(cli) -> Path:
    return Path(cli.trainer.log_dir)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_shows_argument_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "how the views of an action are combined" in out
    assert "views drawn at random per action in training" in out


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_smoke_runs(name, synthetic_root, tmp_path):
    args = ["fit", *_config_stack(name), *tiny_args(synthetic_root, tmp_path)]
    cli = main([*args, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    assert cli.trainer.state.finished


def test_configs_stack(tmp_path, synthetic_root):
    cli = main([*_config_stack("debug.yaml"), *tiny_args(synthetic_root, tmp_path)], run=False)
    assert cli.config.trainer.fast_dev_run is True  # from the overlay
    assert cli.config.model.backbone == "tiny"  # from demo.yaml


def test_links_carry_data_values_to_the_model(tmp_path, synthetic_root):
    cli = main([*_config_stack("demo.yaml"), *tiny_args(synthetic_root, tmp_path),
                "--data.frames_per_clip", "6", "--data.mean", "[0.5,0.5,0.5]"], run=False)
    hparams = cli.model.hparams
    assert hparams.num_frames == 6
    assert (hparams.img_height, hparams.img_width) == (32, 56)
    assert tuple(hparams.mean) == (0.5, 0.5, 0.5)
    assert hparams.num_classes == {"offence_severity": 4, "action": 8}


def test_env_vars_set_arguments(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.setenv("MVCLI_FIT__DATA__NUM_VIEWS", "3")
    monkeypatch.setenv("MVCLI_FIT__MODEL__BACKBONE", "tiny")
    monkeypatch.setenv("MVCLI_FIT__TRAINER__MAX_EPOCHS", "1")
    monkeypatch.setenv("MVCLI_FIT__TRAINER__LIMIT_VAL_BATCHES", "1")
    cli = main(["fit", *tiny_args(synthetic_root, tmp_path), "--trainer.limit_train_batches", "1"])
    assert cli.datamodule.hparams.num_views == 3
    assert cli.config.fit.seed_everything == 42  # fixed default seed
    assert cli.trainer.current_epoch == 1


def test_backbone_size_error_before_training(tmp_path, synthetic_root):
    args = [*_config_stack("demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    with pytest.raises(ValueError, match="s3d.*frames_per_clip"):
        main([*args, "--model.backbone", "s3d", "--data.frames_per_clip", "4"], run=False)


def test_print_config_reproduces_the_run(tmp_path, synthetic_root, capsys):
    args = [*_config_stack("demo.yaml"), *tiny_args(synthetic_root, tmp_path),
            "--model.pooling", "attention", "--data.num_views", "3"]

    def printed(*argv: str) -> str:
        with pytest.raises(SystemExit):
            main(["fit", *argv, "--print_config"])
        return capsys.readouterr().out

    first = printed(*args)
    config_file = tmp_path / "printed.yaml"
    config_file.write_text(first)
    assert printed("--config", str(config_file)) == first
    config = yaml.safe_load(first)
    assert config["model"]["pooling"] == "attention"
    assert config["model"]["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert config["data"]["num_views"] == 3
    # The printed file runs as is.
    cli = main(["fit", "--config", str(config_file), "--trainer.fast_dev_run", "true"])
    assert cli.trainer.state.finished


def test_fit_validate_test_predict_round_trip(tmp_path, synthetic_root):
    common = [*_config_stack("demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    fit = main(["fit", *common, "--trainer.max_epochs", "2"])
    fit_dir = _log_dir(fit)
    assert (fit_dir / "config.yaml").is_file()
    ckpts = sorted(p.name for p in (fit_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts
    assert any(n.startswith("epoch001-leaderboard") or n.startswith("epoch000-leaderboard")
               for n in ckpts)
    best = fit.trainer.checkpoint_callback.best_model_path
    assert Path(best).is_file()

    names = ["acc_offence_severity", "bacc_offence_severity", "acc_action", "bacc_action",
             "leaderboard", "loss"]
    for stage, prefix in (("validate", "val"), ("test", "test")):
        cli = main([stage, *common, "--ckpt_path", best])
        metrics = json.loads((_log_dir(cli) / f"{stage}_metrics.json").read_text())
        for name in names:
            assert 0.0 <= metrics[f"{prefix}/{name}"] < float("inf"), name
        board = (metrics[f"{prefix}/bacc_offence_severity"] + metrics[f"{prefix}/bacc_action"]) / 2
        assert metrics[f"{prefix}/leaderboard"] == pytest.approx(board)

    out = tmp_path / "preds" / "predictions.json"
    cli = main(["predict", *common, "--ckpt_path", best, "--data.predict_split", "Chall",
                "--prediction_writer.output_path", str(out)])
    preds = json.loads(out.read_text())
    assert len(preds["Actions"]) == 4
    for entry in preds["Actions"].values():
        assert set(entry) == {"Action class", "Offence", "Severity"}
    assert preds["checkpoint"] == best
    assert cli.config_init.predict.return_predictions is False
    with pytest.raises(FileExistsError, match="overwrite"):
        main(["predict", *common, "--ckpt_path", best, "--prediction_writer.output_path", str(out)])
