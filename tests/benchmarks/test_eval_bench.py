"""Evaluation benchmark: masked multi-view batches vs one action at a time.

Actions have 2-4 views; mvcli pads them into one batch with a view mask (padded views are
never run through the backbone), where the reference baseline evaluated one action per batch.
Same model (``tiny`` backbone, 16x64x112, eval mode), same actions (a synthetic Test split,
pre-collated in memory: no decoding), CPU, one thread:

* forward only: ``module(video, view_mask)`` under ``torch.inference_mode``;
* ``trainer.validate``: the whole evaluation loop (metrics, logging, progress bar).

The per-action logits must be equal (asserted) whatever the batching, and so must the
validation metrics.

Test-time augmentation (``data.tta``): ``trainer.validate`` through the data module's own
loader (decoding in the main process, or reading a pre-built clip cache), without and with
the flip, 3 windows and both, side by side; actions/s and the ratio to no augmentation.
"""

from __future__ import annotations

import time

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from mvcli.cli import main
from mvcli.data.synthetic import write_synthetic_dataset
from tests.benchmarks.common import env_int, goal, interleaved, median, report, table
from tests.conftest import CONFIGS

pytestmark = pytest.mark.bench

BATCHED_VS_ONE_GOAL = 3.0
BATCH_SIZES = (1, 2, 4, 8)


class EpochTimer(Callback):
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def _cli(root, runs, batch_size: int, *extra: str):
    return main(
        [
            "--config", str(CONFIGS / "demo.yaml"),
            "--data.root", str(root),
            "--data.center_frame", "12",
            "--data.num_workers", "0",
            "--data.cache_dir", "null",  # uncached decoding, as in the figures
            "--data.eval_batch_size", str(batch_size),
            "--trainer.default_root_dir", str(runs),
            "--trainer.logger.init_args.save_dir", str(runs),
            "--trainer.enable_model_summary", "false",
            *extra,
        ],
        run=False,
    )  # fmt: skip


