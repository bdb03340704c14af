"""`mvcli search`: an Optuna study of real mvcli runs that prunes, resumes after a kill and
leaves a best_config.yaml that trains."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mvcli.__main__ import run
from mvcli.cli import main
from mvcli.tools.search import Distribution, mean_std, search
from tests.conftest import CONF, CONFIGS, REPO

optuna = pytest.importorskip("optuna")
pytest.importorskip("optuna_integration")

LR = "model.optimizer.init_args.lr"
SAMPLER = "data.sampler"


def _search_config(tmp_path: Path, synthetic_root: Path, **extra) -> Path:
    config = {
        "run_config": [str(CONFIGS / "demo.yaml"), str(CONF / "tiny_run.yaml")],
        "search_space": {
            LR: {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
            SAMPLER: {"type": "categorical", "choices": ["natural", "balanced_action"]},
        },
        "output_dir": str(tmp_path / "study"),
        "n_trials": 3,
        "pruner_startup_trials": 1,
        "heartbeat_interval": 1,
        "seed": 0,
        "overrides": [f"--data.root={synthetic_root}"],
        **extra,
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _states(study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def _beating(database: Path) -> bool:
    """A running trial of the study has recorded a heartbeat (Optuna's RDB schema)."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT COUNT(*) FROM trial_heartbeats JOIN trials USING (trial_id) "
            "WHERE trials.state = 'RUNNING'"
        ).fetchone()
    return rows[0] > 0


