"""The command line: LightningCLI over MVFoulModule and MVFoulDataModule."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import CLI
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from mvcli import __version__
from mvcli.callbacks.augmentation_preview import AugmentationPreview
from mvcli.callbacks.prediction_writer import NothingPredicted, SubmissionWriter
from mvcli.data.datamodule import PREPROCESSING_KEYS, MVFoulDataModule, NothingToPredict
from mvcli.module import MVFoulModule
from mvcli.scoring import score_command
from mvcli.trainer import EXTRA_SUBCOMMANDS, MVTrainer

LOGGER_DEFAULT = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "name": "mvcli"},
}
# What a checkpoint carries into later runs: the model's own choices and the preprocessing.
# Link targets (sizes, classes) follow from the data values; locations and loader settings
# belong to the machine the run is on. Other keys of a checkpoint are dropped (model.hflip_prob
# of older runs: the flip is now part of data.augmentation, which only training uses).
_MODEL_KEYS = {
    "backbone",
    "pooling",
    "head_dropout",
    "task_weights",
    "label_smoothing",
}
_DATA_KEYS = {*PREPROCESSING_KEYS, "num_views", "min_frames"}
CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/leaderboard",
    "checkpoint.mode": "max",
    "checkpoint.save_last": False,  # see last_checkpoint
    "checkpoint.filename": "epoch{epoch:03d}-leaderboard{val/leaderboard:.4f}",
    "checkpoint.auto_insert_metric_name": False,
    "last_checkpoint.filename": "last",
    "last_checkpoint.monitor": None,
    "last_checkpoint.save_top_k": 1,
}


class MVCLI(LightningCLI):
    """``mvcli fit|validate|test|predict`` and our own subcommands (``mvcli.trainer``)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), **EXTRA_SUBCOMMANDS}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("default_env", True)
        kwargs.setdefault("env_prefix", "MVCLI")
        parser = super().init_parser(**kwargs)
        parser.add_argument("--version", action="version", version=f"mvcli {__version__}")
        return parser

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            # The writer streams to disk; keeping every output in memory would only grow.
            parser.set_defaults(return_predictions=False)
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        self._args = args  # kept to parse again over a checkpoint's settings
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """A checkpoint's model and preprocessing settings become the defaults of the run.

        So ``mvcli predict --ckpt_path best.ckpt --data.predict_root clips/`` needs no config:
        clips are decoded as in training. Anything given explicitly (config file, option,
        environment) still wins, since the arguments are parsed again over these defaults.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        defaults = checkpoint_defaults(Path(ckpt_path))
        if defaults:
            self._subcommand_parsers[subcommand].set_defaults(defaults)
            super().parse_arguments(self.parser, self._args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Since Lightning 2.6 save_last only writes when a top-k checkpoint is written, so a
        # second checkpoint without a monitor keeps last.ckpt at the latest epoch (resume).
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(SubmissionWriter, "prediction_writer")
        # Backbone freezing strategies, a callback every run has (strategy none by default).
        from mvcli.callbacks.freezing import BackboneFreezing

        parser.add_lightning_class_args(BackboneFreezing, "freezing")
        # What the model must agree on with the data is stated once, in the data section.
        parser.link_arguments("data.frames_per_clip", "model.num_frames")
        parser.link_arguments("data.img_height", "model.img_height")
        parser.link_arguments("data.img_width", "model.img_width")
        parser.link_arguments("data.mean", "model.mean")
        parser.link_arguments("data.std", "model.std")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any):
        # Callbacks every run needs, unless the config turns off what they depend on; fresh
        # instances per run since callbacks hold state.
        config = self._get(self.config_init, "trainer", default={})
        callbacks = list(config.get("callbacks") or [])
        extra = []
        if config.get("logger") not in (False, None):
            extra.append(LearningRateMonitor())
        has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
        if config.get("enable_progress_bar") is not False and not has_bar:
            extra.append(RichProgressBar())
        extra.append(AugmentationPreview())  # acts at the first training batch only
        kwargs["callbacks"] = [*callbacks, *extra]
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        ckpt = self.trainer.checkpoint_callback
        rank_zero_info(f"logs: {self.trainer.log_dir}")
        if ckpt is not None:
            rank_zero_info(f"best checkpoint: {ckpt.best_model_path} ({ckpt.best_model_score})")
            rank_zero_info(f"last checkpoint: {Path(ckpt.dirpath or '') / 'last.ckpt'}")


def checkpoint_defaults(ckpt_path: Path) -> dict[str, Any]:
    """``model.*`` and ``data.*`` values saved in a checkpoint, minus links and locations."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = checkpoint.get("hyper_parameters", {})
    data = checkpoint.get("datamodule_hyper_parameters", {})
    defaults = {f"model.{k}": v for k, v in model.items() if k in _MODEL_KEYS}
    defaults |= {f"data.{k}": v for k, v in data.items() if k in _DATA_KEYS}
    return defaults


def main(args: list[str] | None = None, run: bool = True) -> MVCLI:
    """Entry point of ``mvcli`` and ``python -m mvcli``; returns the CLI object (for tests)."""
    return MVCLI(
        MVFoulModule,
        MVFoulDataModule,
        trainer_class=MVTrainer,
        args=args,
        run=run,
        seed_everything_default=42,
        trainer_defaults={"logger": LOGGER_DEFAULT},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        subclass_mode_model=False,
    )


def run(argv: list[str] | None = None) -> None:
    """Console script: :func:`main`, plus ``mvcli score`` and clean exits on hopeless input."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["score"]:
        CLI(score_command, args=argv[1:], prog="mvcli score")
        return
    try:
        main(argv)
    except (NothingPredicted, NothingToPredict) as err:
        sys.stderr.write(f"mvcli: {err}\n")
        sys.exit(1)
