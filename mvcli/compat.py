"""Every use of a private Lightning API in mvcli, in one place, each with its reason.

pyproject.toml bounds ``lightning`` to the minor versions this was checked against; when the
bound moves, check each function here against the new release first.
"""

from __future__ import annotations

from lightning.pytorch import Trainer
from torch.nn.parallel import DistributedDataParallel


def rewrap_ddp(trainer: Trainer) -> None:
    """Wrap the module in DistributedDataParallel again after its trainable parameters changed.

    DDP registers the parameters that require grad when it is built and only ever all-reduces
    those: a stage unfrozen later would silently train apart on each process
    (Lightning-AI/pytorch-lightning#20340). Lightning has no public way to rebuild the
    wrapper, so this calls the two private steps of ``DDPStrategy.setup`` that build it:
    ``_setup_model`` (wraps ``lightning_module`` with the strategy's DDP arguments) and
    ``_register_ddp_hooks`` (the communication hooks configured on the strategy).
    """
    strategy = trainer.strategy
    if isinstance(getattr(strategy, "model", None), DistributedDataParallel):
        strategy.model = strategy._setup_model(strategy.lightning_module)
        if hasattr(strategy, "_register_ddp_hooks"):
            strategy._register_ddp_hooks()
