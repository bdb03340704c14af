"""Class balancing on the synthetic imbalanced set: natural sampler vs the balancing options.

Every run trains ``configs/demo.yaml`` for the same number of epochs on the same synthetic set
written with the real data's label imbalance (``imbalance="real"``), then tests its best
checkpoint (by ``val/leaderboard``) and reports balanced accuracy per head. Only the option
under study changes between runs; the seed is the same.

    .venv/bin/python -m tests.benchmarks.balancing --epochs 8      (make balancing)

Prints tables and writes ``bench_results/balancing-<epochs>ep.json``. About 40 s per epoch
and run on two cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from jsonargparse import CLI
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mvcli.cli import main
from mvcli.data.synthetic import write_synthetic_dataset
from tests.benchmarks.common import REPO, report, table

CONFIG = REPO / "configs" / "demo.yaml"
# Run name -> options that differ from the natural baseline.
RUNS: dict[str, list[str]] = {
    "natural": [],
    "balanced_offence_severity": ["--data.sampler", "balanced_offence_severity"],
    "balanced_joint": ["--data.sampler", "balanced_joint"],
    "progressive (joint, 5 epochs)": [
        "--data.sampler=progressive",
        "--data.progressive_target=joint",
        "--data.progressive_epochs=5",
    ],
    "weighted loss (sqrt_inverse)": [
        "--model.loss.kind=weighted",
        "--model.loss.class_weighting=sqrt_inverse",
    ],
}


def run(
    data_root: Path = REPO / "data" / "synthetic-imbalanced",
    runs: Path = REPO / "runs" / "balancing",
    epochs: int = 8,
    only: list[str] | None = None,
) -> dict:
    """Train and test each balancing option at equal epochs.

    Args:
        data_root: imbalanced synthetic set (written if absent: 320 Train, 96 Valid, 192 Test).
        runs: folder for the runs' logs and checkpoints.
        epochs: epochs of every run.
        only: run names to run (default: all of ``RUNS``).
    """
    if not (data_root / "Test" / "annotations.json").is_file():
        write_synthetic_dataset(data_root, train=320, valid=96, test=192, imbalance="real")
    counts = {
        split: json.loads((data_root / split / "annotations.json").read_text())["Number of actions"]
        for split in ("Train", "Valid", "Test")
    }
    results = {}
    for name, options in RUNS.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        # Batches of 8, as the table in docs/performance.md (demo.yaml's are 4).
        common = ["--config", str(CONFIG), "--data.root", str(data_root), "--data.batch_size=8"]
        slug = name.split(" ")[0]
        fit = main(
            [
                "fit",
                *common,
                *options,
                f"--trainer.max_epochs={epochs}",
                f"--trainer.logger.init_args.save_dir={runs}",
                f"--trainer.logger.init_args.name={slug}",
                "--trainer.enable_progress_bar=false",
            ]
        )
        log_dir = Path(fit.trainer.log_dir)
        best = fit.trainer.checkpoint_callback.best_model_path
        main(
            [
                "test",
                *common,
                *options,
                f"--ckpt_path={best}",
                "--trainer.logger=false",
                f"--trainer.default_root_dir={log_dir}",
                "--trainer.enable_progress_bar=false",
            ]
        )
        metrics = json.loads((log_dir / "test_metrics.json").read_text())
        results[name] = {
            "test": metrics,
            "val_curves": val_curves(log_dir),
            "minutes": round((time.perf_counter() - start) / 60, 2),
            "log_dir": str(log_dir),
        }
    rows = [
        [
            name,
            r["test"]["test/bacc_offence_severity"],
            r["test"]["test/bacc_action"],
            r["test"]["test/leaderboard"],
            r["test"]["test/acc_offence_severity"],
            r["test"]["test/acc_action"],
        ]
        for name, r in results.items()
    ]
    headers = ["training", "bacc offence-sev.", "bacc action", "leaderboard", "acc o-s", "acc act."]
    curve = "val/bacc_offence_severity"
    shown = range(min(epochs, 6))
    curves = [[name, *(r["val_curves"][curve][e] for e in shown)] for name, r in results.items()]
    report(
        f"balancing-{epochs}ep",
        f"Class balancing, synthetic imbalanced set, {epochs} epochs each",
        {
            "test split (best checkpoint by val/leaderboard)": table(headers, rows),
            f"{curve} after each epoch": table(["training", *map(str, shown)], curves),
        },
        {"epochs": epochs, "actions": counts, "runs": results},
    )
    return results


def val_curves(log_dir: Path) -> dict[str, list[float]]:
    """Per-epoch validation balanced accuracies from a run's TensorBoard events."""
    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = ("val/bacc_offence_severity", "val/bacc_action", "val/leaderboard")
    return {tag: [e.value for e in events.Scalars(tag)] for tag in tags}


if __name__ == "__main__":
    CLI(run, as_positional=False)
