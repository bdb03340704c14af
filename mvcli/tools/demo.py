"""The demo: synthetic data -> fit -> test -> predict -> official score -> review page, on CPU.

``make demo`` runs ``python -m mvcli.tools.demo``; every step goes through :func:`mvcli.cli.main`,
the entry point users call.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from jsonargparse import CLI

from mvcli.cli import main
from mvcli.commandline.quiet import quiet_third_party
from mvcli.data.synthetic import write_synthetic_dataset
from mvcli.deploy.review import format_size, write_review
from mvcli.deploy.scoring import score

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def run_demo(
    data_root: Path = Path("data/synthetic"),
    runs: Path = Path("runs"),
    run_config: Path = CONFIG,
    overlay: Path | None = None,
    shuffle_labels: bool = False,
    imbalance: Literal["none", "real"] = "none",
    quirks: bool = False,
    name: str | None = None,
    max_epochs: int | None = None,
) -> dict:
    """Train, test and predict on the synthetic set; print where everything is.

    Args:
        data_root: synthetic dataset folder (written if absent).
        runs: folder for logs, checkpoints and predictions.
        run_config: training config (not ``config``: jsonargparse's ``CLI`` drops an
            argument of that name).
        overlay: a config stacked on ``run_config`` (``configs/demo_hard.yaml``).
        shuffle_labels: train on a copy whose labels are shuffled across actions (written
            beside ``data_root``); the score must then stay near chance.
        imbalance: label frequencies of a dataset written here: ``none`` (balanced) or
            ``real`` (Train and Valid at the real Train split's, red cards ~2%; Test with
            every class, in the real Test split's proportions).
        quirks: a dataset written here gets the real data's annotation quirks.
        name: run name under ``runs`` (default: ``demo``, ``demo-shuffled``).
        max_epochs: override the config's epoch count.
    """
    clock = _Phases()
    data_root = Path(data_root)
    name = name or ("demo-shuffled" if shuffle_labels else "demo")
    if shuffle_labels:
        data_root = data_root.with_name(data_root.name + "-shuffled")
    if not (data_root / "Test" / "annotations.json").is_file():
        print(f"writing synthetic dataset to {data_root} ...")
        write_synthetic_dataset(
            data_root, shuffle_labels=shuffle_labels, imbalance=imbalance, quirks=quirks
        )
        clock.lap("data")
    configs = ["--config", str(run_config)]
    if overlay is not None:
        configs += ["--config", str(overlay)]
    common = [*configs, "--data.root", str(data_root)]
    extra = ["--trainer.max_epochs", str(max_epochs)] if max_epochs else []
    fit = main(
        [
            "fit",
            *common,
            *extra,
            "--trainer.logger.init_args.save_dir",
            str(runs),
            "--trainer.logger.init_args.name",
            name,
        ]
    )
    clock.lap("fit")
    log_dir = Path(fit.trainer.log_dir)
    best = fit.trainer.checkpoint_callback.best_model_path
    # Test writes into a new folder of the checkpoint's run (the CLI's rule for evaluation
    # outputs: <run>/test/<checkpoint stem>/), its logs and config.yaml with it.
    after = [*common, "--ckpt_path", best]
    tested = main(["test", *after])
    clock.lap("test")
    metrics_path = Path(tested.config["test"]["metrics_writer"]["output_dir"])
    metrics_path /= "test_metrics.json"
    predictions = log_dir / "predictions.json"
    main(
        [
            "predict",
            *after,
            "--data.predict_split",
            "Test",
            "--prediction_writer.output_path",
            str(predictions),
            "--prediction_writer.overwrite",
            "true",
        ]
    )
    clock.lap("predict")
    metrics = json.loads(metrics_path.read_text())
    official = score(predictions, data_root / "Test" / "annotations.json")
    review = write_review(predictions, data_root / "Test" / "annotations.json")
    clock.lap("score")
    summary = {
        "minutes": round(clock.total() / 60, 2),
        "seconds": clock.seconds,
        "test": metrics,
        "official": official,
        "log_dir": str(log_dir),
        "checkpoint": best,
        "predictions": str(predictions),
        "review": str(review.path),
        "review_size": review.size,
    }
    (log_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, data_root)
    return summary


class _Phases:
    """Wall-clock seconds of the demo's steps, in order."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 1)
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start


def _print_summary(summary: dict, data_root: Path) -> None:
    test = summary["test"]
    steps = ", ".join(f"{name} {s:.0f} s" for name, s in summary["seconds"].items())
    interval = test.get("test/leaderboard_ci95")  # absent with bootstrap_resamples 0
    ci = f" [{interval[0]:.3f}, {interval[1]:.3f}] 95% interval" if interval else ""
    print(
        f"\ndemo finished in {summary['minutes']:.1f} min ({steps})\n"
        f"  data         {data_root}\n"
        f"  logs         {summary['log_dir']}   (tensorboard --logdir {summary['log_dir']})\n"
        f"  checkpoint   {summary['checkpoint']}\n"
        f"  predictions  {summary['predictions']}\n"
        f"  test         leaderboard {test['test/leaderboard']:.3f}{ci}  "
        f"(balanced acc: offence-severity {test['test/bacc_offence_severity']:.3f}, "
        f"action {test['test/bacc_action']:.3f})\n"
        f"  scored like the official evaluator: leaderboard "
        f"{summary['official']['leaderboard_value']:.1f}\n"
        f"  review page  {summary['review']}   ({format_size(summary['review_size'])}; "
        "open it in a browser: every Test action's views beside the model's answers)"
    )


if __name__ == "__main__":
    quiet_third_party()  # the same quiet start as the `mvcli` command
    CLI(run_demo)
