"""The LightningModule: steps, losses, metrics and optimizer wiring around MultiViewNetwork."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from mvcli.data.datamodule import KINETICS_MEAN, KINETICS_STD
from mvcli.data.taxonomy import NUM_CLASSES
from mvcli.losses import MultiTaskLoss
from mvcli.metrics import head_metrics, leaderboard
from mvcli.models.backbones import BackboneName, build_backbone
from mvcli.models.network import MultiViewNetwork
from mvcli.models.pooling import PoolingName

_EVAL_STAGES = ("val", "test")


class MVFoulModule(LightningModule):
    """Multi-view, multi-task foul classifier.

    Args:
        backbone: video backbone; ``tiny`` is a small 3D CNN for CPU runs.
        pretrained: backbone weights: None (random init), ``torchvision`` (torchvision's
            default weights, taken from the torch hub cache, never downloaded) or a path to a
            weights file.
        pooling: how the views of an action are combined: ``max``, ``mean`` or ``attention``
            (all ignore padded views).
        head_dropout: dropout before each classification head.
        task_weights: loss weight per head (``offence_severity``, ``action``).
        label_smoothing: cross-entropy label smoothing.
        hflip_prob: probability of flipping a training action horizontally (all its views
            together), applied on the device.
        optimizer: optimizer class and arguments (``class_path`` in YAML).
        lr_scheduler: optional LR scheduler; ``ReduceLROnPlateau`` monitors
            ``val/leaderboard``.
        num_classes: classes per head (linked from the data module).
        num_frames: frames per clip (linked from ``data.frames_per_clip``).
        img_height: clip height (linked from the data module).
        img_width: clip width (linked from the data module).
        mean: per-channel normalisation mean in [0, 1] units (linked from the data module).
        std: per-channel normalisation std in [0, 1] units (linked from the data module).
    """

    def __init__(
        self,
        backbone: BackboneName = "r2plus1d_18",
        pretrained: str | None = None,
        pooling: PoolingName = "max",
        head_dropout: float = 0.2,
        task_weights: dict[str, float] | None = None,
        label_smoothing: float = 0.0,
        hflip_prob: float = 0.5,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        num_classes: dict[str, int] | None = None,
        num_frames: int = 16,
        img_height: int = 224,
        img_width: int = 398,
        mean: tuple[float, float, float] = KINETICS_MEAN,
        std: tuple[float, float, float] = KINETICS_STD,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        num_classes = dict(num_classes or NUM_CLASSES)
        self.heads = list(num_classes)
        weights = {h: 1.0 for h in self.heads} | dict(task_weights or {})
        if set(weights) != set(self.heads):
            raise ValueError(f"model.task_weights keys must be {self.heads}, got {sorted(weights)}")
        spec = build_backbone(backbone, num_frames, img_height, img_width, pretrained)
        self.network = MultiViewNetwork(spec, pooling, num_classes, mean, std, head_dropout)
        self.backbone_stages = spec.stages
        self.criterion = MultiTaskLoss(weights, label_smoothing)
        self.metrics = nn.ModuleDict(
            {
                # "train" would clash with nn.Module.train as a ModuleDict key.
                f"{stage}_metrics": nn.ModuleDict(
                    {h: head_metrics(n) for h, n in num_classes.items()}
                )
                for stage in ("train", *_EVAL_STAGES)
            }
        )
        self._skipped = {stage: 0 for stage in ("train", *_EVAL_STAGES)}

    def forward(self, video: torch.Tensor, view_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.network(video, view_mask)

    def _hflip(self, video: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(video.shape[0], device=video.device) < self.hparams.hflip_prob
        if flip.any():
            video = video.clone()
            video[flip] = video[flip].flip(-1)
        return video

    # -- steps ---------------------------------------------------------------------------
    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor | None:
        self._skipped[stage] += sum(map(len, batch["skipped_views"])) + len(batch["failed"])
        if batch["video"] is None:
            return None  # every action of the batch was unreadable; already warned about
        logits = self(batch["video"], batch["view_mask"])
        loss, parts = self.criterion(logits, batch)
        size = len(batch["action_id"])
        self.log(f"{stage}/loss", loss, batch_size=size, prog_bar=True, sync_dist=stage != "train")
        for head, part in parts.items():
            self.log(f"{stage}/loss_{head}", part, batch_size=size, sync_dist=stage != "train")
        for head in self.heads:
            self.metrics[f"{stage}_metrics"][head].update(logits[head].detach(), batch[head])
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if batch["video"] is not None and self.hparams.hflip_prob > 0:
            batch["video"] = self._hflip(batch["video"])  # on the device, after the transfer
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = {k: batch[k] for k in ("action_id", "views", "skipped_views", "failed")}
        if batch["video"] is not None:
            logits = self(batch["video"], batch["view_mask"])
            out["probabilities"] = {h: logits[h].float().softmax(-1).cpu() for h in self.heads}
        return out

    # -- epoch ends: metrics ---------------------------------------------------------------
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # Written once the epoch-level aggregates (losses included) are in callback_metrics.
    def on_validation_end(self) -> None:
        if self.trainer.state.fn == TrainerFn.VALIDATING:
            self._write_metrics("validate", "val")

    def on_test_end(self) -> None:
        self._write_metrics("test", "test")

    def _log_epoch(self, stage: str) -> None:
        skipped = self.all_gather(torch.tensor(self._skipped[stage], device=self.device)).sum()
        self._skipped[stage] = 0
        collections = self.metrics[f"{stage}_metrics"]
        if all(c["acc"].update_count == 0 for c in collections.values()):
            return
        values = {}
        for head, collection in collections.items():
            for name, value in collection.compute().items():
                values[f"{stage}/{name}_{head}"] = value
            collection.reset()
        values[f"{stage}/skipped_views"] = skipped.float()
        self.log_dict(values)
        board = leaderboard(values, self.heads, stage)
        self.log(f"{stage}/leaderboard", board, prog_bar=stage != "train")

    @rank_zero_only
    def _write_metrics(self, stage: str, prefix: str) -> None:
        metrics = self.trainer.callback_metrics
        values = {k: float(v) for k, v in sorted(metrics.items()) if k.startswith(f"{prefix}/")}
        if not values:
            return
        log_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{stage}_metrics.json"
        path.write_text(json.dumps(values, indent=2) + "\n")

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer(params)
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/leaderboard"
        return {"optimizer": optimizer, "lr_scheduler": config}
