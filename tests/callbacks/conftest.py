"""The shared fit's TensorBoard events, read back once for the callback tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.fixture(scope="session")
def events(trained) -> EventAccumulator:
    _, fit = trained
    accumulator = EventAccumulator(str(Path(fit.trainer.log_dir)), size_guidance={"images": 0})
    return accumulator.Reload()
