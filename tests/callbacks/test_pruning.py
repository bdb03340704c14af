"""configs/pruning.yaml: ModelPruning reaches the configured sparsity, the pruned network
keeps training, and its checkpoint exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from torch import nn

from mvcli.callbacks.pruning import ScheduledPruning
from mvcli.cli import main
from mvcli.deploy.compress import sparsity
from tests.conftest import CONF, CONFIGS, tiny_args


class _WeightsAfterPruning(Callback):
    """The network's weights as the first epoch after the pruning step starts."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            self.weights = _weights(pl_module.network)


def _weights(network: nn.Module) -> dict[str, torch.Tensor]:
    """Effective conv/linear weights (while pruning is on, ``weight`` = ``weight_orig * mask``)."""
    return {
        name: m.weight.detach().clone()
        for name, m in network.named_modules()
        if isinstance(m, (nn.Conv3d, nn.Linear))
    }


def _fit(synthetic_root, tmp_path, overlay: Path, *extra: str, epochs: int = 2):
    args = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(overlay),
            *tiny_args(synthetic_root, tmp_path), "--trainer.max_epochs", str(epochs),
            *extra]  # fmt: skip
    cli = main(args, run=False)
    recorder = _WeightsAfterPruning()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli, recorder


def _convs(network: nn.Module) -> list[nn.Conv3d]:
    return [m for m in network.modules() if isinstance(m, nn.Conv3d)]


def test_unstructured_pruning_reaches_the_target_trains_on_and_exports(synthetic_root, tmp_path):
    schedule = ["--trainer.callbacks.init_args.start_epoch=0",
                "--trainer.callbacks.init_args.end_epoch=1"]  # fmt: skip
    cli, recorder = _fit(synthetic_root, tmp_path, CONFIGS / "pruning.yaml", *schedule)
    network = cli.model.network
    assert sparsity(network) == pytest.approx(0.5, abs=1e-3)  # global L1 ranking: exact share

    # Still trains: the kept weights moved during the epoch after pruning, the pruned stayed 0.
    after = _weights(network)
    for name, before in recorder.weights.items():
        assert torch.all(after[name][before == 0] == 0), name
    assert sum(not torch.equal(after[n], w) for n, w in recorder.weights.items()) > len(after) / 2
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])

    # The checkpoint holds plain (permanently pruned) weights and exports.
    ckpt = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if k.endswith(("_orig", "_mask"))]
    out = tmp_path / "export"
    main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(out), "--formats", "[onnx]",
          "--half", "true", "--eval_split", "Valid", "--latency_repeats", "1",
          "--trainer.logger", "false", "--data.num_workers", "0"])  # fmt: skip
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["weight_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert manifest["compression"]["eval_split"] == "Valid"  # the split the user named
    assert manifest["compression"]["variants"]["fp32"]["actions"] > 0


def test_structured_pruning_removes_the_configured_share_of_channels(synthetic_root, tmp_path):
    # One epoch: the schedule prunes after it; training on is the unstructured test's part.
    overlay = CONF / "pruning_structured.yaml"
    cli, _ = _fit(synthetic_root, tmp_path, overlay, epochs=1)
    for conv in _convs(cli.model.network):
        channels = conv.weight.shape[0]
        zero = (conv.weight.flatten(1).abs().sum(1) == 0).sum().item()
        assert zero == round(0.25 * channels), conv
    for linear in (m for m in cli.model.network.modules() if isinstance(m, nn.Linear)):
        assert (linear.weight != 0).all()  # layers: [conv]


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_schedule_steps_compound_to_the_target(steps):
    callback = ScheduledPruning(target_sparsity=0.6, start_epoch=2, end_epoch=2 + steps)
    kept = 1.0
    for epoch in range(20):
        kept *= 1 - callback._amount_at(epoch)
    assert 1 - kept == pytest.approx(0.6)
    assert callback._amount_at(1) == 0 and callback._amount_at(2 + steps) == 0


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="start_epoch < end_epoch"):
        ScheduledPruning(start_epoch=3, end_epoch=3)
