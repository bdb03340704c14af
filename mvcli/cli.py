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
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from mvcli import __version__
from mvcli.callbacks.history import TrainingHistory
from mvcli.callbacks.oom import OOMRecovery
from mvcli.callbacks.prediction_writer import NothingPredicted, SubmissionWriter
from mvcli.callbacks.resume import ResumeState
from mvcli.callbacks.signals import GracefulStop
from mvcli.checkpointing import AtomicCheckpointIO, PeriodicCheckpoint, newest_last_checkpoint
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
# belong to the machine the run is on.
_MODEL_KEYS = {
    "backbone",
    "pooling",
    "head_dropout",
    "task_weights",
    "label_smoothing",
    "hflip_prob",
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
        last = self._resolve_last_checkpoint(subcommand)
        for key, value in last.items():
            self.config[subcommand][key] = value
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        defaults = checkpoint_defaults(Path(ckpt_path))
        if defaults:
            self._subcommand_parsers[subcommand].set_defaults(defaults)
            super().parse_arguments(self.parser, self._args)
            for key, value in last.items():  # the new parse said "last" again
                self.config[subcommand][key] = value

    def _resolve_last_checkpoint(self, subcommand: str | None) -> dict[str, Any]:
        """``--ckpt_path last``: the newest ``last*.ckpt`` of the run whose ``config.yaml`` is
        given, else of the newest run of the configured logger; logging continues in that
        run's folder (so its history.json and event files go on)."""
        if not subcommand or self.config[subcommand].get("ckpt_path") != "last":
            return {}
        cfg = self.config[subcommand]
        run_dirs = [Path(str(c)).resolve().parent for c in reversed(cfg.get("config") or [])]
        logger = cfg.get("trainer.logger")
        args = logger.get("init_args") if hasattr(logger, "get") else None
        logger_root = None
        if args is not None and args.get("save_dir") is not None:
            logger_root = Path(str(args.get("save_dir"))) / str(args.get("name") or "")
        searched = run_dirs + ([logger_root] if logger_root is not None else [])
        for folder in searched:
            path = newest_last_checkpoint([folder])
            if path is not None:
                break
        else:
            where = ", ".join(str(f) for f in searched) or "the configured run folders"
            raise ValueError(
                f"--ckpt_path last: no last.ckpt found in {where}. Pass a run's config "
                "(--config runs/<name>/version_<n>/config.yaml) or a checkpoint path."
            )
        resolved = {"ckpt_path": str(path)}
        run_dir = path.parent.parent  # <save_dir>/<name>/<version>/checkpoints/last.ckpt
        if args is not None and "version" in args and args.get("version") is None:
            if logger_root is not None and run_dir.parent.resolve() == logger_root.resolve():
                resolved["trainer.logger.init_args.version"] = run_dir.name
        rank_zero_info(f"--ckpt_path last: resuming from {path}")
        return resolved

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Since Lightning 2.6 save_last only writes when a top-k checkpoint is written, so a
        # second checkpoint without a monitor keeps last.ckpt at the latest epoch (resume).
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(SubmissionWriter, "prediction_writer")
        # Every N epochs, kept (off by default); a class of its own so its state is told apart.
        parser.add_lightning_class_args(PeriodicCheckpoint, "periodic_checkpoint")
        # Out-of-memory recovery by batch splitting (on by default on one CUDA device).
        parser.add_lightning_class_args(OOMRecovery, "oom_recovery")
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
        # Exact resume, clean stops on SIGTERM/SIGINT, history.json (mvcli.callbacks.*).
        extra += [ResumeState(), GracefulStop(), TrainingHistory()]
        kwargs["callbacks"] = [*callbacks, *extra]
        plugins = config.get("plugins")
        plugins = (
            list(plugins) if isinstance(plugins, list | tuple) else [plugins] if plugins else []
        )
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """The run's files, as written: nothing is named that does not exist."""
        trainer = self.trainer
        if trainer.log_dir and Path(trainer.log_dir).is_dir():
            rank_zero_info(f"logs: {trainer.log_dir}")
        written = False
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            if isinstance(callback, PeriodicCheckpoint):
                kept = sorted(Path(callback.dirpath or ".").glob("periodic-*.ckpt"))
                if callback._every_n_epochs > 0 and kept:
                    rank_zero_info(f"periodic checkpoints: {len(kept)} in {callback.dirpath}")
                    written = True
                continue
            path = callback.best_model_path
            if not path or not Path(path).is_file():
                continue
            written = True
            if callback.monitor is None:
                rank_zero_info(f"last checkpoint: {path}")
            else:
                score = callback.best_model_score
                value = f" ({callback.monitor} {float(score):.4f})" if score is not None else ""
                rank_zero_info(f"best checkpoint: {path}{value}")
        if not written:
            why = " (fast_dev_run writes none)" if trainer.fast_dev_run else ""
            rank_zero_info(f"no checkpoint written{why}")


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
