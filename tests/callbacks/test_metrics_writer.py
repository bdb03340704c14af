"""MetricsWriter: validate_metrics.json / test_metrics.json, where the CLI points it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from mvcli.cli import main
from mvcli.data.taxonomy import HEADS


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


def test_test_reports_bootstrap_intervals_and_support(trained, tmp_path, caplog):
    common, fit = trained
    best = fit.trainer.checkpoint_callback.best_model_path
    seeded = ["--metrics_writer.bootstrap_resamples", "300", "--metrics_writer.bootstrap_seed", "3"]
    runs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        main(["test", *common, "--ckpt_path", best, "--output_dir", str(out), *seeded])
        runs.append(json.loads((out / "test_metrics.json").read_text()))
    metrics = runs[0]
    # Seeded: the same intervals on the same predictions.
    assert {k: v for k, v in metrics.items() if k.endswith("_ci95")} == {
        k: v for k, v in runs[1].items() if k.endswith("_ci95")
    }
    for name in ("bacc_offence_severity", "bacc_action", "leaderboard"):
        low, high = metrics[f"test/{name}_ci95"]
        assert 0.0 <= low <= metrics[f"test/{name}"] <= high <= 1.0, name
    # Support per class: every counted test action, as the per-class table counts them.
    rows = list(csv.DictReader((tmp_path / "a" / "test_per_class.csv").open()))
    for head, names in HEADS.items():
        support = metrics[f"test/support_{head}"]
        assert list(support) == list(names)
        assert support == {r["class"]: int(r["support"]) for r in rows if r["head"] == head}
    markdown = (tmp_path / "a" / "test_metrics.md").read_text()
    low, high = metrics["test/leaderboard_ci95"]
    row = f"| test/leaderboard | {metrics['test/leaderboard']:.4f} | [{low:.4f}, {high:.4f}] |"
    assert row in markdown.splitlines()
    assert f"| action | Tackling | {metrics['test/support_action']['Tackling']} |" in markdown
    # The console table: value and interval per metric, the supports.
    assert "95% interval" in caplog.text
    assert "test/leaderboard" in caplog.text and f"[{low:.4f}, {high:.4f}]" in caplog.text
    assert "support offence_severity: No offence " in caplog.text
    assert (
        f"wrote {tmp_path / 'a' / 'test_metrics.json'}, {tmp_path / 'a' / 'test_metrics.md'}"
        in caplog.text
    )


def test_no_resamples_no_intervals(trained, tmp_path):
    common, fit = trained
    best = fit.trainer.checkpoint_callback.best_model_path
    args = ["--output_dir", str(tmp_path), "--metrics_writer.bootstrap_resamples", "0"]
    main(["test", *common, "--ckpt_path", best, *args])
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert not any("_ci" in k for k in metrics)
    assert sum(metrics["test/support_action"].values()) > 0
