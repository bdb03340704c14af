"""Gradient norms, total and per optimizer parameter group."""

from __future__ import annotations

import torch
from jsonargparse.typing import PositiveInt
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim import Optimizer


class GradientNorms(Callback):
    """Logs ``train/grad_norm/total`` and ``train/grad_norm/<group>`` (the optimizer's
    parameter groups: ``heads`` and one ``backbone.<stage>`` per stage) before optimizer steps.

    Computed after gradient unscaling (16-mixed) and before clipping, so the values show what
    clipping acts on.

    Args:
        norm_type: the p of the p-norm (2.0: Euclidean; ``inf``: largest absolute value).
        every_n_steps: optimizer steps between two logs.
        per_parameter: also log each parameter's norm (Lightning's ``grad_<p>_norm/<name>``).

    The norms stay on the device (logged as tensors: Lightning reads them at its log
    interval): Lightning's ``grad_norm`` gathers the per-parameter norms into a new tensor
    through Python numbers, a device-to-host read per parameter, and gives no norm per
    optimizer parameter group.
    """

    def __init__(
        self, norm_type: float = 2.0, every_n_steps: PositiveInt = 50, per_parameter: bool = False
    ) -> None:
        self.norm_type = float(norm_type)
        self.every_n_steps = every_n_steps
        self.per_parameter = per_parameter

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        if trainer.global_step % self.every_n_steps != 0:
            return
        # One norm per parameter; groups and total are norms of those norms.
        per_param = _grad_norms(pl_module, self.norm_type)
        total = self._combine(list(per_param.values())) if per_param else None
        names = {id(p): n for n, p in pl_module.named_parameters()}
        prefix = f"grad_{self.norm_type}_norm/"
        values = {}
        for i, group in enumerate(optimizer.param_groups):
            norms = [
                per_param[prefix + names[id(p)]]
                for p in group["params"]
                if id(p) in names and prefix + names[id(p)] in per_param
            ]
            if norms:
                name = group.get("name") or f"group{i}"
                values[f"train/grad_norm/{name}"] = self._combine(norms)
        if total is not None:
            values["train/grad_norm/total"] = total
            pl_module.log_dict(values, on_step=True, on_epoch=False)
        if self.per_parameter:
            pl_module.log_dict(per_param, on_step=True, on_epoch=False)

    def _combine(self, norms: list[torch.Tensor]) -> torch.Tensor:
        return torch.linalg.vector_norm(torch.stack(norms), self.norm_type)


def _grad_norms(module: torch.nn.Module, norm_type: float) -> dict[str, torch.Tensor]:
    """``grad_<p>_norm/<name>`` -> each parameter's gradient norm (Lightning's names), as
    device tensors."""
    return {
        f"grad_{norm_type}_norm/{name}": torch.linalg.vector_norm(p.grad.detach(), norm_type)
        for name, p in module.named_parameters()
        if p.grad is not None
    }
