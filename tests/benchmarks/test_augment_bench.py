"""Augmentation cost per batch relative to the model's training step, side by side.

For each recipe size: one training batch of uint8 clips, the ``moderate`` (and
``aggressive``) augmentation of ``mvcli.data.augment`` vs one training step of the recipe's
backbone (forward, multi-task loss, backward, AdamW step), measured alternately in one run.
The ratio is what counts (goal: < 5% on a GPU; the GPU script times the same pair where CUDA
is). On CPU the real-data sizes run with a small batch (both costs grow linearly with it):
``MVCLI_BENCH_AUG_ACTIONS`` and ``MVCLI_BENCH_AUG_VIEWS`` (views per action, at most the
recipe's) set it.

    .venv/bin/python -m pytest -q -m bench tests/benchmarks/test_augment_bench.py -s
"""

from __future__ import annotations

import pytest
import torch

from mvcli.data.augment import Augmentation, BatchAugmenter
from mvcli.task.module import ClipInput, MVFoulModule
from tests.benchmarks.common import env_int, interleaved, median, report, spread, table

# name -> (backbone, frames, height, width, views per action)
RECIPES = {
    "demo (tiny, 16x64x112)": ("tiny", 16, 64, 112, 2),
    "mvfoul.yaml (r2plus1d_18, 16x224x398)": ("r2plus1d_18", 16, 224, 398, 2),
    "vars_baseline.yaml (mvit_v2_s, 16x224x224)": ("mvit_v2_s", 16, 224, 224, 2),
}


def make_batch(actions: int, views: int, frames: int, height: int, width: int) -> dict:
    g = torch.Generator().manual_seed(0)
    shape = (actions, views, 3, frames, height, width)
    return {
        "video": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
        "view_mask": torch.ones(actions, views, dtype=torch.bool),
        "offence_severity": torch.arange(actions) % 4,
        "action": torch.arange(actions) % 8,
        "action_id": [str(i) for i in range(actions)],
    }


def step_fn(module: MVFoulModule, batch: dict):
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    module.train()

    def step() -> None:
        logits = module(batch["video"], batch["view_mask"])
        loss, _ = module.criterion(logits, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def measure(actions: int, rounds: int, recipes: dict, views_cap: int = 2) -> dict:
    results = {}
    for name, (backbone, frames, height, width, views) in recipes.items():
        views = min(views, views_cap)
        # The demo's batch is small enough to run at its real size.
        n = 8 if backbone == "tiny" else actions
        batch = make_batch(n, views, frames, height, width)
        module = MVFoulModule(
            backbone=backbone, clip=ClipInput(num_frames=frames, height=height, width=width)
        )
        funcs = {"model step": step_fn(module, batch)}
        for preset in ("moderate", "aggressive"):
            augmenter = BatchAugmenter(Augmentation(preset=preset), [1.0, 1.2, 1.5, 2.0])
            funcs[f"augment {preset}"] = lambda a=augmenter, b=batch: a(b)
        torch.manual_seed(0)
        samples = interleaved(funcs, rounds=rounds, min_seconds=0.0)
        results[name] = {"actions": n, "views": views, "seconds": samples}
    return results


@pytest.mark.bench
def test_augmentation_vs_model_step():
    actions = env_int("AUG_ACTIONS", 1)
    rounds = env_int("AUG_ROUNDS", 3)
    results = measure(actions, rounds, RECIPES, env_int("AUG_VIEWS", 2))
    rows = []
    for name, r in results.items():
        step = median(r["seconds"]["model step"])
        for preset in ("moderate", "aggressive"):
            aug = median(r["seconds"][f"augment {preset}"])
            rows.append(
                [
                    name,
                    f"{r['actions']}x{r['views']}",
                    preset,
                    aug * 1000,
                    step * 1000,
                    f"{100 * aug / step:.1f}%",
                    f"+-{100 * spread(r['seconds'][f'augment {preset}']):.0f}%",
                ]
            )
        assert step > 0
    tables = {
        f"CPU, {torch.get_num_threads()} threads": table(
            ["recipe", "batch", "preset", "augment ms", "model step ms", "ratio", "noise"], rows
        )
    }
    report("augment", "Augmentation vs model step", tables, {"results": results})
