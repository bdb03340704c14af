"""history.json on one short fit (tests/callbacks/conftest.py's long_run); then its deterministic
twin."""

from __future__ import annotations

import json
from pathlib import Path

from mvcli.cli import main
from tests.callbacks.conftest import _groups
from tests.conftest import CONF, CONFIGS, tiny_args


def test_history_has_one_full_record_per_epoch(long_run):
    records = json.loads((Path(long_run.trainer.log_dir) / "history.json").read_text())
    groups = _groups(long_run)
    assert groups == {"heads", "backbone.stem", "backbone.layer1", "backbone.layer2"}
    assert [r["epoch"] for r in records] == [0, 1]  # EarlyStopping: patience 1
    for record in records:
        assert {"train/loss", "train/leaderboard", "val/leaderboard", "val/acc_action"} <= set(
            record
        )
        assert set(record["lr"]) == groups
        # discriminative LR: every stage (all unfrozen here) at the same backbone LR
        assert len({record["lr"][g] for g in groups - {"heads"}}) == 1
        assert record["trainable_fraction"] == 1.0
        speed, views = record["train/actions_per_s"], record["train/views_per_s"]
        assert speed > 0 and views >= speed
        assert 0.0 <= record["train/data_wait_fraction"] <= 1.0
        assert record["epoch_time_s"] >= record["train_time_s"] > 0
        assert record["peak_memory_mb"] > 0 and record["peak_memory_of"].startswith("cpu")
    assert records[0]["lr"]["heads"] == 0.006  # as trained with: the epoch's start
    assert records[1]["lr"]["heads"] < records[0]["lr"]["heads"]  # cosine schedule


def test_two_seeded_deterministic_runs_are_bit_identical(long_run, long_run_args, tmp_path):
    twin = main(["fit", *long_run_args(tmp_path)])
    first, second = long_run.model.state_dict(), twin.model.state_dict()
    assert all((first[k] == second[k]).all() for k in first)
    assert (
        twin.trainer.callback_metrics["val/leaderboard"]
        == (long_run.trainer.callback_metrics["val/leaderboard"])
    )


def test_max_time_stops_the_run(synthetic_root, tmp_path):
    args = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "quick_val.yaml"),
            *tiny_args(synthetic_root, tmp_path),
            "--trainer.max_epochs", "50", "--trainer.max_time", "00:00:00:01"]  # fmt: skip
    cli = main(["fit", *args])
    assert cli.trainer.current_epoch < 49 and cli.trainer.should_stop
    assert (Path(cli.trainer.log_dir) / "checkpoints/last.ckpt").is_file()
