"""The command line: LightningCLI over MVFoulModule and MVFoulDataModule."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mvcli import __version__
from mvcli.callbacks.confusion import ConfusionMatrices
from mvcli.callbacks.distributed import DistributedRun
from mvcli.callbacks.ema import EMAWeights
from mvcli.callbacks.freezing import StageFreezing
from mvcli.callbacks.metrics_writer import MetricsWriter
from mvcli.callbacks.nonfinite import NonFiniteGuard
from mvcli.callbacks.oom import OOMRecovery
from mvcli.callbacks.prediction_writer import SubmissionWriter
from mvcli.commandline import renamed
from mvcli.commandline.help import (
    DESCRIPTION,
    EPILOG,
    STANDALONE_SUBCOMMANDS,
    SUBCOMMAND_HELP,
    ArgumentParser,
)
from mvcli.commandline.outputs import (
    check_explicit_outputs,
    evaluation_folder,
    new_run_folder,
    remove_if_unfinished,
    run_dir_of,
    training_root,
)
from mvcli.commandline.subcommands import EXTRA_SUBCOMMANDS, MVTrainer
from mvcli.data.datamodule import PREPROCESSING_KEYS, MVFoulDataModule
from mvcli.task.module import MVFoulModule
from mvcli.task.schedulers import final_scheduler_class
from mvcli.utils import compat
from mvcli.utils.checkpoints import (
    SPECIAL_CKPT_PATHS,
    AtomicCheckpointIO,
    PeriodicCheckpoint,
    load_checkpoint,
    newest_last_checkpoint,
)
from mvcli.utils.errors import MvcliError, UsageError

LOGGER_DEFAULT = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "name": "mvcli"},
}
# What a checkpoint carries into later runs: the model's own choices and the preprocessing.
# Link targets (sizes, classes) follow from the data values; locations and loader settings
# belong to the machine the run is on (but data.root, used when it exists: training_root).
# Other keys of a checkpoint are dropped (model.hflip_prob of older runs: the flip is now part
# of data.augmentation, which only training uses).
# Keys of the model section, dotted into its sections (mvcli 0.1's flat loss keys translated).
_MODEL_KEYS = {
    "backbone",
    "pooling",
    "head_dropout",
    "loss.task_weights",
    "loss.label_smoothing",
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
    # mvcli.callbacks.hparams.RunHParams logs a superset (with the run's best score), once.
    "trainer.enable_autolog_hparams": False,
}
# Callbacks every run has unless its config says otherwise: one section each, any callback
# class (class_path) in it; `--<section> null` (`<section>: null` in YAML) turns it off,
# `--<section>.class_path other.Callback` replaces it. Section -> (base class, default, title);
# a default of None: off unless the config turns it on (`--<section> <base class name>`).
CALLBACK_SECTIONS: dict[str, tuple[type, str | None, str]] = {
    "throughput": (Callback, "mvcli.callbacks.throughput.Throughput",
                   "train/actions_per_s, views_per_s, data_wait_fraction per epoch"),
    "hparams": (Callback, "mvcli.callbacks.hparams.RunHParams",
                "the run's key settings and best val/leaderboard, for HParams views"),
    "lr_monitor": (Callback, "lightning.pytorch.callbacks.LearningRateMonitor",
                   "LR of each parameter group; only with a trainer.logger"),
    "progress_bar": (ProgressBar, "mvcli.callbacks.console.ProgressBar",
                     "unless trainer.enable_progress_bar is false or trainer.callbacks has one"),
    "model_summary": (ModelSummary, "mvcli.callbacks.console.ModelSummary",
                      "unless trainer.enable_model_summary is false or trainer.callbacks has one"),
    "resume": (Callback, "mvcli.callbacks.resume.ResumeState",
               "RNG states, data position, epoch metrics in checkpoints: exact resume"),
    "graceful_stop": (Callback, "mvcli.callbacks.signals.GracefulStop",
                      "SIGTERM/SIGINT: save last.ckpt, exit 128+signal, say how to resume"),
    "history": (Callback, "mvcli.callbacks.history.TrainingHistory",
                "history.json, one record per epoch"),
    "augmentation_preview": (Callback, "mvcli.callbacks.augmentation_preview.AugmentationPreview",
                             "augmented_batch.png: the first training batch as the model sees it"),
    "ema": (EMAWeights, None,
            "EMA of the weights, used by validation, checkpoints, test, predict and export"),
}  # fmt: skip
# Titles of groups whose class docstring says something else (or the same thing twice), with
# how each callback section is turned off.
GROUP_TITLES = {
    "trainer": "Lightning's Trainer (--trainer.*)",
    "checkpoint": "Best checkpoints (--checkpoint.*): ModelCheckpoint on val/leaderboard; "
    "off: --checkpoint.save_top_k 0",
    "last_checkpoint": "Last checkpoint (--last_checkpoint.*): last.ckpt every epoch, to resume; "
    "off: --last_checkpoint.save_top_k 0",
    "prediction_writer": "Predictions (--prediction_writer.*): predictions.json of mvcli "
    "predict (its output: always on in predict, idle otherwise)",
    "periodic_checkpoint": "Periodic checkpoints (--periodic_checkpoint.*): kept every N epochs; "
    "off (the default): --periodic_checkpoint.every_n_epochs 0",
    "oom_recovery": "Out-of-memory recovery (--oom_recovery.*): batch splitting; "
    "off: --oom_recovery.enabled false",
    "freezing": "Backbone freezing (--freezing.*): one class per strategy; "
    "off (the default): --freezing mvcli.callbacks.freezing.NoFreezing",
    "nonfinite": "Non-finite guard (--nonfinite.*): NaN/inf steps skipped; "
    "never stop: --nonfinite.max_steps -1",
    "distributed": "Distributed runs (--distributed.*): idle on one process with the defaults",
    "confusion": "Confusion matrices (--confusion.*): validation images off: "
    "--confusion.log_every_n_epochs 0 (test always writes them)",
    **{
        key: f"{default.rsplit('.', 1)[-1]} (--{key}.*): {what}; off: --{key} null"
        for key, (_, default, what) in CALLBACK_SECTIONS.items()
        if default is not None
    },
    **{
        key: f"{base.__name__} (--{key}.*): {what}; off (the default): --{key} null; on: "
        f"--{key} {base.__name__} or any --{key}.<option> (--{key}.help {base.__name__})"
        for key, (base, default, what) in CALLBACK_SECTIONS.items()
        if default is None
    },
}
# What to do about a section that monitors a val/ metric in a fit without validation.
_NO_VALIDATION_FIXES = {
    "checkpoint": "pass --checkpoint.save_top_k 0: last_checkpoint keeps last.ckpt",
    "freezing": "choose a --freezing strategy that watches no metric",
}
# Subcommands that evaluate or serve a checkpoint: their files go to its run folder, and
# without one they would use random (or only pretrained) weights, refused unless asked for.
EVAL_SUBCOMMANDS = ("validate", "test", "predict")
# Loggers whose folder is <save_dir>/<name>/<version>, redirected into that run folder.
_FILE_LOGGERS = ("TensorBoardLogger", "CSVLogger")
# Sections whose callback writes the files of validate/test/predict: their ``output_dir``
# defaults to --output_dir, else the run folder of --ckpt_path (filled in the config, so the
# saved config.yaml says where the files went).
OUTPUT_SECTIONS = ("prediction_writer", "metrics_writer", "confusion")
# Sections whose callback runs first at every hook, before trainer.callbacks and the other
# sections: freezing sets the trainable stages and LRs that the others (LearningRateMonitor,
# checkpoints) observe at the same hook.
FIRST_SECTIONS = ("freezing",)


class SaveConfig(SaveConfigCallback):
    """LightningCLI's config.yaml, also for loggers without a folder (MLflow on a database
    store, where ``trainer.log_dir`` is None): then beside the checkpoints, in
    ``<default_root_dir>/<logger name>/<version>`` as Lightning names that folder."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.log_dir is None:
            self.save_to_log_dir = False
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if self.save_to_log_dir:
            return
        folder = Path(trainer.default_root_dir)
        if trainer.logger is not None:
            folder = folder / str(trainer.logger.name) / str(trainer.logger.version)
        folder.mkdir(parents=True, exist_ok=True)
        self.parser.save(
            self.config,
            folder / self.config_filename,
            skip_none=False,
            overwrite=self.overwrite,
            multifile=self.multifile,
        )


