"""NonFiniteGuard: NaN/inf steps skipped (weights unchanged), counted, run stopped past a limit."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from mvcli.callbacks.nonfinite import CHECKPOINT_NAME, NonFiniteError, NonFiniteGuard


class Poisoned(LightningModule):
    """A linear model whose loss is NaN (or its gradient inf) on the actions named 'bad*'."""

    def __init__(self, fault: str = "loss") -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.fault = fault
        self.weights_seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.weights_seen.append(self.layer.weight.detach().clone())
        out = self.layer(batch["x"])
        bad = any(a.startswith("bad") for a in batch["action_id"])
        if bad and self.fault == "grad":  # finite loss, infinite gradient (this graph only)
            out.register_hook(lambda g: g * float("inf"))
        loss = out.pow(2).mean()
        if bad and self.fault == "loss":
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(ids):
    data = [{"x": torch.ones(2), "action_id": i} for i in ids]

    def collate(samples):
        return {
            "x": torch.stack([d["x"] for d in samples]),
            "action_id": [d["action_id"] for d in samples],
        }

    return DataLoader(data, batch_size=1, collate_fn=collate)


def _trainer(tmp_path, guard, epochs=1):
    return Trainer(max_epochs=epochs, callbacks=[guard], logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path,
                   enable_checkpointing=False)  # fmt: skip


@pytest.mark.parametrize("fault", ["loss", "grad"])
def test_nonfinite_steps_are_skipped_and_counted(fault, tmp_path):
    guard = NonFiniteGuard(max_steps=5)
    model = Poisoned(fault)
    trainer = _trainer(tmp_path, guard)
    trainer.fit(model, _loader(["1", "bad2", "3", "bad4", "5"]))
    seen = model.weights_seen
    assert not torch.equal(seen[0], seen[1])  # a good step moves the weights
    assert torch.equal(seen[1], seen[2]) and torch.equal(seen[3], seen[4])  # bad ones do not
    assert all(torch.isfinite(w).all() for w in seen) and torch.isfinite(model.layer.weight).all()
    assert guard.skipped == 2 and guard.offending == ["bad2", "bad4"]
    assert trainer.callback_metrics["train/nonfinite_steps"] == 2


def test_past_the_limit_the_run_stops_with_a_checkpoint(tmp_path):
    guard = NonFiniteGuard(max_steps=1)
    trainer = _trainer(tmp_path, guard)
    with pytest.raises(NonFiniteError) as err:
        trainer.fit(Poisoned(), _loader(["1", "bad2", "3", "bad4", "5", "bad6"]))
    message = str(err.value)
    assert "2 optimizer steps" in message and "['bad2', 'bad4']" in message
    assert "nonfinite.max_steps=1" in message
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert torch.isfinite(checkpoint["state_dict"]["layer.weight"]).all()
