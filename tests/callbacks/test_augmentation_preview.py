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
    # One row per action of the first batch (4), 2 views x 3 frames per row, 32x56 tiles,
    # below a header (2 lines) and right of the rows' captions.
    header, margin = 2 * 12 + 4, 160
    assert image.shape[1:] == (header + 2 + 4 * (32 + 2), margin + 2 + 6 * (56 + 2))
    # The complaint: no caption (which action, class, view, frame). Text in the header above
    # each view and in the margin of each row.
    dark = (image.min(dim=0).values < 128).numpy()
    for view in range(2):
        x = margin + 2 + view * 3 * (56 + 2)
        assert dark[:header, x : x + 56].any(), f"no caption above view {view + 1}"
    for row in range(4):
        y = header + 2 + row * (32 + 2)
        assert dark[y : y + 12, :margin].any() and dark[y + 12 : y + 24, :margin].any(), row
    events = list(_log_dir(fit).glob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[0]), size_guidance={"images": 0})
    accumulator.Reload()
    assert "augmentation/batch" in accumulator.Tags()["images"]


def test_row_labels_name_the_action_class_and_severity():
    import torch

    from mvcli.callbacks.augmentation_preview import row_labels

    severity = torch.tensor([[0.2, 0.0, 0.8, 0.0], [1.0, 0.0, 0.0, 0.0]])  # mixed, plain
    batch = {"action_id": ["7", "12"], "action": torch.tensor([1, 0]), "offence_severity": severity}
    assert row_labels(batch, 2) == [
        ["#7 Standing tackling", "Yellow card"],
        ["#12 Tackling", "No offence"],
    ]
