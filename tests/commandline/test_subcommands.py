"""mvcli's Trainer subcommands (`lr_find`); the tuner callbacks: tests/callbacks/test_tuning.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from mvcli.callbacks.tuning import BETA
from mvcli.cli import main
from mvcli.data.synthetic import write_synthetic_dataset
from tests.conftest import CONFIGS, tiny_args


def _common(root, runs) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(root, runs),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip


def test_lr_find_saves_plot_and_prints_the_yaml_line(synthetic_root, tmp_path, capsys):
    cli = main(["lr_find", *_common(synthetic_root, tmp_path), "--num_training", "14",
                "--early_stop_threshold", "null"])  # fmt: skip
    out = capsys.readouterr().out
    plot = Path(cli.trainer.log_dir) / "lr_find.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {plot}" in out and "suggested heads' LR" in out and "14 LRs tried" in out
    assert "the smoothed loss's minimum" in out
    curve = json.loads((plot.parent / "lr_find.json").read_text())
    assert len(curve["lr"]) == len(curve["loss"]) == len(curve["smoothed_loss"]) == 14
    assert "YAML: model: {optimizer: {init_args: {lr: " in out
    assert "--model.optimizer.init_args.lr " in out


def _lightnings_suggestion(lrs: list[float], raw: list[float]) -> float:
    """Lightning's own rule on its own curve (its smoothing one step off, steepest gradient in
    LR units past the first 10 points): what `lr_find` suggested before."""
    avg, smoothed = 0.0, []
    for k, loss in enumerate(raw):
        avg = BETA * avg + (1 - BETA) * loss
        smoothed.append(avg / (1 - BETA ** (k + 2)))
    gradient = torch.gradient(torch.tensor(smoothed[10:-1]), spacing=[torch.tensor(lrs[10:-1])])
    return lrs[10 + int(torch.argmin(gradient[0]))]


def test_lr_find_on_the_demo_suggests_near_the_lr_that_trains_it(tmp_path, capsys):
    # The demo's clips (configs/demo.yaml's geometry, write_synthetic_dataset's defaults) on
    # fewer actions, batches of 4 and 40 LRs over the default range (about 40 s): Lightning's
    # rule lands on its curve's rise at tiny LRs; the corrected curve's suggestion lies within
    # 10x of the demo's 6e-3 (which trains it to a test leaderboard of 1.000).
    root = tmp_path / "demo"
    write_synthetic_dataset(root, train=48, valid=8, test=8, chall=0, seed=0)
    cli = main(["lr_find", "--config", str(CONFIGS / "demo.yaml"), "--data.root", str(root),
                "--data.num_workers", "0", "--data.batch_size", "4",
                "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                "--trainer.default_root_dir", str(tmp_path / "runs"),
                "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
                "--num_training", "40"])  # fmt: skip
    out = capsys.readouterr().out
    suggestion = float(re.search(r"suggested heads' LR (\S+)", out).group(1))
    assert 6e-4 <= suggestion <= 6e-2, out
    folder = Path(cli.trainer.log_dir)
    assert (folder / "lr_find.png").is_file()
    curve = json.loads((folder / "lr_find.json").read_text())
    assert curve["suggestion"] == pytest.approx(suggestion, rel=1e-2) and len(curve["lr"]) == 40
    assert curve["lr_at_minimum"] == pytest.approx(10 * curve["suggestion"], rel=0.5)
    # The run reproduces the artefact: Lightning's own suggestion from the same losses.
    assert _lightnings_suggestion(curve["lr"], curve["loss"]) < 6e-4
