"""MVFoulDataModule: loader defaults, sampler choices, where augmentation runs, the views and
splits each phase reads."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn

from mvcli.cli import main
from mvcli.data.annotations import find_views
from mvcli.data.augment import Augmentation, AugmentingCollate, severity_strength
from mvcli.data.collate import ViewCollate
from mvcli.data.datamodule import MVFoulDataModule
from mvcli.data.sampler import ClassBalancedSampler
from mvcli.data.synthetic import write_synthetic_dataset
from mvcli.utils.errors import DataError, UsageError
from tests.conftest import CONFIGS, TINY, tiny_args
from tests.data.conftest import _batch


def test_loader_defaults(synthetic_root, monkeypatch):
    dm = MVFoulDataModule(root=synthetic_root, img_height=32, img_width=56, center_frame=12)
    dm.setup("validate")
    monkeypatch.setattr("mvcli.data.datamodule.default_workers", lambda: 2)
    loader = dm.val_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    assert loader.prefetch_factor == 2
    assert loader.pin_memory == torch.cuda.is_available() == dm.batch_memory.pin
    monkeypatch.setattr("mvcli.data.datamodule.default_workers", lambda: 64)
    assert dm.val_dataloader().num_workers == 8
    assert dm.cache is None and dm.datasets["val"].decode is not None


def test_datamodule_sampler_choices(synthetic_root):
    def make(sampler: str, **kwargs) -> MVFoulDataModule:
        dm = MVFoulDataModule(root=synthetic_root, num_workers=0, sampler=sampler, **kwargs)
        dm.setup("fit")
        return dm

    natural = make("natural")
    assert natural.train_sampler() is None and natural.balanced_heads == ()
    counts = natural.class_counts
    records = natural.records("Train")
    for head, n in (("offence_severity", 4), ("action", 8)):
        assert len(counts[head]) == n and sum(counts[head]) == len(records)
        assert counts[head] == [
            sum(getattr(r.labels, head) == c for r in records) for c in range(n)
        ]  # fmt: skip
    for name, heads in [
        ("balanced_offence_severity", ("offence_severity",)),
        ("balanced_action", ("action",)),
        ("balanced_joint", ("offence_severity", "action")),
    ]:
        dm = make(name)
        assert dm.balanced_heads == heads
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler.sampler, ClassBalancedSampler)  # inside SeededSampler
        assert len(loader.sampler) == len(dm.datasets["train"])
    progressive = make("progressive", progressive_epochs=3, progressive_target="action")
    assert progressive.balanced_heads == ("action",)
    assert progressive.train_sampler().balance(0) == 0.0
    assert progressive.train_sampler().balance(3) == 1.0


def _module(synthetic_root, **augmentation) -> MVFoulDataModule:
    dm = MVFoulDataModule(
        root=synthetic_root,
        frames_per_clip=4,
        center_frame=12,
        img_height=32,
        img_width=56,
        num_workers=0,
        augmentation=Augmentation(**augmentation),
    )
    dm.setup("fit")
    return dm


def test_datamodule_augments_training_batches_only(synthetic_root):
    dm = _module(synthetic_root, preset="none", hflip_prob=1.0)
    batch = _batch(padded=False)
    dm.trainer = SimpleNamespace(training=True)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)["video"], batch["video"].flip(-1))
    dm.trainer = SimpleNamespace(training=False)  # validate, test, predict, sanity check
    assert dm.on_after_batch_transfer(batch, 0) is batch


def test_datamodule_worker_mode_and_default_strength(synthetic_root):
    dm = _module(synthetic_root, preset="mild", gpu=False)
    train = dm.train_dataloader().collate_fn
    assert isinstance(train, AugmentingCollate) and isinstance(train.collate, ViewCollate)
    val = dm.val_dataloader().collate_fn
    assert isinstance(val, ViewCollate)  # one batch memory for every loader of the module
    assert train.collate.memory is val.memory is dm.batch_memory
    dm.trainer = SimpleNamespace(training=True)
    batch = _batch()
    assert dm.on_after_batch_transfer(batch, 0) is batch  # not twice
    counts = dm.class_counts["offence_severity"]
    expected = severity_strength(counts, 2.0)
    assert dm.augmenter.strength.tolist() == pytest.approx(expected)
    assert dm.hparams.augmentation["preset"] == "mild"  # plain values in checkpoints


@pytest.mark.parametrize("split", ["Train", "Valid"])
def test_a_split_folder_as_root_is_named_with_its_parent(synthetic_root, tmp_path, split, capsys):
    # The complaint: --data.root data/synthetic/Train said "data/synthetic/Train/Train/
    # annotations.json not found", with no hint that a split folder was given.
    from mvcli.__main__ import run
    from tests.conftest import CONFIGS, tiny_args

    root = synthetic_root / split
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(root, tmp_path),
             "--trainer.max_epochs", "1"])  # fmt: skip
    assert exit_info.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("mvcli: ") and "annotations.json not found" in line
    assert f"data.root {root} looks like a split folder" in line
    assert f"pass its parent, --data.root {synthetic_root}" in line


class ViewsSeen(Callback):
    """What each batch of the real loaders carried, per stage: ids, view names, views the
    mask marks present, failed and replaced actions (a test callback: --trainer.callbacks)."""

    def __init__(self) -> None:
        self.items: dict[str, list[dict]] = {"train": [], "val": [], "predict": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._add("train", batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._add("val", batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._add("predict", batch)

    def _add(self, stage: str, batch: dict) -> None:
        masked = batch["view_mask"].sum(1).tolist() if batch["video"] is not None else []
        for action_id, views, present in zip(
            batch["action_id"], batch["views"], masked, strict=True
        ):
            self.items[stage].append({"id": action_id, "views": views, "present": present})
        for failed in batch["failed"]:
            self.items[stage].append({"id": failed["action_id"], "failed": True})
        for replaced in batch["replaced"]:
            self.items[stage].append({"id": replaced["action_id"], "replaced": True})


VIEWS_SEEN = f"{__name__}.ViewsSeen"


def _seen(cli) -> ViewsSeen:
    return next(c for c in cli.trainer.callbacks if isinstance(c, ViewsSeen))


def _names(root: Path, split: str, action_id: str) -> list[str]:
    return [p.name for p in find_views(root / split / f"action_{action_id.split('/')[-1]}")]


def test_view_choice_reaches_the_batches_and_predict_keeps_eval_views(synthetic_root, tmp_path):
    common = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    fit = main(
        ["fit", *common, "--trainer.max_epochs", "1", "--trainer.callbacks", VIEWS_SEEN,
         "--data.train_views", "live", "--data.eval_views", "replays", "--data.num_views", "3"]
    )  # fmt: skip
    seen = _seen(fit).items
    assert len(seen["train"]) == len(fit.datamodule.datasets["train"])
    for item in seen["train"]:  # only the live view, though 3 could be drawn
        assert item["views"] == ["clip_0.mp4"] and item["present"] == 1
    assert seen["val"]
    for item in seen["val"]:  # every replay, in file order, all present in the mask
        replays = [n for n in _names(synthetic_root, "Valid", item["id"]) if n != "clip_0.mp4"]
        assert item["views"] == replays and item["present"] == len(replays)
    last = Path(fit.trainer.log_dir) / "checkpoints/last.ckpt"
    data = torch.load(last, weights_only=True)["datamodule_hyper_parameters"]
    assert (data["train_views"], data["eval_views"]) == ("live", "replays")

    def predict(*extra: str):
        out = tmp_path / f"predict{len(extra)}" / "predictions.json"
        cli = main(["predict", *common, "--ckpt_path", str(last), "--trainer.callbacks",
                    VIEWS_SEEN, "--prediction_writer.output_path", str(out), *extra])  # fmt: skip
        details = json.loads(out.read_text())["details"]
        return cli, {i: d["views"] for i, d in details.items()}

    cli, views = predict()  # the checkpoint's eval_views: replays
    assert cli.datamodule.hparams.eval_views == "replays" and views
    assert all(v == _names(synthetic_root, "Test", i)[1:] for i, v in views.items())
    cli, views = predict("--data.eval_views", "2")  # given: wins over the checkpoint's
    assert cli.datamodule.hparams.eval_views == 2
    assert all(v == _names(synthetic_root, "Test", i)[:2] for i, v in views.items())
    assert all(item["present"] == 2 for item in _seen(cli).items["predict"])


def _without_live_view(synthetic_root: Path, root: Path) -> dict[str, str]:
    """A copy of the set where the first action of each labelled split lacks clip_0."""
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns(".mvcli-cache"))
    removed = {}
    for split in ("Train", "Valid", "Test"):
        action_id = MVFoulDataModule(root=root).records(split)[0].action_id
        (root / split / f"action_{action_id}" / "clip_0.mp4").unlink()
        removed[split] = action_id
    return removed


def test_training_on_several_splits_validated_on_a_named_one(synthetic_root, tmp_path):
    root = tmp_path / "data"
    removed = _without_live_view(synthetic_root, root)
    args = ["fit", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(root, tmp_path),
            "--trainer.max_epochs", "1", "--trainer.callbacks", VIEWS_SEEN,
            "--data.train_splits", "[Train, Valid]", "--data.val_split", "Test",
            "--data.train_views", "live", "--data.eval_views", "live"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = main(args)
    messages = [str(w.message) for w in caught]
    reports = [m for m in messages if m.startswith("data.train_views")]
    reports += [m for m in messages if m.startswith("data.eval_views")]
    assert len(reports) == 3, reports  # once per split and option
    assert f"1/{len(fit.datamodule.records('Train'))} actions of Train" in reports[0]
    assert f"(action {removed['Train']});" in reports[0] and "replaced_actions" in reports[0]
    assert "actions of Test" in reports[2] and "scored as wrong" in reports[2]
    dm = fit.datamodule
    union = len(dm.records("Train")) + len(dm.records("Valid"))
    assert len(dm.datasets["train"]) == union and sum(dm.class_counts["action"]) == union
    seen = _seen(fit).items
    # One epoch of the natural sampler: each action of the union once, ids told apart.
    assert len([i for i in seen["train"] if "replaced" not in i]) == union
    replaced = {i["id"] for i in seen["train"] if "replaced" in i}
    assert replaced == {f"Train/{removed['Train']}", f"Valid/{removed['Valid']}"}
    served = [i["id"] for i in seen["train"] if "replaced" not in i]
    assert {i.split("/")[0] for i in served} == {"Train", "Valid"}
    assert not set(served) & replaced
    assert fit.trainer.callback_metrics["train/replaced_actions"] == 2
    # Validation read Test: its action without clip_0 scored wrong and counted.
    assert [i["id"] for i in seen["val"] if "failed" in i] == [removed["Test"]]
    assert len(seen["val"]) == len(dm.records("Test"))
    assert fit.trainer.callback_metrics["val/unreadable_actions"] == 1
    hparams = torch.load(Path(fit.trainer.log_dir) / "checkpoints/last.ckpt", weights_only=True)
    data = hparams["datamodule_hyper_parameters"]
    assert (data["train_splits"], data["val_split"]) == (["Train", "Valid"], "Test")


def test_final_fit_without_validation_keeps_last_checkpoint(synthetic_root, tmp_path):
    common = ["--config", str(CONFIGS / "demo.yaml"), "--config",
              str(CONFIGS / "final_fit.yaml"), *tiny_args(synthetic_root, tmp_path)]  # fmt: skip
    fit = main(["fit", *common, "--trainer.max_epochs", "2", "--trainer.callbacks", VIEWS_SEEN])
    dm = fit.datamodule
    union = len(dm.records("Train")) + len(dm.records("Valid"))
    seen = _seen(fit).items
    assert len(seen["train"]) == 2 * union and not seen["val"]  # no validation loop at all
    assert not any(k.startswith("val/") for k in fit.trainer.callback_metrics)
    folder = Path(fit.trainer.log_dir)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["last.ckpt"]
    last = torch.load(folder / "checkpoints/last.ckpt", weights_only=True)
    assert last["epoch"] == 1
    data = last["datamodule_hyper_parameters"]
    assert (data["train_splits"], data["val_split"]) == (["Train", "Valid"], None)
    history = json.loads((folder / "history.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1] and "train/loss" in history[0]
    ckpt = ["--ckpt_path", str(folder / "checkpoints/last.ckpt")]
    with pytest.raises(UsageError, match="data.val_split is null .* pass --data.val_split"):
        main(["validate", *common, *ckpt])
    cli = main(["validate", *common, *ckpt, "--data.val_split", "Test"])
    metrics = json.loads((Path(cli.trainer.log_dir) / "validate_metrics.json").read_text())
    assert metrics["data"] == str(synthetic_root / "Test")


def test_a_validation_split_trained_on_is_refused(synthetic_root, tmp_path):
    args = [*tiny_args(synthetic_root, tmp_path), "--data.train_splits", "[Train, Valid]"]
    with pytest.raises(UsageError, match="data.val_split Valid is also in data.train_splits"):
        main(args, run=False)
    for value, message in [("[]", "data.train_splits is empty"),
                           ("[Train, Train]", "names a split twice"),
                           ("[Train, Chall]", "Chall has no labels")]:  # fmt: skip
        with pytest.raises(UsageError, match=message):
            main([*args, "--data.train_splits", value], run=False)


def test_a_choice_leaving_no_view_anywhere_names_the_option(tmp_path):
    write_synthetic_dataset(tmp_path, train=4, valid=4, test=4, min_views=1, max_views=1, **TINY)
    dm = MVFoulDataModule(root=tmp_path, num_workers=0, train_views="replays")
    with pytest.raises(DataError, match="data.train_views replays: no action of Train has a "):
        dm.setup("fit")
    dm = MVFoulDataModule(root=tmp_path, predict_root=tmp_path / "Test", eval_views="replays")
    with pytest.raises(
        DataError, match="no action of the predict input has a view other than clip_0"
    ):
        dm.setup("predict")


def test_the_cache_holds_only_the_views_each_phase_reads(synthetic_root, tmp_path):
    cache = tmp_path / "cache"
    dm = MVFoulDataModule(
        root=synthetic_root, cache_dir=cache, frames_per_clip=4, center_frame=12,
        img_height=32, img_width=56, train_splits=["Train", "Valid"], val_split=None,
        train_views="live", eval_views=2,
    )  # fmt: skip
    dm.trainer = SimpleNamespace(fast_dev_run=False, state=SimpleNamespace(fn=TrainerFn.FITTING))
    dm.prepare_data()  # fit: both training splits, their live views only; no validation split

    def entries() -> int:
        return len(list(cache.glob("clips/*/*.npy")))

    assert entries() == len(dm.records("Train")) + len(dm.records("Valid"))
    report = dm.build_cache(["Test"], progress=False)["Test"]
    assert report.views == sum(min(2, len(r.views)) for r in dm.records("Test"))
    assert entries() == len(dm.training_records()) + report.views


def test_cached_training_batches_are_augmented_in_a_worker(synthetic_root, tmp_path):
    """The copy-once cache path under the worker augmentation (gpu: false), in a worker."""
    dm = MVFoulDataModule(
        root=synthetic_root, frames_per_clip=4, center_frame=12, img_height=32, img_width=56,
        num_workers=1, cache_dir=tmp_path / "cache", batch_size=4,
        augmentation=Augmentation(preset="none", gpu=False, hflip_prob=1.0),
    )  # fmt: skip
    dm.build_cache(["Train"], progress=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    plain = MVFoulDataModule(
        root=synthetic_root, frames_per_clip=4, center_frame=12, img_height=32, img_width=56,
        num_workers=0, batch_size=4,
    )  # fmt: skip
    plain.setup("fit")
    expected = next(iter(plain.train_dataloader()))  # the same seeded draws, unflipped
    assert batch["action_id"] == expected["action_id"]
    assert torch.equal(batch["view_mask"], expected["view_mask"])
    assert torch.equal(batch["video"], expected["video"].flip(-1))
