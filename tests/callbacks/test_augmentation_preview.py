"""The augmented training batch as an image grid: written to the run folder and TensorBoard."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _log_dir(cli) -> Path:
    return Path(cli.trainer.log_dir)


def test_fit_writes_the_augmented_batch_grid(trained):
    _, fit = trained
    path = _log_dir(fit) / "augmented_batch.png"
    assert path.is_file()
    from torchvision.io import read_image

    image = read_image(str(path))
    # One row per action of the first batch (4), 2 views x 3 frames per row, 32x56 tiles.
    assert image.shape[1:] == (2 + 4 * (32 + 2), 2 + 6 * (56 + 2))
    events = list(_log_dir(fit).glob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[0]), size_guidance={"images": 0})
    accumulator.Reload()
    assert "augmentation/batch" in accumulator.Tags()["images"]