class MVCLI(LightningCLI):
    """``mvcli fit|validate|test|predict`` plus the subcommands of ``commandline.subcommands``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._new_run_folder: Path | None = None  # set by instantiate_trainer
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            # A run that failed before its first result leaves no run folder behind (later
            # run numbers do not shift); one with a checkpoint or any output is kept.
            if self._new_run_folder is not None:
                remove_if_unfinished(self._new_run_folder)
            raise

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), **EXTRA_SUBCOMMANDS}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("default_env", True)
        kwargs.setdefault("env_prefix", "MVCLI")
        parser = super().init_parser(**kwargs)
        parser.add_argument("--version", action="version", version=f"mvcli {__version__}")
        return parser

    # Overrides of LightningCLI's private hooks: _add_subcommands, _prepare_subcommand_parser,
    # _parse_ckpt_path (why: mvcli/utils/compat.py's docstring).
    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        # One line each, ours; `score` and `search` run outside LightningCLI (see run()) but
        # are listed too.
        compat.rewrite_subcommand_help(parser, SUBCOMMAND_HELP, list(STANDALONE_SUBCOMMANDS))

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser.add_help_all()
        for key, title in GROUP_TITLES.items():
            if key in parser.groups:
                parser.groups[key].title = title
        if subcommand == "predict":
            # The writer streams to disk; keeping every output in memory would only grow.
            parser.set_defaults(return_predictions=False)
        if subcommand in EVAL_SUBCOMMANDS:
            parser.add_argument(
                "--allow_untrained",
                type=bool,
                default=False,
                help="run without --ckpt_path, with the model's initial weights (random, or "
                "--model.pretrained): only to check a pipeline, never for results",
            )
            parser.add_argument(
                "--output_dir",
                type=Path | None,
                default=None,
                help="Folder for this command's files (metrics JSON, confusion matrices, "
                "predictions.json, logs); refused when it holds them already. Default: a new "
                "folder of the run of --ckpt_path, <run>/<subcommand>/<ckpt stem>[-<input>] "
                "(-2, -3, ... when it exists), else the logger's new run folder.",
            )
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
        if not subcommand:
            return
        last = self._resolve_last_checkpoint(subcommand)
        for key, value in last.items():
            self.config[subcommand][key] = value
        config = self.config[subcommand]
        # An explicit output that exists stops the run before the checkpoint or data is read.
        check_explicit_outputs(subcommand, config)
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            _check_untrained_allowed(subcommand, config)
            return
        if str(ckpt_path) in SPECIAL_CKPT_PATHS:
            return  # resolved by the Trainer
        # Checked first: a bad checkpoint stops the run before any data is scanned.
        defaults, saved_root = _checkpoint_settings(Path(ckpt_path))
        if defaults:
            compat.subcommand_parser(self, subcommand).set_defaults(defaults)
            super().parse_arguments(self.parser, self._args)
            for key, value in last.items():  # the new parse said "last" again
                self.config[subcommand][key] = value
        config = self.config[subcommand]
        if saved_root and config.get("data.root") is None and _reads_root(subcommand, config):
            raise UsageError(
                f"data.root is not set and {ckpt_path} was trained on {saved_root}, not found "
                "here: pass --data.root DIR, the dataset folder holding Train/Valid/Test"
            )

    def _resolve_last_checkpoint(self, subcommand: str) -> dict[str, Any]:
        """``--ckpt_path last``: the newest ``last*.ckpt`` of the run whose ``config.yaml`` is
        given, else of the newest run of the configured logger; logging continues in that
        run's folder (so its history.json and event files go on)."""
        if self.config[subcommand].get("ckpt_path") != "last":
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
            path = newest_last_checkpoint(folder)
            if path is not None:
                break
        else:
            where = ", ".join(str(f) for f in searched) or "the configured run folders"
            raise UsageError(
                f"--ckpt_path last: no last.ckpt found in {where}. Pass a run's config "
                "(--config runs/<name>/version_<n>/config.yaml) or a checkpoint path."
            )
        resolved = {"ckpt_path": str(path)}
        run_dir = run_dir_of(path)  # <save_dir>/<name>/<version>/checkpoints/last.ckpt
        if args is not None and "version" in args and args.get("version") is None:
            if logger_root is not None and run_dir.parent.resolve() == logger_root.resolve():
                resolved["trainer.logger.init_args.version"] = run_dir.name
        rank_zero_info(f"--ckpt_path last: resuming from {path}")
        return resolved

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The callbacks every run has by default, each in a section of its own (null: off);
        # first, so they run before the sections below, as when they were added in code.
        for key, (base, default, _) in CALLBACK_SECTIONS.items():
            parser.add_lightning_class_args(base, key, subclass_mode=True, required=False)
            parser.set_defaults({key: None if default is None else {"class_path": default}})
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
        # Backbone freezing: one callback class per strategy (class_path), NoFreezing default.
        # Added as LightningCLI adds a callback section, but placed by instantiate_trainer
        # (FIRST_SECTIONS) rather than appended after the others.
        parser.add_subclass_arguments(StageFreezing, "freezing", fail_untyped=False, required=True)
        parser.set_defaults({"freezing": {"class_path": "mvcli.callbacks.freezing.NoFreezing"}})
        # NaN/inf loss or gradient: step skipped on every rank, counted, run stopped past a limit.
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        # DDP timeout / find_unused_parameters as plain options, effective batch, LR scaling.
        parser.add_lightning_class_args(DistributedRun, "distributed")
        parser.add_lightning_class_args(ConfusionMatrices, "confusion")
        # validate_metrics.json / test_metrics.json (the module writes no file).
        parser.add_lightning_class_args(MetricsWriter, "metrics_writer")
        # What the model must agree on with the data is stated once, in the data section.
        parser.link_arguments("data.frames_per_clip", "model.clip.num_frames")
        parser.link_arguments("data.img_height", "model.clip.height")
        parser.link_arguments("data.img_width", "model.clip.width")
        parser.link_arguments("data.mean", "model.clip.mean")
        parser.link_arguments("data.std", "model.clip.std")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        # A value the classes reject (``data.batch_size 0``) is a usage error, like one the
        # parser rejects: reported as such by run().
        try:
            super().instantiate_classes()
        except MvcliError:
            raise
        except ValueError as err:
            raise UsageError(f"invalid configuration: {err}") from err

    def before_instantiate_classes(self) -> None:
        """Every run writes into a folder of its own, never into the working folder.

        validate/test/predict write into ``--output_dir``, else a new folder of the
        checkpoint's run (``<run>/<subcommand>/<checkpoint stem>[-<input name>]``, numbered
        ``-2``, ``-3``, ... when it exists: :func:`evaluation_folder`). File loggers
        (TensorBoard, CSV) log there (``<output_dir>/<subcommand>/`` with ``--output_dir``)
        instead of a new ``runs/<name>/version_<n>``, config.yaml with them, so the fit's own
        config.yaml is never overwritten. Without a logger (``--trainer.logger false``) that
        folder, or for other runs a new ``<default_root_dir or runs>/mvcli/version_<n>``, is
        ``trainer.default_root_dir``: checkpoints, history.json and config.yaml go there.
        """
        subcommand = self.subcommand
        plain_numbers(self.config[subcommand] if subcommand else self.config)
        config = self.config[subcommand] if subcommand else self.config
        log_folder = self._evaluation_outputs(config) if subcommand in EVAL_SUBCOMMANDS else None
        settings = config.get("trainer")  # the trainer: section, before the Trainer exists
        if settings is None or settings.get("logger") not in (False, None):
            return
        if log_folder is None:
            log_folder = new_run_folder(settings.get("default_root_dir") or "runs")
        settings.default_root_dir = str(log_folder)

    def _evaluation_outputs(self, config: Namespace) -> Path | None:
        """Fill the output sections' folders and point a file logger at the run's log folder
        (returned; None without --output_dir or a checkpoint file)."""
        subcommand = self.subcommand
        ckpt_path = config.get("ckpt_path")
        folder = config.get("output_dir")
        if folder is not None:
            log_folder = Path(folder) / subcommand
        elif ckpt_path and Path(ckpt_path).is_file():
            source = None
            if subcommand == "predict":
                given = config.get("data.predict_root")
                source = Path(given).resolve().name if given else config.get("data.predict_split")
            folder = log_folder = evaluation_folder(Path(ckpt_path), subcommand, source)
        else:
            return None
        for section in OUTPUT_SECTIONS:  # unless the section names its own folder
            if config.get(f"{section}.output_dir") is None:
                config[f"{section}.output_dir"] = Path(folder)
        logger = config.trainer.get("logger")
        if isinstance(logger, Namespace) and str(logger.class_path).endswith(_FILE_LOGGERS):
            logger.init_args.save_dir = str(log_folder.parent)
            logger.init_args.name = ""
            logger.init_args.version = log_folder.name
        return log_folder

    def instantiate_trainer(self, **kwargs: Any):
        # Every callback comes from the config: trainer.callbacks and the callback sections
        # (which _instantiate_trainer filters).
        config = self.config_init.get(str(self.subcommand), self.config_init)
        listed = config.get("trainer", {}).get("callbacks") or []
        listed = list(listed) if isinstance(listed, list) else [listed]  # one given alone
        # FIRST_SECTIONS ahead of trainer.callbacks and the other sections.
        first = [config[key] for key in FIRST_SECTIONS if config.get(key) is not None]
        kwargs["callbacks"] = [*first, *listed]
        trainer = super().instantiate_trainer(**kwargs)
        # Local checkpoints through mvcli's atomic writer (remote or custom IO left alone).
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        for callback in trainer.callbacks:
            if isinstance(callback, DistributedRun):
                callback.configure_strategy(trainer)
        # The run's folder, if this command makes it: removed again should the run fail
        # before its first result (see __init__). Rank zero's; no broadcast before the fit.
        logger = trainer.logger
        folder = getattr(logger, "log_dir", None) if logger else trainer.default_root_dir
        if trainer.is_global_zero and folder is not None and not Path(folder).exists():
            folder = Path(folder).absolute()
            while not folder.parent.exists():  # the first folder this run makes
                folder = folder.parent
            self._new_run_folder = folder
        return trainer

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Any:
        # LightningCLI passes the sections' instances in the parser's callback_keys order,
        # None for a section set to null (off).
        parser = compat.subcommand_parser(self, self.subcommand) if self.subcommand else self.parser
        keys = parser.callback_keys
        dropped = _idle_sections(config)
        kept = [
            callback
            for key, callback in zip(keys, callbacks, strict=True)
            if callback is not None and key not in dropped
        ]
        return super()._instantiate_trainer(config, kept)

    def before_fit(self) -> None:
        """A fit without validation (``data.val_split: null``) logs no ``val/*`` metric:
        anything waiting for one is refused here, naming its option, not late in the run."""
        waiting = _val_monitors(self) if _validation_off(self.datamodule) else []
        if waiting:
            raise UsageError(
                "data.val_split is null (no validation), so no val/ metric is ever logged, "
                "but " + "; ".join(waiting) + ". configs/final_fit.yaml sets up such a fit "
                "(last.ckpt kept, no early stopping); or name a --data.val_split"
            )

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
                if callback.every_n_epochs > 0 and kept:
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


