"""Throughput scalars of a real fit, read back from its TensorBoard events."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from mvcli.callbacks.throughput import Throughput


def test_throughput_scalars_per_epoch(events):
    speed = [e.value for e in events.Scalars("train/actions_per_s")]
    views = [e.value for e in events.Scalars("train/views_per_s")]
    wait = [e.value for e in events.Scalars("train/data_wait_fraction")]
    assert len(speed) == len(views) == len(wait) == 2
    assert all(s > 0 for s in speed) and all(v >= s for v, s in zip(views, speed, strict=True))
    assert all(0 < w < 1 for w in wait)
    assert [e.value for e in events.Scalars("speed/compile_s")] == [0.0, 0.0]  # eager


class _Compiled(LightningModule):
    """A linear model compiled in place (Dynamo with the eager backend: no code generation)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.layer.compile(backend="eager", dynamic=False)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["x"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_compile_time_is_logged_apart_from_the_rates(tmp_path):
    # Batches of 2 then 1 action: the second shape compiles again, in the first epoch only.
    data = [{"x": torch.ones(n, 2), "action_id": [str(i)] * n} for i, n in enumerate([2, 1, 2])]
    throughput = Throughput()
    trainer = Trainer(max_epochs=2, callbacks=[throughput], logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=tmp_path)  # fmt: skip
    seen = []

    class Spy(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(dict(trainer.callback_metrics))

    trainer.callbacks.append(Spy())
    trainer.fit(_Compiled(), DataLoader(data, batch_size=None))
    first, second = (float(s["speed/compile_s"]) for s in seen)
    assert first > 0 and second == 0.0
    assert throughput.clock.seconds == pytest.approx(first)  # stopped at teardown
    torch.compile(lambda x: x + 1, backend="eager")(torch.ones(1))
    assert throughput.clock.seconds == pytest.approx(first)
