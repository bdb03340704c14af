"""``mvcli search``: an Optuna study whose trials are ordinary mvcli training runs.

Each trial is the user's run configuration with the sampled values given as command-line
options (``--model.optimizer.init_args.lr=...``), built by :func:`mvcli.cli.main` like any
``mvcli fit``, with its own log folder and saved ``config.yaml``. Bad trials are stopped early
by Optuna's Lightning pruning callback. The study lives in a storage (SQLite by default), so a
killed search started again with the same ``output_dir`` continues where it stopped: trials
that were running when the process died are marked failed (Optuna's heartbeat) and run again.

A resumed study draws new values: its sampler is seeded from ``seed`` and the number of trials
the study already holds, so a rerun never repeats the draws of the first invocation. The run
settings that decide what a trial's value means (run configs and their content, overrides,
monitor, direction, search space) are stored with the study; a search resumed with other
settings is refused with the differences named, since trials of another budget (more epochs)
would be ranked and pruned against each other.

Seed repeats: ``sampler: grid`` runs every combination of the categorical choices once, so a
search space of ``seed_everything: {type: categorical, choices: [0, 1, 2]}`` trains the run
once per seed; with ``test: true`` each completed trial also tests its best checkpoint. The
report gives the mean and standard deviation over the completed trials of the monitored value
and of the test metric.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

DistributionType = Literal["float", "int", "categorical"]
PrunerName = Literal["median", "percentile", "hyperband", "none"]
SamplerName = Literal["tpe", "random", "grid"]
_DONE = ("COMPLETE", "PRUNED")
_CHOICE_TYPES = (str, int, float, bool, type(None))  # what Optuna stores as a categorical


@dataclass
class Distribution:
    """Where one config key's value is drawn from.

    Args:
        type: ``float``, ``int`` (between ``low`` and ``high``) or ``categorical`` (``choices``).
        low: smallest value (float, int).
        high: largest value (float, int).
        log: draw on a log scale (float, int).
        step: spacing of the values (float, int; not with ``log``).
        choices: the values to choose from (categorical): numbers, strings, booleans, null.
    """

    type: DistributionType
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    def check(self, key: str) -> None:
        """Raise ValueError naming ``key`` when the description cannot be sampled."""
        if self.type == "categorical":
            if not self.choices:
                raise ValueError(f"search_space.{key}: categorical needs a non-empty `choices`")
            bad = [c for c in self.choices if not isinstance(c, _CHOICE_TYPES)]
            if bad:
                raise ValueError(
                    f"search_space.{key}: choices must be numbers, strings, booleans or null, "
                    f"got {bad[0]!r}"
                )
            return
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError(f"search_space.{key}: {self.type} needs `low` <= `high`")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError(f"search_space.{key}: `log` needs `low` > 0 and no `step`")

    def suggest(self, trial, key: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(key, self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            return trial.suggest_int(key, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.log)


def search(
    run_config: list[Path],
    search_space: dict[str, Distribution],
    output_dir: Path = Path("runs/search"),
    n_trials: int | None = 20,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str = "mvcli",
    monitor: str = "val/leaderboard",
    direction: Literal["maximize", "minimize"] = "maximize",
    pruner: PrunerName = "median",
    pruner_startup_trials: int = 2,
    pruner_warmup_epochs: int = 0,
    sampler: SamplerName = "tpe",
    seed: int | None = None,
    heartbeat_interval: int = 60,
    overrides: list[str] | None = None,
    test: bool = False,
) -> dict:
    """Search hyperparameters with Optuna; every trial is an ``mvcli fit`` of ``run_config``.

    Prints the best trial and writes ``best_config.yaml`` (runs as is with ``mvcli fit
    --config``), ``study.json`` (every trial) and one folder per trial under ``output_dir``.

    Args:
        run_config: the run's config files, stacked as in ``mvcli fit --config a --config b``.
        search_space: config key (as on the command line, e.g.
            ``model.optimizer.init_args.lr``) -> where its value is drawn from.
        output_dir: folder of the study: storage, trials' logs, best_config.yaml.
        n_trials: trials to finish (completed or pruned) in the study, counting those of
            earlier invocations (null: until ``timeout``; with ``grid``, until every
            combination has run).
        timeout: stop starting new trials after this many seconds (null: no limit).
        storage: Optuna storage URL (default: ``sqlite:///<output_dir>/study.db``, so a killed
            search resumes when started again).
        study_name: name of the study in the storage.
        monitor: metric the trials are ranked on; the checkpoint's best value when the
            checkpoint monitors it, else its last value.
        direction: whether ``monitor`` is maximized or minimized.
        pruner: how unpromising trials are stopped after a validation: ``median`` (below the
            median of earlier trials at the same epoch), ``percentile`` (below the 25th
            percentile), ``hyperband`` or ``none``.
        pruner_startup_trials: trials run to the end before any pruning.
        pruner_warmup_epochs: epochs of each trial never pruned.
        sampler: how values are proposed: ``tpe`` (Bayesian), ``random``, or ``grid`` (every
            combination of the keys' ``choices`` once, in a seeded order; categorical keys
            only): ``seed_everything: {type: categorical, choices: [0, 1, 2]}`` repeats the
            run with 3 seeds.
        seed: seed of the sampler (null: random; ``grid``: 0); a resumed study seeds it from
            (seed, trials so far), so it draws new values (``grid`` keeps its order and runs
            the combinations not run yet).
        heartbeat_interval: seconds between a running trial's heartbeats; a trial silent for
            twice as long (its process died) is failed and queued again.
        overrides: extra ``mvcli fit`` options given to every trial
            (e.g. ``--trainer.max_epochs=5``).
        test: after each completed trial, ``mvcli test`` its best checkpoint (the trial's
            options, output in ``<trial run>/test/<checkpoint stem>/``); the report gives the
            mean and standard deviation of ``test/<metric>`` over the trials, where
            ``monitor`` is ``val/<metric>`` (else of ``test/leaderboard``).
    """
    optuna = _import_optuna()
    if not search_space:
        raise ValueError("search_space is empty: name at least one config key to search")
    for key, dist in search_space.items():
        dist.check(key)
        if sampler == "grid" and dist.type != "categorical":
            raise ValueError(
                f"search_space.{key}: the grid sampler takes categorical keys only (their "
                f"choices are the grid), got {dist.type}"
            )
    for path in run_config:
        if not Path(path).is_file():
            raise FileNotFoundError(f"run_config: {path} does not exist")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=_storage(
            optuna, storage or f"sqlite:///{output_dir / 'study.db'}", heartbeat_interval
        ),
        study_name=study_name,
        direction=direction,
        pruner=_pruner(optuna, pruner, pruner_startup_trials, pruner_warmup_epochs),
        load_if_exists=True,
    )
    settings = _run_settings(run_config, overrides, monitor, direction, search_space)
    _check_settings(study, settings, storage or str(output_dir / "study.db"))
    # Seeded from (seed, trials so far): a resumed study draws new values, not the same ones.
    # A grid keeps its order (trial k runs combination k): only its unrun ones run again.
    resumed = seed if sampler == "grid" else _resumed_seed(seed, len(study.trials))
    study.sampler = _sampler(optuna, sampler, resumed, search_space)
    base_args = [a for c in run_config for a in ("--config", str(c))] + list(overrides or [])
    logger_off = _logger_disabled(run_config)

    def objective(trial) -> float:
        values = {key: dist.suggest(trial, key) for key, dist in search_space.items()}
        trial_dir = output_dir / f"trial_{trial.number:03d}"
        args = [*base_args, *(f"--{k}={_cli_value(v)}" for k, v in values.items())]
        args += _log_args(trial_dir, logger_off)
        return _run_trial(optuna, trial, args, monitor, trial_dir, test)

    finished = _count(study, _DONE)
    remaining = None if n_trials is None else max(n_trials - finished, 0)
    if finished:
        print(f"mvcli search: resuming study {study_name!r}: {finished} trials already finished")
    if remaining != 0:
        callbacks = []
        if n_trials is not None:  # other workers on the same storage count too
            states = tuple(getattr(optuna.trial.TrialState, s) for s in _DONE)
            callbacks.append(optuna.study.MaxTrialsCallback(n_trials, states=states))
        study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=callbacks)
    return _report(optuna, study, output_dir, monitor)


def tested_metric(monitor: str) -> str:
    """The test step's name for the monitored metric: ``val/x`` -> ``test/x``, else the
    leaderboard."""
    return "test/" + monitor.split("/", 1)[1] if monitor.startswith("val/") else "test/leaderboard"


def _run_settings(
    run_config: list[Path],
    overrides: list[str] | None,
    monitor: str,
    direction: str,
    search_space: dict[str, Distribution],
) -> dict[str, Any]:
    """What a trial's value depends on besides its sampled values (stored with the study)."""
    return {
        "run_config": [str(p) for p in run_config],
        "run_config_sha256": [_digest(p) for p in run_config],
        "overrides": list(overrides or []),
        "monitor": monitor,
        "direction": direction,
        "search_space": {k: _plain_distribution(d) for k, d in search_space.items()},
    }


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _plain_distribution(dist: Distribution) -> dict[str, Any]:
    return {k: v for k, v in vars(dist).items() if v is not None and v is not False}