def test_eval_batching(tmp_path, one_thread):
    rounds = env_int("ROUNDS", 3)
    root = tmp_path / "data"
    write_synthetic_dataset(root, train=4, valid=env_int("ACTIONS", 24), test=4, chall=1,
                            num_frames=24, event_frame=12, seed=5)  # fmt: skip
    loaders, model = {}, None
    for size in BATCH_SIZES:
        cli = _cli(root, tmp_path, size)
        cli.datamodule.setup("validate")
        loaders[size] = list(cli.datamodule.val_dataloader())
        model = model or cli.model.eval()
    actions = sum(len(b["action_id"]) for b in loaders[1])
    views = sum(int(b["view_mask"].sum()) for b in loaders[1])

    def forward(batches):
        with torch.inference_mode():
            return [model(b["video"], b["view_mask"]) for b in batches]

    # Same logits per action, whatever the batching.
    outs = {size: forward(batches) for size, batches in loaders.items()}
    for head in model.heads:
        single = torch.cat([o[head] for o in outs[1]])
        for size in BATCH_SIZES:
            batched = torch.cat([o[head] for o in outs[size]])
            torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)

    fwd = interleaved({n: (lambda b=b: forward(b)) for n, b in loaders.items()}, rounds)
    fwd_rate = {size: actions / median(s) for size, s in fwd.items()}

    validate_s: dict[int, list[float]] = {size: [] for size in loaders}
    metrics = {}
    for _ in range(rounds):
        for size, batches in loaders.items():
            timer = EpochTimer()
            cli = _cli(root, tmp_path, size)
            cli.trainer.callbacks.append(timer)
            cli.model.load_state_dict(model.state_dict())
            loader = DataLoader(batches, batch_size=None, collate_fn=dict)
            metrics[size] = cli.trainer.validate(cli.model, loader, verbose=False)[0]
            validate_s[size].append(timer.seconds)
    for size in BATCH_SIZES:
        for key, value in metrics[1].items():
            assert metrics[size][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (size, key)
    val_rate = {size: actions / median(s) for size, s in validate_s.items()}

    rows = [
        [size, fwd_rate[size], fwd_rate[size] / fwd_rate[1], val_rate[size],
         val_rate[size] / val_rate[1]]
        for size in BATCH_SIZES
    ]  # fmt: skip
    at_8 = val_rate[8] / val_rate[1]
    best = max(BATCH_SIZES[1:], key=val_rate.__getitem__)
    caption = (
        f"tiny backbone, 16x64x112, {actions} actions ({views} views), CPU (1 thread), "
        f"median of {rounds}:"
    )
    tables = {
        caption: table(
            ["actions per batch", "forward actions/s", "x", "validate actions/s", "x"], rows
        ),
        "Goal:": table(
            ["ratio", "value", "goal"],
            [
                ["batch 8 / batch 1 (validate)", at_8, goal(at_8, BATCHED_VS_ONE_GOAL)],
                [f"best batch ({best}) / batch 1 (validate)", val_rate[best] / val_rate[1],
                 goal(val_rate[best] / val_rate[1], BATCHED_VS_ONE_GOAL)],
            ],
        ),
    }  # fmt: skip
    report(
        "eval",
        "Evaluation benchmark",
        tables,
        {"actions": actions, "views": views, "forward_actions_per_s": fwd_rate,
         "validate_actions_per_s": val_rate, "validate_seconds": validate_s},
    )  # fmt: skip


TTA = {
    "none": [],
    "flip": ["--data.tta.flip", "true"],
    "3 windows": ["--data.tta.window_offsets", "[-4,0,4]"],
    "flip + 3 windows": ["--data.tta.flip", "true", "--data.tta.window_offsets", "[-4,0,4]"],
}


def test_eval_tta_cost(tmp_path, one_thread):
    rounds = env_int("ROUNDS", 3)
    root = tmp_path / "data"
    write_synthetic_dataset(root, train=4, valid=env_int("ACTIONS", 24), test=4, chall=1,
                            num_frames=24, event_frame=12, seed=5)  # fmt: skip
    sources = {"decoded": ["--data.cache_dir", "null"],
               "cached": ["--data.cache_dir", str(tmp_path / "cache")]}  # fmt: skip
    clis, model = {}, None
    for source, where in sources.items():
        for name, options in TTA.items():
            cli = _cli(
                root, tmp_path, 8, *where, *options, "--trainer.enable_progress_bar", "false"
            )
            if source == "cached":
                cli.datamodule.build_cache(["Valid"], progress=False)
            model = model or cli.model.eval()
            cli.model.load_state_dict(model.state_dict())
            clis[source, name] = cli
    seconds: dict[tuple, list[float]] = {key: [] for key in clis}
    metrics = {}
    for _ in range(rounds):
        for key, cli in clis.items():
            # The whole call: the loader's first batch is fetched before the epoch starts.
            start = time.perf_counter()
            metrics[key] = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]
            seconds[key].append(time.perf_counter() - start)
    actions = len(clis["decoded", "none"].datamodule.records("Valid"))
    rate = {key: actions / median(s) for key, s in seconds.items()}
    for name in TTA:  # the cache serves what decoding gives
        for metric, value in metrics["decoded", name].items():
            assert metrics["cached", name][metric] == pytest.approx(value, rel=1e-5), metric
    copies = {name: cli.datamodule.tta.copies for (_, name), cli in clis.items()}
    rows = [
        [name, copies[name], rate["decoded", name], rate["decoded", name] / rate["decoded", "none"],
         rate["cached", name], rate["cached", name] / rate["cached", "none"]]
        for name in TTA
    ]  # fmt: skip
    caption = (
        f"tiny backbone, 16x64x112, {actions} actions, batch 8, CPU (1 thread), "
        f"the whole `trainer.validate` call with its loader (no workers), median of {rounds}:"
    )
    tables = {
        caption: table(
            ["data.tta", "copies", "decoded actions/s", "x", "cached actions/s", "x"], rows
        )
    }
    report(
        "eval_tta",
        "Test-time augmentation cost",
        tables,
        {"actions": actions, "copies": copies,
         "actions_per_s": {f"{s}/{n}": r for (s, n), r in rate.items()},
         "seconds": {f"{s}/{n}": v for (s, n), v in seconds.items()}},
    )  # fmt: skip
