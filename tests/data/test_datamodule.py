"""MVFoulDataModule: loader defaults, sampler choices and where augmentation runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mvcli.data.augment import Augmentation, AugmentingCollate, severity_strength
from mvcli.data.collate import ViewCollate
from mvcli.data.datamodule import MVFoulDataModule
from mvcli.data.sampler import ClassBalancedSampler
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