def _check_settings(study, settings: dict[str, Any], where: str) -> None:
    """Store the run settings in a new study; refuse to resume one run with other settings."""
    stored = study.user_attrs.get("run_settings")
    if stored is None:
        study.set_user_attr("run_settings", settings)
        return
    differences = [
        f"{key} {stored.get(key)!r} -> {value!r}"
        if key != "run_config_sha256"
        else "the content of a run_config file changed"
        for key, value in settings.items()
        if stored.get(key) != value
    ]
    if differences:
        from mvcli.utils.errors import UsageError

        raise UsageError(
            f"study {study.study_name!r} ({where}) was run with other settings: "
            + "; ".join(differences)
            + ". Its trials would be compared with trials of another run; start a new study "
            "(another --study_name or --output_dir) or resume with the study's settings"
        )


def _resumed_seed(seed: int | None, trials_so_far: int) -> int | None:
    """The sampler's seed: ``seed`` for a new study, a different one for each resumption."""
    if seed is None or trials_so_far == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])


def _import_optuna():
    try:
        import optuna
        import optuna_integration  # noqa: F401  (checked here, used in the trials)
    except ImportError as err:
        raise ImportError(
            "mvcli search needs optuna and optuna-integration: pip install 'mvcli[search]'"
        ) from err
    return optuna


