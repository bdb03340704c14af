"""Test helper: a callback that sends a real signal to its own process at a chosen batch.

The trigger comes from the environment (``MVCLI_TEST_SIGNAL_AT=SIGNAME:epoch:batch``), so the
run's saved config.yaml, reused to resume, does not fire it again.
"""

from __future__ import annotations

import os
import signal

from lightning.pytorch import Callback


class SignalAt(Callback):
    def __init__(self) -> None:
        spec = os.environ.get("MVCLI_TEST_SIGNAL_AT", "")
        self.trigger = None
        if spec:
            name, epoch, batch = spec.split(":")
            self.trigger = (getattr(signal, name), int(epoch), int(batch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.trigger and (trainer.current_epoch, batch_idx) == self.trigger[1:]:
            os.kill(os.getpid(), self.trigger[0])
