"""Silences third-party messages a user of mvcli cannot act on; set up once at the entry point.

Each filter is matched on its message, so a new, different warning from the same library still
shows. ``MVCLI_DEBUG=1`` keeps everything.
"""

from __future__ import annotations

import logging
import warnings

from mvcli.utils.errors import debug_enabled

# Warnings about code inside Lightning/torch, or about choices mvcli made deliberately.
IGNORED_WARNINGS = (
    # Lightning's pytree helper on torch >= 2.14: internal to Lightning.
    r".*isinstance\(treespec, LeafSpec\).*",
    # Lightning's all_gather on torch >= 2.14 (DDP): internal.
    r"torch\.distributed\.nn\.functional\.all_gather is deprecated.*",
    # mvcli's epoch metrics are torchmetrics, already summed across processes when computed.
    r"It is recommended to use `self\.log\('(train|val|test)/.*sync_dist=True.*",
    # Evaluating a checkpoint in another folder than the fit's: nothing is lost.
    r"The dirpath has changed from .*",
    # mvcli's own drivers (make demo, mvcli search) call main(args) while their own options
    # are in sys.argv, which is intended.
    r"LightningCLI's args parameter is intended to run from within Python.*",
    # data.val_split null: the data module serves no validation loader (an empty list), so
    # Lightning runs no validation loop, as asked.
    r"Total length of `list` across ranks is zero.*",
    # torch.onnx, once per input after the first sharing a dynamic axis (the video and its
    # view mask share batch and views): the axis keeps its name, nothing to act on.
    r"# The axis name: \w+ will not be used, since it shares the same shape constraints.*",
)
# Log lines that advertise (litlogger), or report a choice mvcli made (its model summary).
IGNORED_LOG_LINES = ("litlogger", "Trainer already configured with model summary callbacks")


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in IGNORED_LOG_LINES)


_FILTER = _DropLines()


def quiet_third_party() -> None:
    """Install the filters (idempotent); nothing is filtered under ``MVCLI_DEBUG`` (the same
    switch that shows tracebacks: :func:`mvcli.utils.errors.debug_enabled`)."""
    if debug_enabled():
        return
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