def _validation_off(datamodule: Any) -> bool:
    hparams = getattr(datamodule, "hparams", {})
    return "val_split" in hparams and hparams["val_split"] is None


def _val_monitors(cli: MVCLI) -> list[str]:
    """What in a fit's trainer and model waits for a ``val/`` metric, each as the option that
    sets it and what to do about it."""
    config = cli.config_init[cli.subcommand]
    keys = [*FIRST_SECTIONS, *compat.subcommand_parser(cli, cli.subcommand).callback_keys]
    sections = {id(config.get(key)): key for key in keys if config.get(key) is not None}
    found = []
    for callback in cli.trainer.callbacks:
        monitor = getattr(callback, "monitor", None)
        if not (isinstance(monitor, str) and monitor.startswith("val/")):
            continue
        if isinstance(callback, ModelCheckpoint) and callback.save_top_k == 0:
            continue  # keeps nothing by its monitor
        section = sections.get(id(callback))
        if section is None:
            name = f"trainer.callbacks' {type(callback).__name__} monitors {monitor}"
            fix = "take it out of trainer.callbacks"
        else:
            name = f"{section}.monitor is {monitor}"
            fix = _NO_VALIDATION_FIXES.get(section, f"pass --{section} null")
        found.append(f"{name} ({fix})")
    scheduler = final_scheduler_class(getattr(cli.model, "lr_scheduler", None))
    if scheduler is not None and issubclass(scheduler, ReduceLROnPlateau):
        found.append(
            "model.lr_scheduler is ReduceLROnPlateau, which steps on val/leaderboard (choose "
            "another scheduler)"
        )
    return found


