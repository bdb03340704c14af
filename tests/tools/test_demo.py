"""The demo: fit, test, predict and score in one call, on the tiny synthetic set."""

from __future__ import annotations

import functools
import json
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from jsonargparse import CLI

from mvcli.commandline.quiet import quiet_third_party
from mvcli.tools.demo import run_demo
from tests.conftest import CONF


def test_demo_trains_tests_predicts_and_scores(synthetic_root, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    # As `make demo` runs it: its own options in sys.argv, mvcli's quiet filters installed.
    monkeypatch.setattr(sys, "argv", ["mvcli.tools.demo", "--data_root", str(synthetic_root)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        summary = run_demo(data_root=synthetic_root, runs=runs, overlay=CONF / "tiny_run.yaml",
                           name="smoke", max_epochs=1)  # fmt: skip
    assert not [w for w in caught if "args parameter is intended" in str(w.message)]
    out = capsys.readouterr().out
    log_dir = Path(summary["log_dir"])
    assert log_dir == runs / "smoke" / "version_0"
    assert json.loads((log_dir / "demo_summary.json").read_text()) == summary
    # The fit's config.yaml (the one a resume reads), not overwritten by test or predict.
    fit_config = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert fit_config["ckpt_path"] is None and "return_predictions" not in fit_config
    assert Path(summary["checkpoint"]).parent == log_dir / "checkpoints"
    # Test wrote into its own folder of the run, named after the checkpoint, and says so.
    tested = log_dir / "test" / Path(summary["checkpoint"]).stem / "test_metrics.json"
    assert summary["test"] == json.loads(tested.read_text())
    assert summary["test"]["checkpoint"] == str(Path(summary["checkpoint"]).resolve())
    assert Path(summary["predictions"]).is_file()
    assert summary["official"]["counted"] > 0 and summary["official"]["missing"] == 0
    # The official-style score of the predictions agrees with the test step's metrics.
    acc = 100 * summary["test"]["test/acc_action"]
    assert summary["official"]["accuracy_action"] == pytest.approx(acc, abs=1e-4)
    assert "writing synthetic dataset" not in out  # the set was there: not written again
    # Where the time went, step by step (no data step: the set was there), and the test
    # leaderboard's interval beside it.
    assert list(summary["seconds"]) == ["fit", "test", "predict", "score"]
    assert sum(summary["seconds"].values()) <= summary["minutes"] * 60 + 1
    assert f"({', '.join(f'{k} {v:.0f} s' for k, v in summary['seconds'].items())})" in out
    low, high = summary["test"]["test/leaderboard_ci95"]
    assert f"leaderboard {summary['test']['test/leaderboard']:.3f} [{low:.3f}, {high:.3f}]" in out
    # The review page of the Test predictions, beside them, printed last.
    review = Path(summary["review"])
    assert review == log_dir / "predictions.html"
    assert review.stat().st_size == summary["review_size"]
    assert out.rstrip().splitlines()[-1].lstrip().startswith(f"review page  {review}")
    for path in (summary["log_dir"], summary["checkpoint"], summary["predictions"]):
        assert path in out


def test_every_option_reaches_the_demo_from_the_command_line(tmp_path):
    # The complaint: `--config FILE` was accepted and silently dropped (jsonargparse's CLI
    # pops a function's `config` argument), so the demo trained configs/demo.yaml anyway.
    @functools.wraps(run_demo)
    def spy(**kwargs):
        return kwargs

    given = CLI(spy, args=["--run_config", str(tmp_path / "a.yaml"), "--max_epochs", "3",
                           "--overlay", str(tmp_path / "b.yaml")])  # fmt: skip
    assert given["run_config"] == tmp_path / "a.yaml"
    assert (given["overlay"], given["max_epochs"]) == (tmp_path / "b.yaml", 3)
