"""The HParams of a real fit, read back from its TensorBoard events."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData


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
        "lr_scheduler": "CosineToEnd",
        "data/batch_size": 4,
        "accumulate_grad_batches": 1,
        "precision": "32-true",
        "data/frames_per_clip": 8,
        "data/img_height": 32,
        "freezing": "NoFreezing",
        "data/sampler": "natural",
        "model/loss/kind": "plain",
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


def test_logged_hparams_hold_no_instantiator(events, trained):
    """LightningCLI's ``_instantiator`` (for load_from_checkpoint) is no setting of the run."""
    _, fit = trained
    logged = yaml.safe_load((Path(fit.trainer.log_dir) / "hparams.yaml").read_text())
    assert "model/backbone" in logged and not [k for k in logged if "_instantiator" in k]
    start = HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    )
    assert not [k for k in start.session_start_info.hparams if "/_" in k]