def _idle_sections(trainer: dict[str, Any]) -> set[str]:
    """Default callback sections left out because they cannot act with these trainer
    settings: the LR monitor without a logger, the progress bar and model summary when the
    trainer turns them off or ``trainer.callbacks`` has its own."""
    listed = trainer.get("callbacks") or []
    idle = set()
    if trainer.get("logger") in (False, None):
        idle.add("lr_monitor")
    if trainer.get("enable_progress_bar") is False or _has(listed, ProgressBar):
        idle.add("progress_bar")
    if trainer.get("enable_model_summary") is False or _has(listed, ModelSummary):
        idle.add("model_summary")
    return idle


def _has(callbacks: list[Any], kind: type) -> bool:
    return any(isinstance(c, kind) for c in callbacks)


def plain_numbers(config: Namespace) -> None:
    """Make jsonargparse's limit-checked numbers (``PositiveInt(8)``) plain ``int``/``float``.

    The limits are checked at parse time; past it, the subclasses would travel into the
    model's and data module's hparams: hparams.yaml (YAML cannot write them) and checkpoints
    (``weights_only`` loading refuses them). Components given by ``class_path`` (callbacks)
    are validated again as they are built, so they get the subclasses: they keep no argument
    in their checkpoint state.
    """
    for key, value in config.items():  # nested sections come flattened: "data.batch_size"
        config[key] = _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Namespace):  # a class_path entry of a list (callbacks)
        plain_numbers(value)
        return value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return int(value) if isinstance(value, int) else float(value)


