"""The command line: LightningCLI over MVFoulModule and MVFoulDataModule."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from mvcli import __version__
from mvcli.callbacks.prediction_writer import SubmissionWriter
from mvcli.data.datamodule import MVFoulDataModule
from mvcli.module import MVFoulModule
from mvcli.trainer import EXTRA_SUBCOMMANDS, MVTrainer

LOGGER_DEFAULT = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "name": "mvcli"},
}
CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/leaderboard",
    "checkpoint.mode": "max",
    "checkpoint.save_last": True,
    "checkpoint.filename": "epoch{epoch:03d}-leaderboard{val/leaderboard:.4f}",
    "checkpoint.auto_insert_metric_name": False,
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

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(SubmissionWriter, "prediction_writer")
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
        kwargs["callbacks"] = [*callbacks, *extra]
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        ckpt = self.trainer.checkpoint_callback
        rank_zero_info(f"logs: {self.trainer.log_dir}")
        if ckpt is not None:
            rank_zero_info(f"best checkpoint: {ckpt.best_model_path} ({ckpt.best_model_score})")
            rank_zero_info(f"last checkpoint: {ckpt.last_model_path}")


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


def run() -> None:
    """Console script: like :func:`main`, without handing the CLI object to ``sys.exit``."""
    main()
