"""`mvcli export`: each file runs without Lightning and matches PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvcli.cli import main
from mvcli.deploy.export import PARITY_VIEWS, example_inputs
from mvcli.models.backbones import build_backbone
from mvcli.models.network import MultiViewNetwork

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    common, fit = trained
    out = tmp_path_factory.mktemp("export")
    ckpt = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"  # fit.model's weights
    main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(out),
          "--trainer.logger", "false"])  # fmt: skip
    return out, fit.model


def _reference(model, video, mask):
    model.eval()
    with torch.no_grad():
        return model.network(video, mask)


def test_manifest_records_parity_and_preprocessing(exported):
    out, _ = exported
    manifest = json.loads((out / "export.json").read_text())
    assert set(manifest["files"]) == {"state_dict", "onnx", "torch_export"}
    for fmt in ("onnx", "torch_export"):
        errors = manifest["parity_max_abs_error"][fmt]
        assert set(errors) == {f"{v}_views" for v in PARITY_VIEWS}
        assert max(errors.values()) <= TOLERANCE
    assert manifest["preprocessing"]["frames_per_clip"] == 8
    # data.mean/std unset: the normalisation really applied (the backbone's) is recorded.
    assert manifest["preprocessing"]["mean"] == pytest.approx([0.43216, 0.394666, 0.37645])
    assert manifest["preprocessing"]["std"] == pytest.approx([0.22803, 0.22145, 0.216989])
    assert manifest["outputs"]["action"][0] == "Tackling"


@pytest.mark.parametrize("views", PARITY_VIEWS)
def test_onnx_runs_in_onnxruntime(exported, views):
    ort = pytest.importorskip("onnxruntime")
    out, model = exported
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    video, mask = example_inputs(8, 32, 56, batch=4, views=views, seed=10 + views)
    logits = session.run(None, {"video": video.numpy(), "view_mask": mask.numpy()})
    reference = _reference(model, video, mask)
    assert [o.shape for o in logits] == [(4, 4), (4, 8)]
    for out_array, head in zip(logits, ("offence_severity", "action"), strict=True):
        np.testing.assert_allclose(out_array, reference[head].numpy(), atol=TOLERANCE)


def test_torch_export_program_loads_without_mvcli_classes(exported):
    out, model = exported
    program = torch.export.load(str(out / "model.pt2")).module()
    video, mask = example_inputs(8, 32, 56, batch=2, views=4, seed=3)
    severity, action = program(video, mask)
    reference = _reference(model, video, mask)
    torch.testing.assert_close(action, reference["action"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(severity, reference["offence_severity"], atol=TOLERANCE, rtol=0)


def test_state_dict_rebuilds_the_network(exported):
    out, model = exported
    saved = torch.load(out / "model_state_dict.pt", weights_only=True)
    network = MultiViewNetwork(
        build_backbone("tiny", 8, 32, 56),
        "max",
        {"offence_severity": 4, "action": 8},
        saved["manifest"]["preprocessing"]["mean"],
        saved["manifest"]["preprocessing"]["std"],
    ).eval()
    network.load_state_dict(saved["state_dict"])
    video, mask = example_inputs(8, 32, 56, batch=2, views=2, seed=5)
    with torch.no_grad():
        got = network(video, mask)
    reference = _reference(model, video, mask)
    for head in got:
        torch.testing.assert_close(got[head], reference[head])