def checkpoint_defaults(ckpt_path: Path) -> dict[str, Any]:
    """``model.*`` and ``data.*`` values saved in a checkpoint, minus links and machine
    settings; ``data.root`` when the training data it names is found here
    (:func:`mvcli.commandline.outputs.training_root`).

    Raises:
        DataError: the file is not a readable mvcli checkpoint (see ``mvcli.utils.checkpoints``).
    """
    return _checkpoint_settings(ckpt_path)[0]


def _checkpoint_settings(ckpt_path: Path) -> tuple[dict[str, Any], str | None]:
    """:func:`checkpoint_defaults` and the training data's location as saved (None: none)."""
    checkpoint = load_checkpoint(ckpt_path)
    model, _ = renamed.translate_model(checkpoint.get("hyper_parameters", {}))
    data = checkpoint.get("datamodule_hyper_parameters", {})
    dotted = {k: v for k, v in model.items() if not isinstance(v, Mapping)}
    for section in ("loss",):
        dotted |= {f"{section}.{k}": v for k, v in (model.get(section) or {}).items()}
    defaults = {f"model.{k}": v for k, v in dotted.items() if k in _MODEL_KEYS}
    defaults |= {f"data.{k}": v for k, v in data.items() if k in _DATA_KEYS}
    saved = data.get("root")
    root = training_root(saved, ckpt_path)
    if root is not None:
        defaults["data.root"] = str(root)
    return defaults, (str(saved) if saved else None)