def _storage(optuna, url: str, heartbeat_interval: int):
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        return url  # journal/in-memory storages: as Optuna reads the URL
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat_interval,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1
            ),
        )


def _sampler(optuna, name: SamplerName, seed: int | None, space: dict[str, Distribution]):
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid = {key: dist.choices for key, dist in space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(optuna, name: PrunerName, startup: int, warmup: int):
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    percentile = 50.0 if name == "median" else 25.0
    return optuna.pruners.PercentilePruner(
        percentile, n_startup_trials=startup, n_warmup_steps=warmup
    )


def _count(study, states: tuple[str, ...]) -> int:
    return sum(t.state.name in states for t in study.get_trials(deepcopy=False))


def _cli_value(value: Any) -> str:
    """A sampled value as jsonargparse reads it on the command line."""
    return value if isinstance(value, str) else json.dumps(value)


def _logger_disabled(run_config: list[Path]) -> bool:
    """Whether the stacked configs end with ``trainer.logger: false`` (no save_dir to set)."""
    logger: Any = True
    for path in run_config:
        trainer = (yaml.safe_load(Path(path).read_text()) or {}).get("trainer") or {}
        logger = trainer.get("logger", logger)
    return logger in (False, None)


def _log_args(trial_dir: Path, logger_off: bool) -> list[str]:
    """The trial's own folder: its logs, saved config and checkpoints."""
    args = [f"--trainer.default_root_dir={trial_dir}"]
    if not logger_off:  # TensorBoard, CSV, MLflow and W&B loggers all take save_dir
        args.append(f"--trainer.logger.init_args.save_dir={trial_dir}")
    return args


def _run_trial(optuna, trial, args: list[str], monitor: str, trial_dir: Path, test: bool) -> float:
    from optuna_integration import PyTorchLightningPruningCallback

    from mvcli.cli import main

    try:
        with warnings.catch_warnings():  # main(args) in a process started with other arguments
            warnings.filterwarnings("ignore", "LightningCLI's args parameter", UserWarning)
            cli = main(args, run=False)
    except SystemExit as err:  # jsonargparse printed why; a failed trial, not a dead search
        raise ValueError(f"trial {trial.number}: the run's options were refused: {args}") from err
    trainer = cli.trainer
    if trainer.world_size > 1:  # a launcher would start the whole search again per process
        raise ValueError(
            f"mvcli search runs its trials in its own process, one device each; the run asks for "
            f"{trainer.world_size} processes (trainer.devices x trainer.num_nodes)"
        )
    trial.set_user_attr("log_dir", str(trainer.log_dir or trial_dir))
    trainer.callbacks.append(PyTorchLightningPruningCallback(trial, monitor=monitor))
    try:
        trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        trial.set_user_attr("epochs", trainer.current_epoch)
    value = _objective_value(trainer, monitor)
    if value is None or math.isnan(value):
        raise optuna.TrialPruned(f"trial {trial.number}: {monitor} was never computed")
    if test:
        trial.set_user_attr("test", _test_trial(trainer, args, tested_metric(monitor)))
    return value


def _test_trial(trainer, args: list[str], metric: str) -> dict[str, Any]:
    """``mvcli test`` of the trial's best checkpoint (its last one without a best)."""
    from mvcli.cli import main

    ckpt = trainer.checkpoint_callback
    path = ckpt.best_model_path if ckpt is not None else ""
    path = path or (ckpt.last_model_path if ckpt is not None else "")
    if not path:
        raise ValueError(f"test: the trial saved no checkpoint to test ({args})")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "LightningCLI's args parameter", UserWarning)
        tested = main(["test", *args, "--ckpt_path", path])
    metrics = tested.trainer.callback_metrics
    if metric not in metrics:
        raise ValueError(f"test: the test run logged no {metric} (monitor's test metric)")
    output = tested.config["test"]["metrics_writer"]["output_dir"]
    return {metric: float(metrics[metric]), "checkpoint": path, "output_dir": str(output)}


