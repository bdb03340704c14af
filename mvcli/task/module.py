"""The LightningModule: steps, losses, metrics and optimizer wiring around MultiViewNetwork."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Literal, Protocol

import torch
from jsonargparse.typing import NonNegativeFloat
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from mvcli import __version__
from mvcli.commandline.limits import UnitIntervalClosedOpen
from mvcli.data.taxonomy import NUM_CLASSES
from mvcli.data.tta import COPIES_DIM, average_copies
from mvcli.data.video import ClipSpec
from mvcli.models.backbones import AnyBackbone, FineTuning, build_backbone, normalization
from mvcli.models.network import MultiViewNetwork
from mvcli.models.pooling import PoolingName
from mvcli.models.speed import SpeedOptions
from mvcli.task.losses import (
    LossConfig,
    MultiTaskLoss,
    TrainingLabelCounts,
    apply_class_weights,
)
from mvcli.task.metrics import (
    ActionPredictions,
    flat_compute,
    head_metrics,
    leaderboard,
    stage_metrics,
    wrong_predictions,
)
from mvcli.task.schedulers import (
    STEP_SCHEDULERS,
    GroupFactorLR,
    final_scheduler_class,
    inner_scheduler,
    scheduler_kwargs,
)
from mvcli.utils.checkpoints import VERSION_KEY
from mvcli.utils.errors import DataError

_EVAL_STAGES = ("val", "test")
# Per stage, what is counted besides the metrics: views that could not be decoded, evaluation
# actions with no readable view (scored as wrong), training actions replaced by another.
_DAMAGE_COUNTS = {
    "train": ("skipped_views", "replaced_actions"),
    "val": ("skipped_views", "unreadable_actions"),
    "test": ("skipped_views", "unreadable_actions"),
}
# The module's own training step on a batch (or part of one): its loss, or None.
TrainingStep = Callable[[dict, int], "torch.Tensor | None"]


class StepRunner(Protocol):
    """Runs the training step on a batch for :class:`MVFoulModule` (its ``step_runner``):
    e.g. :class:`mvcli.callbacks.oom.OOMRecovery`, which splits a batch that runs out of
    memory into micro-batches and accumulates their gradients."""

    def run_training_step(self, step: TrainingStep, batch: dict, batch_idx: int):
        """Call ``step`` (on the batch, or on parts of it) and return the loss Lightning
        backpropagates (None: skip the step)."""


@dataclass(frozen=True)
class ClipInput:
    """The clips the network is built for (``model.clip.*``): all linked from ``data.*``.

    Args:
        num_frames: frames per clip (linked from ``data.frames_per_clip``).
        height: clip height (linked from ``data.img_height``).
        width: clip width (linked from ``data.img_width``).
        mean: per-channel normalisation mean in [0, 1] units (linked from ``data.mean``);
            None: the backbone's pretrained weights' (:func:`mvcli.models.backbones.normalization`).
            The values used are kept in ``hparams`` (so in checkpoints and export manifests).
        std: per-channel normalisation std in [0, 1] units (``data.std``); None: the backbone's.
    """

    num_frames: int = ClipSpec.num_frames
    height: int = ClipSpec.height
    width: int = ClipSpec.width
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


# frozen: safe as shared defaults
DEFAULT_LOSS, DEFAULT_CLIP, DEFAULT_FINETUNE = LossConfig(), ClipInput(), FineTuning()
DEFAULT_SPEED = SpeedOptions()


class MVFoulModule(LightningModule):
    """Multi-view, multi-task foul classifier.

    Args:
        backbone: video backbone; ``tiny`` is a small 3D CNN for CPU runs;
            ``hf:<hub id or folder>`` a Hugging Face video model (VideoMAE, V-JEPA 2,
            TimeSformer) with its weights: :mod:`mvcli.models.hf`.
        pretrained: backbone weights: None (random init), ``torchvision`` (torchvision's
            default weights for the backbone, through torchvision's weights API: downloaded
            once into the torch hub cache, ``$TORCH_HOME/hub/checkpoints``, checksum
            verified; offline, the error names the file and where to put it) or a path to a
            weights file.
        pooling: how the views of an action are combined: ``max``, ``mean`` or ``attention``
            (all ignore padded views).
        head_dropout: dropout before each classification head.
        loss: the training loss (``--model.loss.kind``, ``--model.loss.label_smoothing``,
            ...: :class:`mvcli.task.losses.LossConfig`). Class weights come from the data
            module's training label counts (:class:`mvcli.task.losses.TrainingLabelCounts`)
            at the start of a fit.
        optimizer: optimizer class and arguments (``class_path`` in YAML); its ``lr`` is the
            heads' (and pooling's) learning rate.
        lr_scheduler: optional LR scheduler (``class_path``): e.g.
            ``mvcli.task.schedulers.CosineToEnd`` (torch's CosineAnnealingLR; ``T_max`` left
            unset: the run's length, so the LR reaches ``eta_min`` at the end:
            ``trainer.max_epochs`` stepped per epoch, the optimizer steps of
            ``trainer.estimated_stepping_batches`` stepped per step), OneCycleLR
            (``total_steps`` filled from ``trainer.estimated_stepping_batches``), StepLR,
            ReduceLROnPlateau (monitors ``val/leaderboard``: use ``mode: max``), or
            ``mvcli.task.schedulers.LinearWarmup`` in front of any of them (the scheduler it
            wraps gets the run's length minus the warmup). A ``T_max`` or ``total_steps``
            given is kept.
        lr_interval: when the scheduler steps: ``epoch``, ``step`` (optimizer step) or
            ``auto`` (``step`` for OneCycleLR/CyclicLR, ``epoch`` otherwise).
        backbone_lr: learning rate of backbone parameters (default:
            ``backbone_lr_ratio`` x the optimizer's ``lr``); each stage is a parameter group
            of its own (``backbone.<stage>``), scheduled like the heads (a frozen stage: LR
            0, see ``freezing``).
        backbone_lr_ratio: backbone LR / heads LR, when ``backbone_lr`` is unset.
        num_classes: classes per head (linked from the data module).
        clip: frames, size and normalisation of the clips (linked from the data module:
            :class:`ClipInput`).
        finetune: transformer fine-tuning knobs (``--model.finetune.layer_decay``,
            ``drop_path``, ``gradient_checkpointing``, ``block_stages``:
            :class:`mvcli.models.backbones.FineTuning`).
        speed: how the network runs, never what it computes: ``--model.speed.compile``
            (torch.compile mode), ``memory_format`` (``channels_last_3d``),
            ``checkpointing`` (activation checkpointing per ``stage`` or ``block``):
            :class:`mvcli.models.speed.SpeedOptions`. Not carried over from a checkpoint
            into later runs (a property of the machine, not of the model).
    """

    def __init__(
        self,
        backbone: AnyBackbone = "r2plus1d_18",
        pretrained: str | None = None,
        pooling: PoolingName = "max",
        head_dropout: UnitIntervalClosedOpen = 0.2,
        loss: LossConfig = DEFAULT_LOSS,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_interval: Literal["auto", "epoch", "step"] = "auto",
        backbone_lr: NonNegativeFloat | None = None,
        backbone_lr_ratio: NonNegativeFloat = 1.0,
        num_classes: dict[str, int] | None = None,
        clip: ClipInput = DEFAULT_CLIP,
        finetune: FineTuning = DEFAULT_FINETUNE,
        speed: SpeedOptions = DEFAULT_SPEED,
    ) -> None:
        super().__init__()
        # The sections go into hparams as plain dicts (checkpoints load with weights_only,
        # YAML writes them); a dict is accepted back (hparams of a checkpoint).
        self.loss_config = LossConfig.of(loss)
        clip_input = ClipInput(**clip) if isinstance(clip, Mapping) else clip
        self.finetune = FineTuning.of(finetune)
        loss, clip = self.loss_config.to_dict(), asdict(clip_input)
        self.speed = _speed(SpeedOptions.of(speed), self.finetune)
        finetune, speed = asdict(self.finetune), self.speed.to_dict()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        loss, clip = self.loss_config, clip_input
        num_classes = dict(num_classes or NUM_CLASSES)
        self.heads = list(num_classes)
        weights = {h: 1.0 for h in self.heads} | dict(loss.task_weights or {})
        if set(weights) != set(self.heads):
            raise ValueError(
                f"model.loss.task_weights keys must be {self.heads}, got {sorted(weights)}"
            )
        # Resolved once, here: None means "what the backbone's weights expect".
        default_mean, default_std = normalization(backbone)
        mean = tuple(clip.mean) if clip.mean is not None else default_mean
        std = tuple(clip.std) if clip.std is not None else default_std
        self.hparams.clip = asdict(clip) | {"mean": mean, "std": std}
        spec = build_backbone(
            backbone,
            clip.num_frames,
            clip.height,
            clip.width,
            pretrained,
            self.finetune,
            checkpointing=self.speed.checkpointing != "off",
        )
        self.network = MultiViewNetwork(
            spec, pooling, num_classes, mean, std, head_dropout, self.speed
        )
        self.backbone_stages = spec.stages
        self.backbone_stage_names = spec.stage_names or _stage_names(
            self.network.backbone, spec.stages
        )
        self._step_runner: StepRunner | None = None
        self.criterion = MultiTaskLoss(
            weights,
            label_smoothing=loss.label_smoothing,
            kinds=loss.kind,
            focal_gamma=loss.focal_gamma,
            focal_alpha=loss.focal_alpha,
            num_classes=num_classes,
        )
        heads = {h: head_metrics(n) for h, n in num_classes.items()}
        # "train" would clash with nn.Module.train as a ModuleDict key.
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": stage_metrics(heads, stage) for stage in ("train", *_EVAL_STAGES)}
        )
        # Damage counts as torchmetrics, so they are summed across processes with the metrics.
        self.damage = nn.ModuleDict(
            {
                # Counts are never NaN: no NaN check (a device-to-host read per update).
                f"{stage}_damage": nn.ModuleDict(
                    {name: SumMetric(nan_strategy="disable") for name in names}
                )
                for stage, names in _DAMAGE_COUNTS.items()
            }
        )
        self.eval_losses = nn.ModuleDict(
            {
                f"{stage}_{name}": MeanMetric()
                for stage in _EVAL_STAGES
                for name in ("loss", *(f"loss_{h}" for h in self.heads))
            }
        )
        # Read (and reset) by mvcli.callbacks.confusion.ConfusionMatrices; synced under DDP.
        self.confusion = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {h: MulticlassConfusionMatrix(n) for h, n in num_classes.items()}
                )
                for stage in _EVAL_STAGES
            }
        )
        # Each test action's target and prediction per head, for the bootstrap intervals;
        # read (and reset) by mvcli.callbacks.metrics_writer.MetricsWriter; synced under DDP.
        self.test_predictions = ActionPredictions(self.heads)

    def forward(
        self, video: torch.Tensor, view_mask: torch.Tensor, num_views: list[int] | None = None
    ) -> dict[str, torch.Tensor]:
        return self.network(video, view_mask, num_views)

    def batch_logits(
        self, batch: dict, num_views: list[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """The scores of a batch per head: the logits, or for a test-time augmented video
        ``(B, A, V, C, T, H, W)`` the log of the copies' averaged softmax probabilities
        (:func:`mvcli.data.tta.average_copies`), one forward pass per copy (the memory of
        an unaugmented batch). Their cross-entropy, the evaluation loss, is then the
        negative log-likelihood of the averaged probabilities. ``num_views``: each action's
        real views, when known on the host (training: see :meth:`forward`)."""
        video, mask = batch["video"], batch["view_mask"]
        if video.dim() == 6:
            return self(video, mask, num_views)
        copies = video.unbind(COPIES_DIM)
        return average_copies([self(copy, mask) for copy in copies])

    # -- steps ---------------------------------------------------------------------------
    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor | None:
        self._count_damage(batch, stage)
        if batch["video"] is None:
            return None  # every action of the batch was unreadable; already warned about
        num_views = _num_views(batch) if stage == "train" else None
        logits = self.batch_logits(batch, num_views)
        loss, parts = self.criterion(logits, batch)
        size = len(batch["action_id"])
        self._log_loss(stage, "loss", loss, size, prog_bar=True)
        for head, part in parts.items():
            self._log_loss(stage, f"loss_{head}", part, size)
        preds = {h: logits[h].detach() for h in self.heads}
        self.metrics[f"{stage}_metrics"].update(preds, {h: batch[h] for h in self.heads})
        for head in self.heads:
            if stage in self.confusion:
                self.confusion[stage][head].update(preds[head], batch[head])
        if stage == "test":
            self.test_predictions.update(preds, batch, batch["action_id"])
        return loss

    def _count_damage(self, batch: dict, stage: str) -> None:
        """Count skipped views and unreadable actions; score unreadable ones as wrong.

        The official evaluator counts a labelled action without a prediction as wrong on both
        heads; feeding the metrics a class other than the target does exactly that, and keeps
        it in the metric state that torchmetrics syncs across processes.
        """
        counts = self.damage[f"{stage}_damage"]
        failed = batch["failed"]
        replaced = batch.get("replaced", [])
        views = [*batch["skipped_views"], *(f["skipped_views"] for f in failed)]
        views += [r["skipped_views"] for r in replaced]
        counts["skipped_views"].update(sum(_view_count(v) for v in views))
        if stage == "train":
            counts["replaced_actions"].update(len(replaced))
            return
        counts["unreadable_actions"].update(len(failed))
        labelled = [f for f in failed if all(h in f for h in self.heads)]
        if not labelled:
            return
        targets = {
            h: torch.tensor([f[h] for f in labelled], device=self.device) for h in self.heads
        }
        wrong = {
            h: wrong_predictions(t, self.confusion[stage][h].num_classes)
            for h, t in targets.items()
        }
        self.metrics[f"{stage}_metrics"].update(wrong, targets)
        for head in self.heads:
            self.confusion[stage][head].update(wrong[head], targets[head])
        if stage == "test":
            self.test_predictions.update(wrong, targets, [f["action_id"] for f in labelled])

    def _log_loss(
        self, stage: str, name: str, value: torch.Tensor, size: int, prog_bar: bool = False
    ) -> None:
        if stage == "train":
            self.log(f"{stage}/{name}", value, batch_size=size, prog_bar=prog_bar)
            return
        # Evaluation: a MeanMetric sums values x sizes and sizes over the processes, exact with
        # uneven shards (Lightning's sync_dist mean divides an integer count by the world size).
        metric = self.eval_losses[f"{stage}_{name}"]
        metric.update(value.detach(), weight=size)
        self.log(f"{stage}/{name}", metric, prog_bar=prog_bar)

    @property
    def step_runner(self) -> StepRunner | None:
        """What runs :meth:`batch_training_step` for :meth:`training_step`: None calls it once
        on the batch; a :class:`StepRunner` gets it with the batch (OOMRecovery sets itself
        here for a fit, to split batches that run out of memory, and unsets itself at its
        teardown)."""
        return self._step_runner

    @step_runner.setter
    def step_runner(self, runner: StepRunner | None) -> None:
        self._step_runner = runner

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if self._step_runner is not None:
            return self._step_runner.run_training_step(self.batch_training_step, batch, batch_idx)
        return self.batch_training_step(batch, batch_idx)

    def batch_training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        """The training step on ``batch`` (a whole batch, or a part a step runner split off):
        its loss; metrics and logged values updated."""
        if batch["video"] is None:
            # The training data layer replaces unreadable actions, so this means a loader
            # without that (a custom data module): never return None (DDP ranks would hang).
            raise DataError(
                f"training batch {batch_idx} has no readable action "
                f"({[f['action_id'] for f in batch['failed']]}); the training dataset must "
                "replace unreadable actions (MultiViewDataset(replace_unreadable=True))"
            )
        # Augmentation (the flip included) happened in the data module: mvcli.data.augment.
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = {k: batch[k] for k in ("action_id", "views", "skipped_views", "failed")}
        if batch["video"] is not None:
            logits = self.batch_logits(batch)
            out["probabilities"] = {h: logits[h].float().softmax(-1).cpu() for h in self.heads}
        return out

    # -- epoch ends: metrics ---------------------------------------------------------------
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        self.test_predictions.reset()  # read by the callbacks' on_test_epoch_end, run before

    def _log_epoch(self, stage: str) -> None:
        counts = self.damage[f"{stage}_damage"]
        metrics = self.metrics[f"{stage}_metrics"]
        # Decided on the counts of all ranks: compute() is a collective every rank must join.
        updates = sum(c.update_count for c in metrics.values())
        if self.all_gather(torch.tensor(updates, device=self.device)).sum() == 0:
            for count in counts.values():
                count.reset()
            return
        values = flat_compute(metrics)
        metrics.reset()
        for name, count in counts.items():
            values[f"{stage}/{name}"] = count.compute().float()
            count.reset()
        self.log_dict(values)
        board = leaderboard(values, self.heads, stage)
        self.log(f"{stage}/leaderboard", board, prog_bar=stage != "train")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets an older mvcli refuse the file clearly instead of failing on unknown keys.
        checkpoint[VERSION_KEY] = __version__

    # -- class weights ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.criterion.heads_needing_class_weights:
            self._set_class_weights(self.trainer.datamodule)

    def _set_class_weights(self, datamodule: object) -> None:
        """Class weights from the training label counts of the data module (logged once)."""
        if not isinstance(datamodule, TrainingLabelCounts):
            raise ValueError(
                f"class-weighted losses (heads {self.criterion.heads_needing_class_weights}) "
                "need the training label counts: the data module must provide `class_counts` "
                "and `balanced_heads` (mvcli.task.losses.TrainingLabelCounts; MVFoulDataModule "
                "does)"
            )
        apply_class_weights(self.criterion, self.loss_config, datamodule)

    # -- optimisation ----------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The heads' learning rate: the optimizer's ``lr`` (read and set by LR finders)."""
        keywords = getattr(self.optimizer, "keywords", {})
        if "lr" in keywords:
            return keywords["lr"]
        default = inspect.signature(self.optimizer).parameters.get("lr")
        return default.default if default is not None else float("nan")

    @lr.setter
    def lr(self, value: float) -> None:
        # configure_optimizers builds from this callable: groups keep their LR ratios.
        self.optimizer = functools.partial(self.optimizer, lr=value)

    def backbone_lr_scale(self, head_lr: float) -> float:
        """Backbone LR / heads LR: ``backbone_lr / head_lr``, else ``backbone_lr_ratio``."""
        if self.hparams.backbone_lr is not None:
            return self.hparams.backbone_lr / head_lr if head_lr > 0 else 0.0
        return self.hparams.backbone_lr_ratio

    def backbone_stage_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Stage name -> its parameters, stem first; backbone parameters outside every stage
        go with the stem (unfrozen last)."""
        seen: set[int] = set()
        out: dict[str, list[nn.Parameter]] = {}
        for name, stage in zip(self.backbone_stage_names, self.backbone_stages, strict=True):
            out[name] = [p for p in stage.parameters() if id(p) not in seen]
            seen.update(id(p) for p in out[name])
        rest = [p for p in self.network.backbone.parameters() if id(p) not in seen]
        if out:
            out[self.backbone_stage_names[0]] += rest
        elif rest:
            out["backbone"] = rest  # a backbone without stages: one group
        return out

    def stage_lr_scales(self, n: int) -> list[float]:
        """Each stage's LR / the backbone LR: 1, or under ``finetune.layer_decay`` d,
        ``d ** (n - i)`` for stage ``i`` of ``n`` (BEiT's layer decay: the embeddings
        ``d ** n``, the last block ``d``, the heads 1)."""
        decay = self.finetune.layer_decay
        return [1.0] * n if decay is None else [decay ** (n - i) for i in range(n)]

    @staticmethod
    def stage_group(stage: str) -> str:
        """The parameter group (and LearningRateMonitor curve ``lr-<Opt>/<group>``) of a stage."""
        return stage if stage == "backbone" else f"backbone.{stage}"

    def configure_optimizers(self):
        """One parameter group ``heads`` (pooling and heads, at the optimizer's ``lr``) and
        one ``backbone.<stage>`` per backbone stage (at the backbone LR), all created here,
        frozen or not: freezing sets ``requires_grad`` and each stage's LR factor, through
        the GroupFactorLR returned here (on top of the configured scheduler; see
        :meth:`GroupFactorLR.set_factor`)."""
        stages = self.backbone_stage_parameters()
        in_backbone = {id(p) for params in stages.values() for p in params}
        heads = [p for p in self.parameters() if id(p) not in in_backbone]
        optimizer = self.optimizer([{"params": heads, "name": "heads"}])
        head_lr = optimizer.param_groups[0]["lr"]
        lr = head_lr * self.backbone_lr_scale(head_lr)
        for stage, scale, params in zip(
            stages, self.stage_lr_scales(len(stages)), stages.values(), strict=True
        ):
            if params:
                optimizer.add_param_group(
                    {"params": params, "name": self.stage_group(stage), "lr": lr * scale}
                )
        if self.lr_scheduler is None:
            # The factors still need a scheduler; per step, so a ramp reaches every step.
            scheduler = GroupFactorLR(optimizer)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }
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
        scheduler = GroupFactorLR(optimizer, scheduler=self.lr_scheduler(optimizer, **kwargs))
        config = {"scheduler": scheduler, "interval": interval}
        if final is not None and issubclass(final, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if inner_scheduler(scheduler).mode != "max":
                raise ValueError(
                    "ReduceLROnPlateau monitors val/leaderboard, where higher is better: set "
                    "model.lr_scheduler.init_args.mode: max"
                )
            config |= {"monitor": "val/leaderboard", "reduce_on_plateau": True}
        return {"optimizer": optimizer, "lr_scheduler": config}


def _speed(speed: SpeedOptions, finetune: FineTuning) -> SpeedOptions:
    """``model.finetune.gradient_checkpointing`` is ``model.speed.checkpointing: block``."""
    if finetune.gradient_checkpointing and speed.checkpointing == "off":
        return replace(speed, checkpointing="block")
    return speed


def _num_views(batch: dict) -> list[int] | None:
    """Each action's count of real views, from the host-side view names (``collate_views``
    puts them first in the mask): the network then needs no device-to-host copy."""
    views = batch.get("views")
    if views is None or len(views) != len(batch["view_mask"]):
        return None
    return [len(v) for v in views]


def _view_count(skipped: list[dict]) -> int:
    """Views in a ``skipped_views`` list (its ``no_views`` entry names no view)."""
    return sum(1 for s in skipped if s.get("view"))


def _stage_names(backbone: nn.Module, stages: list[nn.Module]) -> list[str]:
    """Each stage's attribute path in the backbone (``layer4``), else ``stage<i>``."""
    names = {id(m): n for n, m in backbone.named_modules() if n}
    return [names.get(id(stage), f"stage{i}") for i, stage in enumerate(stages)]
