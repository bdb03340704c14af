"""mvcli's Trainer subcommands (`lr_find`); the tuner callbacks: tests/callbacks/test_tuning.py."""

from __future__ import annotations

from pathlib import Path

from mvcli.cli import main
from tests.conftest import CONFIGS, tiny_args


def _common(root, runs) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(root, runs),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip


def test_lr_find_saves_plot_and_prints_the_yaml_line(synthetic_root, tmp_path, capsys):
    # Lightning's suggestion skips the first 10 and the last point: 14 leave it 3.
    cli = main(["lr_find", *_common(synthetic_root, tmp_path), "--num_training", "14",
                "--early_stop_threshold", "null"])  # fmt: skip
    out = capsys.readouterr().out
    plot = Path(cli.trainer.log_dir) / "lr_find.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {plot}" in out and "suggested heads' LR" in out and "14 LRs tried" in out
    assert "YAML: model: {optimizer: {init_args: {lr: " in out
    assert "--model.optimizer.init_args.lr " in out
