"""Export a trained network to files that run without Lightning (and, but one, without mvcli).

Every exported model takes what the data pipeline produces — ``video`` uint8
(B, V, 3, T, H, W) and ``view_mask`` bool (B, V) — and returns the logits of both heads; the
normalisation is inside. Padded views are computed and then masked out by the pooling (a
fixed graph exports and runs everywhere; the result equals the training-time path, which
skips them, as the parity check verifies).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from mvcli import __version__
from mvcli.data.taxonomy import HEADS
from mvcli.models.network import MultiViewNetwork
from mvcli.utils.io import atomic_write_text

ExportFormat = Literal["state_dict", "onnx", "torch_export"]
FORMATS: tuple[str, ...] = ExportFormat.__args__
FILE_NAMES = {
    "state_dict": "model_state_dict.pt",
    "onnx": "model.onnx",
    "torch_export": "model.pt2",
}
PARITY_VIEWS = (2, 3, 4)


class ExportableNetwork(nn.Module):
    """Dense-view forward of a MultiViewNetwork returning a tuple (offence_severity, action)."""

    def __init__(self, network: MultiViewNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, video: torch.Tensor, view_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.network
        b, v = view_mask.shape
        clips = video.flatten(0, 1).float() * net.scale + net.shift
        features = net.backbone(clips).unflatten(0, (b, v))
        pooled = net.pooling(features, view_mask)
        return tuple(head(pooled) for head in net.heads.values())


def plain_network(network: MultiViewNetwork) -> MultiViewNetwork:
    """The network as exported: a copy without ``model.speed``'s effects on how it runs.

    A deep copy is eager (PyTorch drops a module's compiled call when copying it), its 3D
    convolution weights are put back in the default contiguous layout (what other runtimes
    expect), and in eval mode it never takes the checkpointed training path. The weights and
    their names are the network's.
    """
    plain = copy.deepcopy(network).eval()
    for module in plain.modules():
        if isinstance(module, nn.Conv3d):
            module.to(memory_format=torch.contiguous_format)
    return plain


def example_inputs(
    frames: int, height: int, width: int, batch: int = 2, views: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 clips and a mask with one padded view in the first action."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (batch, views, 3, frames, height, width), generator=gen)
    mask = torch.ones(batch, views, dtype=torch.bool)
    if views > 1:
        mask[0, -1] = False
    return video.to(torch.uint8), mask


def export_network(
    network: MultiViewNetwork,
    output_dir: Path,
    *,
    frames: int,
    height: int,
    width: int,
    formats: Sequence[str] = FORMATS,
    metadata: dict | None = None,
    opset: int | None = None,
    tolerance: float = 1e-4,
) -> dict:
    """Write the requested formats plus ``export.json``; check each against PyTorch.

    Returns the manifest (also written to ``export.json``), with the maximum absolute logit
    difference measured for 2, 3 and 4 views per format.

    Raises:
        RuntimeError: when an exported model differs from PyTorch by more than ``tolerance``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = ExportableNetwork(plain_network(network)).eval()
    size = {"frames": frames, "height": height, "width": width}
    manifest = {
        "mvcli_version": __version__,
        "inputs": {
            "video": f"uint8 (batch, views, 3, {frames}, {height}, {width}), RGB",
            "view_mask": "bool (batch, views), True = real view",
        },
        "outputs": {head: list(names) for head, names in HEADS.items()},
        "files": {},
        "parity_max_abs_error": {},
        "tolerance": tolerance,
        **(metadata or {}),
    }
    writers = {"state_dict": _write_state_dict, "onnx": _write_onnx, "torch_export": _write_pt2}
    for fmt in formats:
        path = output_dir / FILE_NAMES[fmt]
        run = writers[fmt](model, path, size, manifest, opset)
        manifest["files"][fmt] = path.name
        if run is not None:
            errors = _parity(model, run, size)
            manifest["parity_max_abs_error"][fmt] = errors
            worst = max(errors.values())
            if worst > tolerance:
                raise RuntimeError(
                    f"{path}: exported model differs from PyTorch by {worst:.2e} > {tolerance}"
                )
    atomic_write_text(output_dir / "export.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_state_dict(model, path, size, manifest, opset):
    torch.save({"state_dict": model.network.state_dict(), "manifest": manifest}, path)
    return None  # plain tensors: nothing to run


def _dynamic_shapes():
    batch = torch.export.Dim("batch", min=1, max=1024)
    views = torch.export.Dim("views", min=1, max=16)
    return {"video": {0: batch, 1: views}, "view_mask": {0: batch, 1: views}}


def _write_pt2(model, path, size, manifest, opset):
    program = torch.export.export(
        model, example_inputs(**size), dynamic_shapes=_dynamic_shapes(), strict=False
    )
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    return lambda video, mask: [t.detach() for t in loaded(video, mask)]


def _write_onnx(model, path, size, manifest, opset):
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'mvcli[export]'"
        ) from err
    torch.onnx.export(
        model,
        example_inputs(**size),
        str(path),
        input_names=["video", "view_mask"],
        output_names=list(HEADS),
        dynamic_shapes=_dynamic_shapes(),
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(video, mask):
        outs = session.run(None, {"video": video.numpy(), "view_mask": mask.numpy()})
        return [torch.from_numpy(o) for o in outs]

    return run


@torch.no_grad()
def _parity(model: ExportableNetwork, run, size: dict) -> dict[str, float]:
    """Max |exported - PyTorch| over both heads, against the training-time masked forward."""
    errors = {}
    for views in PARITY_VIEWS:
        video, mask = example_inputs(**size, batch=3, views=views, seed=views)
        reference = model.network(video, mask)
        exported = run(video, mask)
        errors[f"{views}_views"] = max(
            float((out - reference[head]).abs().max())
            for out, head in zip(exported, HEADS, strict=True)
        )
    return errors
