"""What every run prints: a Rich progress bar without ``v_num`` and a model summary without
FLOPs (Lightning counts them only for modules with an ``example_input_array``, else 0)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count


class ProgressBar(RichProgressBar):
    """Rich progress bar showing the metrics only; the run's version is in its folder name.

    Lightning's RichProgressBar always adds ``v_num``, which this subclass removes, and reads
    the logged values (the loss on the device) at every training batch, which makes the host
    wait for the device each step: here the values shown are read every
    ``trainer.log_every_n_steps`` batches (the loggers' interval) and at epoch ends; the bar
    itself moves at every batch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shown: dict | None = None  # the metrics last read
        self.read_now = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.read_now = (batch_idx + 1) % max(trainer.log_every_n_steps, 1) == 0
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self.read_now = True

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        if not self.read_now and self.shown is not None:
            return self.shown
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        self.shown = items
        return items


class ModelSummary(RichModelSummary):
    """Rich model summary: layers, parameter counts and size, no FLOPs column or total.

    Lightning's RichModelSummary always prints FLOPs (0 without ``example_input_array``) and
    no frozen count, which this subclass changes.
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for i, (name, _) in enumerate(columns):
            table.add_column(" " if i == 0 else name, justify="left" if i < 3 else "right")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(
            f"[bold]Trainable params[/]: {get_human_readable_count(trainable_parameters)}   "
            f"[bold]Frozen[/]: {get_human_readable_count(frozen)}   "
            f"[bold]Total[/]: {get_human_readable_count(total_parameters)}   "
            f"[bold]Size[/]: {model_size:,.1f} MB"
        )
