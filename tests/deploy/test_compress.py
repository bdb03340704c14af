"""`mvcli export --quantize int8 --half`: smaller ONNX variants, each measured against fp32."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from mvcli.cli import main
from mvcli.data.taxonomy import HEADS
from mvcli.deploy.compress import fold_pruning, format_table, measure_variants
from mvcli.deploy.export import example_inputs

ort = pytest.importorskip("onnxruntime")
VARIANTS = ["fp32", "fp16", "int8_dynamic", "int8_static"]


@pytest.fixture(scope="module")
def compressed(trained, tmp_path_factory):
    common, fit = trained
    out = tmp_path_factory.mktemp("compressed")
    ckpt = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    # No data.root given: accuracy on the Test split of the data the checkpoint was trained on.
    main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(out), "--formats", "[onnx]",
          "--quantize", "int8", "--half", "true", "--latency_repeats", "2",
          "--trainer.logger", "false", "--data.num_workers", "0"])  # fmt: skip
    return out, json.loads((out / "export.json").read_text())["compression"], fit


def test_every_variant_is_written_and_measured(compressed):
    out, report, _ = compressed
    assert list(report["variants"]) == VARIANTS
    assert report["eval_split"] == "Test"
    assert report["calibration"]["split"] == "Train"
    assert 1 <= report["calibration"]["batches"] <= 8
    for entry in report["variants"].values():
        path = out / entry["file"]
        assert entry["size_mb"] == pytest.approx(os.path.getsize(path) / 2**20)
        assert set(entry["latency_ms_per_action"]) == {"batch_1", "batch_8"}
        assert all(v > 0 for v in entry["latency_ms_per_action"].values())
        assert entry["actions"] == report["variants"]["fp32"]["actions"] > 0
        drop = report["variants"]["fp32"]["leaderboard"] - entry["leaderboard"]
        assert entry["leaderboard_drop"] == pytest.approx(drop)
    sizes = {name: entry["size_mb"] for name, entry in report["variants"].items()}
    assert sizes["fp16"] < 0.6 * sizes["fp32"]
    assert sizes["int8_static"] < 0.4 * sizes["fp32"]  # convolutions in int8 too
    assert report["variants"]["fp16"]["agreement"] >= 0.9


def test_fp32_accuracy_is_mvcli_tests(compressed, tmp_path):
    """The report's fp32 row equals `mvcli test` on the same split and checkpoint: same
    balanced accuracies, unreadable actions counted (and scored wrong) the same way."""
    _, report, fit = compressed
    ckpt = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    main(["test", "--ckpt_path", str(ckpt), "--data.root", str(fit.datamodule.root),
          "--output_dir", str(tmp_path), "--trainer.logger", "false",
          "--data.num_workers", "0"])  # fmt: skip
    tested = json.loads((tmp_path / "test_metrics.json").read_text())
    fp32 = report["variants"]["fp32"]
    for head in HEADS:
        assert fp32[f"bacc_{head}"] == pytest.approx(tested[f"test/bacc_{head}"], abs=1e-6)
    assert fp32["leaderboard"] == pytest.approx(tested["test/leaderboard"], abs=1e-6)
    assert fp32["unreadable_actions"] == tested["test/unreadable_actions"]


def test_unreadable_actions_are_scored_wrong(compressed):
    out, _, _ = compressed
    model, size = out / "model.onnx", {"frames": 8, "height": 32, "width": 56}
    video, mask = example_inputs(**size, batch=2, views=2, seed=1)
    feeds = {"video": video.numpy(), "view_mask": mask.numpy()}
    logits = ort.InferenceSession(str(model)).run(None, feeds)
    # Labelled with the model's own predictions: every readable action is right.
    labels = {h: torch.from_numpy(x.argmax(-1)) for h, x in zip(HEADS, logits, strict=True)}
    unreadable = {"offence_severity": torch.tensor([1, 0]), "action": torch.tensor([2, 7])}

    def fp32(batches):
        return measure_variants({"fp32": model}, size, 2, lambda: batches, 1)["fp32"]

    clean = fp32([(feeds, labels, {})])
    damaged = fp32([(feeds, labels, {}), (None, {}, unreadable)])
    assert clean["acc_action"] == clean["acc_offence_severity"] == 1.0
    assert (clean["unreadable_actions"], damaged["unreadable_actions"]) == (0, 2)
    assert damaged["acc_action"] == damaged["acc_offence_severity"] == 0.5


def test_fp16_and_int8_models_take_the_fp32_inputs(compressed):
    out, report, fit = compressed

    video, mask = example_inputs(8, 32, 56, batch=3, views=3, seed=4)
    with torch.no_grad():
        reference = fit.model.network.eval()(video, mask)
    for name, atol in (("fp16", 0.05), ("int8_dynamic", 0.5), ("int8_static", 1.0)):
        session = ort.InferenceSession(str(out / report["variants"][name]["file"]))
        outputs = session.run(None, {"video": video.numpy(), "view_mask": mask.numpy()})
        for logits, head in zip(outputs, HEADS, strict=True):
            assert logits.dtype == np.float32
            np.testing.assert_allclose(logits, reference[head].numpy(), atol=atol, err_msg=name)


def test_table_has_one_row_per_variant(compressed):
    _, report, _ = compressed
    lines = format_table(report["variants"], "Test").splitlines()
    assert lines[0].split()[:2] == ["variant", "size"]
    assert "Test leaderboard" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == VARIANTS


def test_pruning_reparametrisation_is_folded():
    layer = nn.Linear(6, 4)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    state = layer.state_dict()
    assert {"weight_orig", "weight_mask"} <= set(state)
    plain = nn.Linear(6, 4)
    plain.load_state_dict(fold_pruning(state))
    torch.testing.assert_close(plain.weight, layer.weight)
    assert (plain.weight == 0).sum() == 12
