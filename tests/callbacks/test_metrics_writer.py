"""MetricsWriter: validate_metrics.json / test_metrics.json, where the CLI points it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mvcli.cli import main


def _log_dir(cli) -> Path:
    return Path(cli.trainer.log_dir)


@pytest.mark.parametrize(("stage", "prefix"), [("validate", "val"), ("test", "test")])
def test_validate_and_test_write_metrics(trained, stage, prefix):
    common, fit = trained
    best = Path(fit.trainer.checkpoint_callback.best_model_path)
    cli = main([stage, *common, "--ckpt_path", str(best)])
    # Written into a new folder of the run the checkpoint came from, its logs with them.
    folder = _log_dir(cli)
    assert folder.parent == _log_dir(fit) / stage and folder.name.startswith(best.stem)
    metrics = json.loads((folder / f"{stage}_metrics.json").read_text())
    assert metrics.pop("checkpoint") == str(best.resolve())  # what produced them
    split = "Valid" if stage == "validate" else "Test"
    assert metrics.pop("data") == str(fit.datamodule.root / split)
    names = [
        "acc_offence_severity",
        "bacc_offence_severity",
        "acc_action",
        "bacc_action",
        "leaderboard",
        "loss",
    ]
    for name in names:
        assert 0.0 <= metrics[f"{prefix}/{name}"] < float("inf"), name
    board = (metrics[f"{prefix}/bacc_offence_severity"] + metrics[f"{prefix}/bacc_action"]) / 2
    assert metrics[f"{prefix}/leaderboard"] == pytest.approx(board)


def test_an_explicit_output_dir_gets_the_file_and_is_in_the_config(trained, tmp_path):
    common, fit = trained
    best = fit.trainer.checkpoint_callback.best_model_path
    out = tmp_path / "elsewhere"
    cli = main(["test", *common, "--ckpt_path", best, "--output_dir", str(out)])
    assert json.loads((out / "test_metrics.json").read_text())["test/leaderboard"] >= 0.0
    saved = yaml.safe_load((_log_dir(cli) / "config.yaml").read_text())
    assert saved["metrics_writer"]["output_dir"] == str(out)


def test_a_fit_writes_no_metrics_file(synthetic_root, tmp_path):
    from tests.conftest import CONFIGS, tiny_args

    runs = tmp_path / "runs"
    fit = main(
        ["fit", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, runs),
         "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
    )  # fmt: skip
    assert not list(_log_dir(fit).glob("*_metrics.json"))