def _objective_value(trainer, monitor: str) -> float | None:
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and ckpt.monitor == monitor and ckpt.best_model_score is not None:
        return float(ckpt.best_model_score)
    value = trainer.callback_metrics.get(monitor)
    return None if value is None else float(value)


def _report(optuna, study, output_dir: Path, monitor: str) -> dict:
    trials = study.get_trials(deepcopy=False)
    summary = {
        "study": study.study_name,
        "monitor": monitor,
        "direction": study.direction.name.lower(),
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "epochs": t.user_attrs.get("epochs"),
                "log_dir": t.user_attrs.get("log_dir"),
                **({"test": t.user_attrs["test"]} if "test" in t.user_attrs else {}),
            }
            for t in trials
        ],
    }
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    states = ", ".join(f"{n} {state.lower()}" for state, n in counts.items())
    print(f"mvcli search: {len(trials)} trials ({states})")
    summary["summary"] = _spread(complete, monitor)
    for metric, stats in summary["summary"].items():
        spread = f" +- {stats['std']:.4f}" if stats["std"] is not None else ""
        print(
            f"{metric} over {stats['n']} completed trials: {stats['mean']:.4f}{spread} "
            f"(mean +- std; min {stats['min']:.4f}, max {stats['max']:.4f})"
        )
    if complete:
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params}
        best_config = output_dir / "best_config.yaml"
        _write_best_config(
            Path(best.user_attrs["log_dir"]) / "config.yaml", best_config, output_dir
        )
        summary["best"]["config"] = str(best_config)
        print(f"best trial {best.number}: {monitor} = {best.value:.4f}")
        for key, value in best.params.items():
            print(f"  {key}: {value}")
        print(f"best config: {best_config}  (mvcli fit --config {best_config})")
    else:
        print("no trial completed: no best config")
    (output_dir / "study.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _spread(complete: list, monitor: str) -> dict[str, dict[str, Any]]:
    """Spread over the completed trials (a seed repeat's result) of the monitored value and,
    for tested trials, of the test metric."""
    metric = tested_metric(monitor)
    values = {
        monitor: [t.value for t in complete],
        metric: [t.user_attrs["test"][metric] for t in complete if "test" in t.user_attrs],
    }
    return {name: mean_std(v) for name, v in values.items() if v}


def mean_std(values: list[float]) -> dict[str, Any]:
    """n, mean, sample standard deviation (ddof 1; None for one value), min and max."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return {
        "n": len(array),
        "mean": float(array.mean()),
        "std": std,
        "min": float(array.min()),
        "max": float(array.max()),
    }


def _write_best_config(trial_config: Path, destination: Path, output_dir: Path) -> None:
    """The best trial's saved config, logging to ``<output_dir>/best`` instead of its folder."""
    config = yaml.safe_load(trial_config.read_text())
    best_dir = str(output_dir / "best")
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = best_dir
    logger = trainer.get("logger")
    if isinstance(logger, dict) and "save_dir" in (logger.get("init_args") or {}):
        logger["init_args"]["save_dir"] = best_dir
    destination.write_text(yaml.safe_dump(config, sort_keys=False))