def _reads_root(subcommand: str, config: Any) -> bool:
    """Whether the subcommand reads ``data.root`` (predict only without data.predict_root;
    export without it measures no accuracy, and says so)."""
    if subcommand == "predict":
        return config.get("data.predict_root") is None
    return subcommand in ("fit", "validate", "test", "cache", "lr_find")


def main(args: list[str] | None = None, run: bool = True) -> MVCLI:
    """Entry point of ``mvcli`` and ``python -m mvcli``; returns the CLI object (for tests)."""
    return MVCLI(
        MVFoulModule,
        MVFoulDataModule,
        trainer_class=MVTrainer,
        parser_class=ArgumentParser,
        parser_kwargs={
            "prog": "mvcli",
            "description": DESCRIPTION,
            "epilog": EPILOG,
            **{
                name: {"description": text[0].upper() + text[1:] + "."}
                for name, text in SUBCOMMAND_HELP.items()
                if name in MVCLI.subcommands()
            },
        },
        args=args,
        run=run,
        seed_everything_default=42,
        trainer_defaults={"logger": LOGGER_DEFAULT},
        save_config_callback=SaveConfig,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        subclass_mode_model=False,
    )


def _check_untrained_allowed(subcommand: str, config: Any) -> None:
    if subcommand not in EVAL_SUBCOMMANDS or config.get("allow_untrained"):
        return
    if (config.get("model") or {}).get("pretrained"):
        return  # pretrained-only weights, asked for explicitly
    raise UsageError(
        f"`mvcli {subcommand}` needs --ckpt_path: the checkpoint of a trained model (e.g. "
        "<log_dir>/checkpoints/last.ckpt from `mvcli fit`). Without one the model has random "
        "weights; pass --allow_untrained true (or --model.pretrained WEIGHTS) if that is "
        "really what you want."
    )
