"""MVFoulModule's numbers: every labelled action counts, as in the official evaluator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch import Callback
from torchmetrics import Metric

from mvcli.cli import main
from mvcli.data.annotations import read_split
from mvcli.deploy.scoring import score
from mvcli.task.module import ClipInput, MVFoulModule
from tests.conftest import CONFIGS, tiny_args
from tests.evaluator import official_evaluate
from tests.syncs import SyncCounter

PAIRS = {
    "acc_offence_severity": "accuracy_offence_severity",
    "acc_action": "accuracy_action",
    "bacc_offence_severity": "balanced_accuracy_offence_severity",
    "bacc_action": "balanced_accuracy_action",
    "leaderboard": "leaderboard_value",
}


def _split_with_dives_fixed(synthetic_root: Path, root: Path) -> Path:
    """A copy of Test where every class is present (the evaluator wants '1.0' for dives)."""
    split = root / "Test"
    shutil.copytree(synthetic_root / "Test", split)
    annotations = json.loads((split / "annotations.json").read_text())
    for entry in annotations["Actions"].values():
        if entry.get("Action class") == "Dive" and entry.get("Severity") in ("3.0", "5.0"):
            entry["Severity"] = "1.0"
    (split / "annotations.json").write_text(json.dumps(annotations))
    records, _ = read_split(split)  # parity is only meaningful with every class present
    assert {r.labels.offence_severity for r in records} == set(range(4))
    assert {r.labels.action for r in records} == set(range(8))
    return split


def _damage(split: Path) -> dict[str, int]:
    """Unreadable actions of three kinds, plus one damaged view; returns views made unreadable."""
    actions = sorted(split.glob("action_*"), key=lambda p: int(p.name.split("_")[1]))
    unreadable = 0
    for view in actions[0].iterdir():  # every view damaged
        view.write_bytes(b"")
        unreadable += 1
    for view in actions[1].iterdir():
        view.write_text("not a video")
        unreadable += 1
    shutil.rmtree(actions[2])  # listed in annotations.json, no folder on disk
    next(actions[3].iterdir()).write_bytes(b"")  # one view of a readable action
    return {"views": unreadable + 1, "actions": 3}


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
def test_test_metrics_equal_predict_plus_official_evaluator(
    damaged, trained, synthetic_root, tmp_path
):
    common, fit = trained
    split = _split_with_dives_fixed(synthetic_root, tmp_path)
    expected = _damage(split) if damaged else {"views": 0, "actions": 0}
    outputs = tmp_path / "outputs"  # not the shared fit's run folder, their default
    args = [*common, "--data.root", str(tmp_path), "--output_dir", str(outputs)]
    args += ["--ckpt_path", fit.trainer.checkpoint_callback.best_model_path]
    main(["test", *args])
    ours = json.loads((outputs / "test_metrics.json").read_text())
    main(["predict", *args])
    out = outputs / "predictions.json"
    official = official_evaluate(split / "annotations.json", out)
    scored = score(out, split / "annotations.json")
    for mine, theirs in PAIRS.items():
        assert 100 * ours[f"test/{mine}"] == pytest.approx(official[theirs], abs=1e-4), mine
        assert scored[theirs] == pytest.approx(official[theirs], abs=1e-4), mine
    assert ours["test/unreadable_actions"] == expected["actions"] == scored["missing"]
    assert ours["test/skipped_views"] == expected["views"]


def test_unreadable_actions_are_wrong_on_both_heads():
    model = MVFoulModule(backbone="tiny", clip=ClipInput(num_frames=4, height=16, width=16))
    failed = [
        {"action_id": "7", "skipped_views": [{"view": "a.mp4"}, {"view": "b.mp4"}]},
        {"action_id": "8", "skipped_views": [{"view": "", "reason": "no_views"}]},
    ]
    failed[0] |= {"offence_severity": 3, "action": 7}  # the last class: wraps to 0
    failed[1] |= {"offence_severity": 0, "action": 2}
    batch = {"failed": failed, "skipped_views": [], "video": None, "action_id": []}
    model._count_damage(batch, "val")
    for head, metrics in model.metrics["val_metrics"].compute().items():
        assert metrics[f"val/acc_{head}"] == 0 and metrics[f"val/bacc_{head}"] == 0
    damage = model.damage["val_damage"]
    assert damage["unreadable_actions"].compute() == 2
    assert damage["skipped_views"].compute() == 2  # views, not actions
    assert torch.equal(model.metrics["val_metrics"].task_metrics["action"]["bacc"].support[[2, 7]],
                       torch.tensor([1, 1]))  # fmt: skip


def test_fit_replaces_unreadable_training_actions(synthetic_root, tmp_path):
    """No training step returns None: the data layer serves another action, counted."""
    root = tmp_path / "data"
    for split in ("Train", "Valid"):
        shutil.copytree(synthetic_root / split, root / split)
    actions = sorted((root / "Train").glob("action_*"), key=lambda p: int(p.name.split("_")[1]))
    dead = actions[:2]
    views = 0
    for action in dead:
        for view in action.iterdir():
            view.write_bytes(b"")
            views += 1
    args = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(root, tmp_path / "runs")]
    args += ["--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1"]
    served, outputs = [], []

    class Spy(Callback):
        def on_train_batch_end(self, trainer, pl_module, out, batch, batch_idx):
            served.append(len(batch["action_id"]))
            outputs.append(out)

    fit = main(args, run=False)
    fit.trainer.callbacks.append(Spy())
    fit.trainer.fit(fit.model, datamodule=fit.datamodule)
    metrics = fit.trainer.callback_metrics
    assert metrics["train/replaced_actions"] == len(dead)
    assert metrics["train/skipped_views"] == views
    # Every batch full (no action dropped), every step a loss (never None).
    assert sum(served) == len(fit.datamodule.datasets["train"])
    assert outputs and all(out is not None for out in outputs)


# -- host-device synchronisation ----------------------------------------------------------------
# The one read of a device value per optimizer step that mvcli makes on purpose: NonFiniteGuard
# deciding whether the optimizer steps (mvcli/callbacks/nonfinite.py's docstring).
DELIBERATE = "mvcli/callbacks/nonfinite.py"


def test_training_steps_make_the_host_wait_once_per_optimizer_step(
    synthetic_root, tmp_path, monkeypatch
):
    """A fit through the CLI with every per-step path of mvcli on (device augmentation with
    mixing, noise and hue, OOM recovery's step runner, gradient-guided freezing probes,
    gradient norms at every step, the progress bar): mvcli's code reads no device value in a
    training step but the NonFiniteGuard's decision; Lightning reads none either between log
    intervals (its progress bar reads through mvcli's ProgressBar at the log interval)."""
    counter = SyncCounter()
    transfer = MVFoulModule.transfer_batch_to_device

    def transfer_and_mark(self, batch, device, dataloader_idx):
        training = self.trainer.training and not self.trainer.sanity_checking
        if training:  # a transfer to a device makes new tensors; on the CPU .to() does not
            batch = apply_to_collection(batch, torch.Tensor, torch.clone)
        batch = transfer(self, batch, device, dataloader_idx)
        if training:
            metrics = [m.metric_state for m in self.modules() if isinstance(m, Metric)]
            counter.mark(batch, list(self.parameters()), list(self.buffers()), metrics)
            counter.step += 1
            counter.in_step = True
        return batch

    def step_done(self, outputs, batch, batch_idx):
        counter.in_step = False

    monkeypatch.setattr(MVFoulModule, "transfer_batch_to_device", transfer_and_mark)
    monkeypatch.setattr(MVFoulModule, "on_train_batch_end", step_done, raising=False)
    args = ["fit", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path),
            "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3",
            "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "100",
            "--data.augmentation.preset", "aggressive", "--augmentation_preview", "null",
            "--oom_recovery.enabled", "true",
            "--freezing", "mvcli.callbacks.freezing.AdvancedFreezing",
            "--freezing.probe_batches", "2",
            "--trainer.callbacks+=mvcli.callbacks.grad_norms.GradientNorms",
            "--trainer.callbacks.every_n_steps", "1"]  # fmt: skip
    with counter:
        fit = main(args)
    steps = counter.step + 1
    assert steps == 6 and fit.trainer.global_step == 6
    found = counter.summary()
    deliberate = {k: n for k, n in found.items() if k[0] == "mvcli" and DELIBERATE in k[1]}
    others = {k: n for k, n in found.items() if k not in deliberate}
    assert not others, others
    assert sum(deliberate.values()) == fit.trainer.global_step  # one per optimizer step
