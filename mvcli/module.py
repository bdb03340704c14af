"""The LightningModule: steps, losses, metrics and optimizer wiring around MultiViewNetwork."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import nn

from mvcli.data.taxonomy import HEADS, NUM_CLASSES
from mvcli.losses import (
    ClassWeighting,
    LossName,
    MultiTaskLoss,
    class_weights,
    format_class_weights,
)
from mvcli.metrics import head_metrics, leaderboard
from mvcli.models.backbones import BackboneName, build_backbone, normalization
from mvcli.models.network import MultiViewNetwork
from mvcli.models.pooling import PoolingName
from mvcli.schedulers import (
    STEP_SCHEDULERS,
    final_scheduler_class,
    scheduler_kwargs,
)

_EVAL_STAGES = ("val", "test")


class MVFoulModule(LightningModule):
    """Multi-view, multi-task foul classifier.

    Args:
        backbone: video backbone; ``tiny`` is a small 3D CNN for CPU runs.
        pretrained: backbone weights: None (random init), ``torchvision`` (torchvision's
            default weights for the backbone, through torchvision's weights API: downloaded
            once into the torch hub cache, ``$TORCH_HOME/hub/checkpoints``, checksum
            verified; offline, the error names the file and where to put it) or a path to a
            weights file.
        pooling: how the views of an action are combined: ``max``, ``mean`` or ``attention``
            (all ignore padded views).
        head_dropout: dropout before each classification head.
        task_weights: loss weight per head (``offence_severity``, ``action``).
        loss: loss of every head, or per head (``{offence_severity: focal, action:
            weighted}``): ``plain`` cross-entropy, ``weighted`` cross-entropy with class
            weights computed from the training labels (``class_weighting``), or ``focal``.
        label_smoothing: label smoothing, for every head or per head.
        focal_gamma: focal-loss focusing parameter, for every head or per head.
        focal_alpha: per-class alpha of focal heads: ``{head: class_weights}`` (the class
            weights of ``class_weighting``) or ``{head: [a_0, a_1, ...]}``; unset: none.
        class_weighting: how class weights are computed from the training label counts n_c:
            ``inverse`` (1/n_c), ``sqrt_inverse`` (1/sqrt(n_c)) or ``effective_number``
            ((1-beta)/(1-beta^n_c)); scaled so the average training sample weighs 1; a class
            absent from training gets 0. Logged once at the start of a fit.
        effective_beta: beta of ``effective_number`` weighting, in [0, 1).
        max_weight_ratio: cap on the largest / smallest class weight of a head.
        allow_double_balancing: silence the warning given when a head has class-weighted
            loss and the training sampler also balances its classes (``data.sampler``).
        optimizer: optimizer class and arguments (``class_path`` in YAML); its ``lr`` is the
            heads' (and pooling's) learning rate.
        lr_scheduler: optional LR scheduler (``class_path``): e.g. CosineAnnealingLR,
            OneCycleLR (``total_steps`` filled from ``trainer.estimated_stepping_batches``),
            StepLR, ReduceLROnPlateau (monitors ``val/leaderboard``: use ``mode: max``), or
            ``mvcli.schedulers.LinearWarmup`` in front of any of them.
        lr_interval: when the scheduler steps: ``epoch``, ``step`` (optimizer step) or
            ``auto`` (``step`` for OneCycleLR/CyclicLR, ``epoch`` otherwise).
        backbone_lr: learning rate of backbone parameters (default:
            ``backbone_lr_ratio`` x the optimizer's ``lr``). Stages unfrozen during training
            (``freezing``) run at the same ratio to the heads' current LR.
        backbone_lr_ratio: backbone LR / heads LR, when ``backbone_lr`` is unset.
        num_classes: classes per head (linked from the data module).
        num_frames: frames per clip (linked from ``data.frames_per_clip``).
        img_height: clip height (linked from the data module).
        img_width: clip width (linked from the data module).
        mean: per-channel normalisation mean in [0, 1] units (linked from the data module);
            None: the backbone's pretrained weights' (:func:`mvcli.models.backbones.normalization`).
            The values used are kept in ``hparams`` (so in checkpoints and export manifests).
        std: per-channel normalisation std in [0, 1] units; None: the backbone's.
    """

    def __init__(
        self,
        backbone: BackboneName = "r2plus1d_18",
        pretrained: str | None = None,
        pooling: PoolingName = "max",
        head_dropout: float = 0.2,
        task_weights: dict[str, float] | None = None,
        loss: LossName | dict[str, LossName] = "plain",
        label_smoothing: float | dict[str, float] = 0.0,
        focal_gamma: float | dict[str, float] = 2.0,
        focal_alpha: dict[str, Literal["class_weights"] | list[float]] | None = None,
        class_weighting: ClassWeighting = "inverse",
        effective_beta: float = 0.999,
        max_weight_ratio: float | None = None,
        allow_double_balancing: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_interval: Literal["auto", "epoch", "step"] = "auto",
        backbone_lr: float | None = None,
        backbone_lr_ratio: float = 1.0,
        num_classes: dict[str, int] | None = None,
        num_frames: int = 16,
        img_height: int = 224,
        img_width: int = 398,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
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
        # Resolved once, here: None means "what the backbone's weights expect".
        default_mean, default_std = normalization(backbone)
        self.hparams.mean = mean = tuple(mean) if mean is not None else default_mean
        self.hparams.std = std = tuple(std) if std is not None else default_std
        spec = build_backbone(backbone, num_frames, img_height, img_width, pretrained)
        self.network = MultiViewNetwork(spec, pooling, num_classes, mean, std, head_dropout)
        self.backbone_stages = spec.stages
        self.backbone_stage_names = _stage_names(self.network.backbone, spec.stages)
        if (backbone_lr is not None and backbone_lr < 0) or backbone_lr_ratio < 0:
            raise ValueError("model.backbone_lr and model.backbone_lr_ratio must be >= 0")
        self.criterion = MultiTaskLoss(
            weights,
            label_smoothing=label_smoothing,
            kinds=loss,
            focal_gamma=focal_gamma,
            focal_alpha=focal_alpha,
            num_classes=num_classes,
        )
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
        # Augmentation (the flip included) happened in the data module: mvcli.data.augment.
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

    # -- class weights ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._set_class_weights()

    def _set_class_weights(self) -> None:
        """Class weights from the training labels of the data module, logged once."""
        heads = self.criterion.heads_needing_class_weights
        if not heads:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        counts = getattr(datamodule, "class_counts", None)
        if counts is None:
            raise ValueError(
                f"class-weighted losses (heads {heads}) need the training label counts: the "
                "data module must expose `class_counts` (MVFoulDataModule does)"
            )
        hp = self.hparams
        weights = {
            h: class_weights(counts[h], hp.class_weighting, hp.effective_beta, hp.max_weight_ratio)
            for h in heads
        }
        for head, w in weights.items():
            self.criterion.set_class_weights(head, w)
        absent = {h: [HEADS[h][i] for i, n in enumerate(counts[h]) if n == 0] for h in heads}
        note = "".join(
            f"\n  absent from training ({h}, weight 0): {a}" for h, a in absent.items() if a
        )
        rank_zero_info(
            f"class weights ({hp.class_weighting}) from training label counts "
            f"{ {h: list(counts[h]) for h in heads} }:\n"
            + format_class_weights(weights, HEADS)
            + note
        )
        balanced = set(getattr(datamodule, "balanced_heads", ()) or ())
        double = sorted(balanced & set(heads))
        if double and not hp.allow_double_balancing:
            rank_zero_warn(
                f"double balancing: head(s) {double} have a class-weighted loss and the training "
                f"sampler (data.sampler={datamodule.hparams.sampler!r}) also balances their "
                "classes, so rare classes are boosted twice. Use one of the two, or set "
                "model.allow_double_balancing=true if this is intended."
            )

    # -- optimisation ----------------------------------------------------------------------
    def backbone_lr_scale(self, head_lr: float) -> float:
        """Backbone LR / heads LR: ``backbone_lr / head_lr``, else ``backbone_lr_ratio``."""
        if self.hparams.backbone_lr is not None:
            return self.hparams.backbone_lr / head_lr if head_lr > 0 else 0.0
        return self.hparams.backbone_lr_ratio

    def configure_optimizers(self):
        """Parameter groups ``heads`` (pooling and heads, at the optimizer's ``lr``) and
        ``backbone`` (the backbone parameters trainable now, at the backbone LR). Stages
        unfrozen later are added as groups of their own by the freezing callback."""
        in_backbone = {id(p) for p in self.network.backbone.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        heads = [p for p in trainable if id(p) not in in_backbone]
        backbone = [p for p in trainable if id(p) in in_backbone]
        optimizer = self.optimizer([{"params": heads, "name": "heads"}])
        if backbone:
            lr = optimizer.param_groups[0]["lr"] * self.backbone_lr_scale(
                optimizer.param_groups[0]["lr"]
            )
            optimizer.add_param_group({"params": backbone, "name": "backbone", "lr": lr})
        if self.lr_scheduler is None:
            return optimizer
        final = final_scheduler_class(self.lr_scheduler)
        interval = self.hparams.lr_interval
        if interval == "auto":
            is_step = final is not None and issubclass(final, STEP_SCHEDULERS)
            interval = "step" if is_step else "epoch"
        total = (
            self.trainer.estimated_stepping_batches
            if interval == "step"
            else self.trainer.max_epochs
        )
        if total is None or total < 0 or total == float("inf"):
            total = 1  # only reached by schedulers needing total steps on an endless run
        kwargs = scheduler_kwargs(self.lr_scheduler, optimizer, int(total))
        scheduler = self.lr_scheduler(optimizer, **kwargs)
        config = {"scheduler": scheduler, "interval": interval}
        if final is not None and issubclass(final, torch.optim.lr_scheduler.ReduceLROnPlateau):
            plateau = getattr(scheduler, "scheduler", scheduler)  # inside a LinearWarmup
            if plateau.mode != "max":
                raise ValueError(
                    "ReduceLROnPlateau monitors val/leaderboard, where higher is better: set "
                    "model.lr_scheduler.init_args.mode: max"
                )
            config |= {"monitor": "val/leaderboard", "reduce_on_plateau": True}
        return {"optimizer": optimizer, "lr_scheduler": config}


def _stage_names(backbone: nn.Module, stages: list[nn.Module]) -> list[str]:
    """Each stage's attribute path in the backbone (``layer4``), else ``stage<i>``."""
    names = {id(m): n for n, m in backbone.named_modules() if n}
    return [names.get(id(stage), f"stage{i}") for i, stage in enumerate(stages)]
