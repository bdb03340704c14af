"""What a fit logs, read back from its TensorBoard event files: images, text, scalars, hparams."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

HEADS = ("offence_severity", "action")


@pytest.fixture(scope="module")
def events(trained) -> EventAccumulator:
    _, fit = trained
    accumulator = EventAccumulator(str(Path(fit.trainer.log_dir)), size_guidance={"images": 0})
    return accumulator.Reload()


def test_confusion_images_and_pairs_every_validation_epoch(events, trained):
    tags = events.Tags()
    for head in HEADS:
        for kind in ("confusion", "recall"):
            images = events.Images(f"val/{kind}_{head}")
            assert len(images) == 2, (kind, head)  # 2 epochs, sanity check left out
            assert images[0].width > 300 and images[0].height > 200
        assert f"val/confused_pairs_{head}/text_summary" in tags["tensors"]


def test_throughput_scalars_per_epoch(events):
    speed = [e.value for e in events.Scalars("train/actions_per_s")]
    wait = [e.value for e in events.Scalars("train/data_wait_fraction")]
    assert len(speed) == len(wait) == 2
    assert all(s > 0 for s in speed)
    assert all(0 < w < 1 for w in wait)


def test_hparams_hold_key_settings_and_best_score(events, trained):
    _, fit = trained
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    values = {k: (v.string_value or v.number_value) for k, v in hparams.items()}
    expected = {
        "model/backbone": "tiny",
        "model/pooling": "max",
        "optimizer": "AdamW",
        "lr/heads": 0.006,
        "lr_scheduler": "CosineAnnealingLR",
        "data/batch_size": 4,
        "accumulate_grad_batches": 1,
        "precision": "32-true",
        "data/frames_per_clip": 8,
        "data/img_height": 32,
        "freezing": "none",
        "data/sampler": "natural",
        "model/loss": "plain",
        "seed": "42",
    }
    assert {k: values.get(k) for k in expected} == pytest.approx(expected)
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    names = {m.name.tag for m in experiment.metric_infos}
    assert {"hp_metric", "hp/best_val_leaderboard", "hp/best_epoch"} <= names
    best = events.Scalars("hp_metric")[-1].value
    ckpt = fit.trainer.checkpoint_callback
    assert best == pytest.approx(float(ckpt.best_model_score))
    assert not math.isnan(events.Scalars("hp/best_epoch")[-1].value)
    assert len(content) == 3  # one hparams summary: Lightning's own is off, no hp_metric=-1
