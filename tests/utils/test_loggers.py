"""The logger overlays in configs/, run for real: what each logger holds afterwards."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from mvcli.cli import main
from tests.conftest import CONFIGS, tiny_args

SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]


def _fit(synthetic_root: Path, runs: Path, overlay: str, *extra: str):
    args = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONFIGS / overlay)]
    return main(["fit", *args, *tiny_args(synthetic_root, runs), *SHORT, *extra])


def test_csv_logger(synthetic_root, tmp_path):
    cli = _fit(synthetic_root, tmp_path, "logger_csv.yaml")
    log_dir = Path(cli.trainer.log_dir)
    rows = list(csv.DictReader((log_dir / "metrics.csv").open()))
    columns = set(rows[0])
    wanted = {"train/actions_per_s", "train/data_wait_fraction", "val/leaderboard", "hp_metric"}
    assert wanted <= columns
    assert any(row["hp_metric"] for row in rows)
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert hparams["optimizer"] == "AdamW" and hparams["model/backbone"] == "tiny"
    assert (log_dir / "config.yaml").is_file() and (log_dir / "checkpoints/last.ckpt").is_file()


def test_mlflow_logger_offline(synthetic_root, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cli = _fit(
        synthetic_root,
        tmp_path,
        "logger_mlflow.yaml",
        "--trainer.logger.init_args.tracking_uri",
        uri,
        "--trainer.logger.init_args.artifact_location",
        str(tmp_path / "artifacts"),
    )
    client = MlflowClient(uri)
    run = client.get_run(cli.trainer.logger.run_id)
    assert run.data.params["optimizer"] == "AdamW"
    assert run.data.params["lr_scheduler"] == "CosineToEnd"
    metrics = run.data.metrics
    assert metrics["hp_metric"] == pytest.approx(
        float(cli.trainer.checkpoint_callback.best_model_score)
    )
    assert metrics["train/actions_per_s"] > 0
    images = [a.path for a in client.list_artifacts(run.info.run_id, "val/confusion_action")]
    assert images and images[0].endswith(".png")
    run_dir = tmp_path / run.info.experiment_id / run.info.run_id  # default_root_dir = tmp_path
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints/last.ckpt").is_file()


@pytest.mark.slow  # W&B starts a service process (~15 s); test_cli smoke-runs the overlay
# where wandb is installed (the `wandb` extra; `make test` does not install it)
def test_wandb_logger_offline(synthetic_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cli = _fit(synthetic_root, tmp_path, "logger_wandb.yaml")
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    images = list((run_dirs[0] / "files/media/images/val").glob("confusion_action_*.png"))
    assert images
    assert cli.trainer.logger.experiment.summary["hp_metric"] == pytest.approx(
        float(cli.trainer.checkpoint_callback.best_model_score)
    )
