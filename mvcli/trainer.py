"""Lightning's Trainer plus mvcli's own subcommands.

LightningCLI turns each Trainer method named in :meth:`mvcli.cli.MVCLI.subcommands` into a
subcommand whose arguments come from the method's typed signature, so a subcommand of ours is
a method here taking ``model`` and ``datamodule`` like ``fit`` does.
"""

from __future__ import annotations

from lightning.pytorch import Trainer

# Subcommand name -> arguments LightningCLI fills itself (not exposed as options).
EXTRA_SUBCOMMANDS: dict[str, set[str]] = {}


class MVTrainer(Trainer):
    """The Trainer used by ``mvcli``; extra subcommands are methods registered above."""