def test_study_prunes_resumes_after_a_kill_and_its_best_config_trains(
    tmp_path, synthetic_root, capsys
):
    config = _search_config(tmp_path, synthetic_root)
    url = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    (tmp_path / "study").mkdir()
    # Fixed proposals, so the test knows which trial must be pruned: two that learn and one
    # whose learning rate is too small to move the model from its start.
    study = optuna.create_study(storage=url, study_name="mvcli", direction="maximize")
    for params in ({LR: 6e-3, SAMPLER: "natural"}, {LR: 1e-6, SAMPLER: "natural"},
                   {LR: 3e-3, SAMPLER: "balanced_action"}):  # fmt: skip
        study.enqueue_trial(params)

    proc = subprocess.Popen(
        [sys.executable, "-m", "mvcli", "search", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 120
        while "COMPLETE" not in _states(study) and time.monotonic() < deadline:
            assert proc.poll() is None, "the search ended before its first trial completed"
            time.sleep(0.3)
        # Killed once the next trial has beaten its heart: Optuna only ever fails a running
        # trial that has a heartbeat (one killed before its first stays "RUNNING").
        while not _beating(tmp_path / "study" / "study.db") and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # a real interruption, mid-study
        proc.wait(timeout=30)
    finally:
        proc.kill()
    killed_at = time.monotonic()
    assert _states(study).count("COMPLETE") == 1
    assert not {"PRUNED", "FAIL"} & set(_states(study))

    # Heartbeats stop with the process: after the grace period (2 heartbeats) the trial that
    # was running is failed and queued again by the resumed search.
    time.sleep(max(0.0, 2.5 - (time.monotonic() - killed_at)))
    capsys.readouterr()
    run(["search", "--config", str(config)])
    out = capsys.readouterr().out
    assert "resuming study 'mvcli': 1 trials already finished" in out

    trials = study.get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 3  # n_trials counts across both invocations
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert [t.params[LR] for t in pruned] == [1e-6]
    assert pruned[0].user_attrs["epochs"] == 0  # stopped after its first validation
    assert _states(study).count("FAIL") <= 1  # the killed trial, if it had started

    best = study.best_trial
    assert best.params[LR] in (6e-3, 3e-3)
    assert f"best trial {best.number}: val/leaderboard = {best.value:.4f}" in out
    # Every trial is a normal run with its own folder and saved config.
    for trial in done:
        log_dir = Path(trial.user_attrs["log_dir"])
        assert log_dir.is_relative_to(tmp_path / "study" / f"trial_{trial.number:03d}")
        saved = yaml.safe_load((log_dir / "config.yaml").read_text())
        assert saved["model"]["optimizer"]["init_args"]["lr"] == trial.params[LR]

    best_config = tmp_path / "study" / "best_config.yaml"
    fit = main(["fit", "--config", str(best_config), "--trainer.max_epochs", "1"])
    assert fit.trainer.state.finished
    assert fit.model.hparams is not None
    assert Path(fit.trainer.log_dir).is_relative_to(tmp_path / "study" / "best")
    assert fit.datamodule.hparams.sampler == best.params[SAMPLER]


def test_search_space_errors_name_the_key():
    with pytest.raises(ValueError, match=r"search_space\.model\.x: float needs `low` <= `high`"):
        Distribution("float", low=1.0, high=0.1).check("model.x")
    with pytest.raises(ValueError, match="`log` needs `low` > 0"):
        Distribution("float", low=0.0, high=1.0, log=True).check("model.x")
    with pytest.raises(ValueError, match="categorical needs a non-empty `choices`"):
        Distribution("categorical").check("data.sampler")
    with pytest.raises(ValueError, match="choices must be numbers, strings"):
        Distribution("categorical", choices=[{"a": 1}]).check("data.sampler")


def test_a_key_the_run_refuses_fails_the_search_with_its_name(tmp_path, synthetic_root):
    with pytest.raises(ValueError, match="run's options were refused.*--model.no_such_key=0.5"):
        search(
            [CONFIGS / "demo.yaml", CONF / "tiny_run.yaml"],
            {"model.no_such_key": Distribution("float", low=0.5, high=0.5)},
            output_dir=tmp_path / "study",
            overrides=[f"--data.root={synthetic_root}"],
        )


def test_a_multi_process_trial_is_refused(tmp_path, synthetic_root):
    with pytest.raises(ValueError, match="one device each; the run asks for 2 processes"):
        search(
            [CONFIGS / "demo.yaml", CONF / "tiny_run.yaml"],
            {LR: Distribution("float", low=1e-3, high=1e-3)},
            output_dir=tmp_path / "study",
            overrides=[f"--data.root={synthetic_root}", "--trainer.devices=2"],
        )


def test_help_documents_the_search(capsys):
    with pytest.raises(SystemExit):
        run(["search", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "trials to finish (completed or pruned) in the study" in out
    assert "sqlite:///<output_dir>/study.db" in out


@pytest.mark.parametrize("path", sorted((CONFIGS / "search").glob("*.yaml")), ids=lambda p: p.name)
def test_search_configs_parse(path, capsys, tmp_path):
    # run_config paths are relative to the repository, as documented: its configs, seen from
    # the temporary working directory (the conftest's)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    with pytest.raises(SystemExit) as exit_info:
        run(["search", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, dist in printed["search_space"].items():
        Distribution(**dist).check(key)
    assert all((REPO / p).is_file() for p in printed["run_config"])


def test_a_resumed_search_draws_new_values_and_refuses_other_settings(
    tmp_path, synthetic_root, capsys
):
    # The complaint: with seed 0, 2 trials then a rerun with n_trials 4 gave 4 trials with 2
    # distinct parameter sets (the resumed sampler had the same seed); and a rerun with more
    # epochs mixed trials of both budgets in one study without a word.
    space = {LR: {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    config = _search_config(tmp_path, synthetic_root, search_space=space, n_trials=2, pruner="none")
    run(["search", "--config", str(config)])
    run(["search", "--config", str(config), "--n_trials", "4"])
    out = capsys.readouterr().out
    assert "resuming study 'mvcli': 2 trials already finished" in out
    study = optuna.load_study(study_name="mvcli", storage=f"sqlite:///{tmp_path}/study/study.db")
    values = [t.params[LR] for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(values) == 4 and len(set(values)) == 4, values

    with pytest.raises(SystemExit) as exit_info:
        overrides = f'["--data.root={synthetic_root}", "--trainer.max_epochs=2"]'
        run(["search", "--config", str(config), "--n_trials", "6", "--overrides", overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("mvcli: "))
    assert "was run with other settings: overrides" in line and "--trainer.max_epochs=2" in line
    assert "another --study_name or --output_dir" in line
    assert len(study.get_trials()) == 4  # nothing ran


def test_a_seed_grid_runs_each_seed_once_tests_them_and_reports_mean_and_std(
    tmp_path, synthetic_root, capsys
):
    space = {"seed_everything": {"type": "categorical", "choices": [0, 1, 2]}}
    config = _search_config(
        tmp_path, synthetic_root, search_space=space, sampler="grid", n_trials=None,
        pruner="none", test=True,
    )  # fmt: skip
    run(["search", "--config", str(config)])
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="mvcli", storage=f"sqlite:///{tmp_path}/study/study.db")
    trials = study.get_trials()
    assert _states(study) == ["COMPLETE"] * 3
    assert sorted(t.params["seed_everything"] for t in trials) == [0, 1, 2]
    report = json.loads((tmp_path / "study" / "study.json").read_text())
    for trial in trials:
        log_dir = Path(trial.user_attrs["log_dir"])
        seed = yaml.safe_load((log_dir / "config.yaml").read_text())["seed_everything"]
        assert seed == trial.params["seed_everything"]
        # The trial's best checkpoint was tested like `mvcli test` would: its metrics file.
        tested = trial.user_attrs["test"]
        assert Path(tested["checkpoint"]).parent == log_dir / "checkpoints"
        written = json.loads((Path(tested["output_dir"]) / "test_metrics.json").read_text())
        assert tested["test/leaderboard"] == pytest.approx(written["test/leaderboard"])
    val = [t.value for t in trials]
    test = [t.user_attrs["test"]["test/leaderboard"] for t in trials]
    for name, values in (("val/leaderboard", val), ("test/leaderboard", test)):
        stats = report["summary"][name]
        assert stats["n"] == 3
        assert stats["mean"] == pytest.approx(np.mean(values))
        assert stats["std"] == pytest.approx(np.std(values, ddof=1))
        line = f"{name} over 3 completed trials: {stats['mean']:.4f} +- {stats['std']:.4f}"
        assert line in out


def test_the_summary_is_the_mean_and_sample_std():
    stats = mean_std([0.9, 0.95, 1.0])
    assert stats["mean"] == pytest.approx(0.95) and stats["std"] == pytest.approx(0.05)
    assert (stats["n"], stats["min"], stats["max"]) == (3, 0.9, 1.0)
    assert mean_std([0.5])["std"] is None  # one trial: no spread to report


def test_the_grid_takes_categorical_keys_only(tmp_path, synthetic_root):
    with pytest.raises(ValueError, match=r"search_space\.model\.optimizer\.init_args\.lr: the "
                       "grid sampler takes categorical keys only"):  # fmt: skip
        search(
            [CONFIGS / "demo.yaml", CONF / "tiny_run.yaml"],
            {LR: Distribution("float", low=1e-3, high=1e-2)},
            output_dir=tmp_path / "study",
            sampler="grid",
            overrides=[f"--data.root={synthetic_root}"],
        )
