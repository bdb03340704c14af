"""Lightning's ModelPruning with what a YAML config cannot express: a sparsity target reached
by a schedule over epochs, and a choice of layer types (normalisation layers are never
pruned)."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.callbacks import ModelPruning
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from mvcli.commandline.limits import UnitIntervalClosedOpen
from mvcli.deploy.compress import sparsity

PruningMethod = Literal["l1_unstructured", "random_unstructured", "ln_structured"]
LayerType = Literal["conv", "linear"]
_LAYER_TYPES = {"conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d), "linear": (nn.Linear,)}


class ScheduledPruning(ModelPruning):
    """Prune conv/linear weights by magnitude until ``target_sparsity``, then keep training.

    Pruning happens at the end of the training epochs ``start_epoch`` .. ``end_epoch - 1``;
    each step removes the same fraction of the remaining weights, so the share of pruned
    weights (or, structured, of output channels) reaches ``target_sparsity`` after the last
    step. The epochs that follow fine-tune the pruned network. Checkpoints hold the weights
    with pruning made permanent (zeros), so they load into an unpruned network and export.

    Args:
        pruning_method: ``l1_unstructured`` (smallest |weight| anywhere), ``random_unstructured``
            or ``ln_structured`` (whole output channels with the smallest norm).
        target_sparsity: share of weights (unstructured) or of output channels of each layer
            (structured) pruned at the end of the schedule, in [0, 1).
        start_epoch: first epoch after which weights are pruned.
        end_epoch: pruning stops before this epoch (default: ``start_epoch + 1``, one shot).
        layers: layer types whose weights are pruned.
        global_ranking: unstructured only: rank weights across all layers (one threshold)
            rather than layer by layer.
        structured_norm: structured only: norm ranking the channels (1: L1).
        reset_to_initial_weights: the lottery-ticket variant: after each step the kept
            weights go back to their initial values.
        verbose: 1: log the sparsity after each step; 2: per layer too.
    """

    def __init__(
        self,
        pruning_method: PruningMethod = "l1_unstructured",
        target_sparsity: UnitIntervalClosedOpen = 0.5,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        layers: list[LayerType] | None = None,
        global_ranking: bool = True,
        structured_norm: int = 1,
        reset_to_initial_weights: bool = False,
        verbose: Literal[0, 1, 2] = 1,
    ) -> None:
        end_epoch = start_epoch + 1 if end_epoch is None else end_epoch
        if not 0 <= start_epoch < end_epoch:
            raise ValueError(f"need 0 <= start_epoch < end_epoch, got {start_epoch}, {end_epoch}")
        structured = pruning_method == "ln_structured"
        super().__init__(
            pruning_fn=pruning_method,
            parameter_names=["weight"],
            use_global_unstructured=global_ranking and not structured,
            amount=self._amount_at,
            use_lottery_ticket_hypothesis=reset_to_initial_weights,
            pruning_dim=0 if structured else None,  # output channels / units
            pruning_norm=structured_norm if structured else None,
            make_pruning_permanent=True,
            verbose=0,
        )
        self.target_sparsity = target_sparsity
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.layers = tuple(layers or ("conv", "linear"))
        self.pruned_parameters: list = []  # (module, name) pairs, set in setup
        self._log_sparsity = verbose

    def _amount_at(self, epoch: int) -> float:
        """Share of the remaining weights pruned after ``epoch``: n equal steps compound to
        the target, since each step prunes among what earlier steps kept."""
        if not self.start_epoch <= epoch < self.end_epoch:
            return 0.0
        steps = self.end_epoch - self.start_epoch
        return 1 - (1 - self.target_sparsity) ** (1 / steps)

    def filter_parameters_to_prune(self, parameters_to_prune=()):
        types = tuple(t for name in self.layers for t in _LAYER_TYPES[name])
        # Kept for the sparsity log: ModelPruning keeps this list private.
        self.pruned_parameters = [(m, p) for m, p in parameters_to_prune if isinstance(m, types)]
        return self.pruned_parameters

    def apply_pruning(self, amount) -> None:
        super().apply_pruning(amount)
        if self._log_sparsity:
            modules = [m for m, _ in self.pruned_parameters]
            rank_zero_info(f"pruning: {pruned_share(modules):.1%} of the weights pruned")
            if self._log_sparsity > 1:
                for module, _ in self.pruned_parameters:
                    rank_zero_info(f"  {module}: {pruned_share([module]):.1%}")

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch < self.end_epoch and not trainer.fast_dev_run:
            rank_zero_warn(
                f"pruning: training stopped at epoch {trainer.current_epoch}, before the end of "
                f"the schedule (end_epoch={self.end_epoch}): the target sparsity "
                f"{self.target_sparsity} was not reached"
            )
        super().on_train_end(trainer, pl_module)


def pruned_share(modules: list[nn.Module]) -> float:
    """Share of zero weights of ``modules`` (their masks while pruning is a reparametrisation)."""
    return sparsity(nn.ModuleList(modules))
