"""Runs made by mvcli 0.1.0, before the package moved into folders by role, still resume and
predict: old module paths import as the new modules, with a warning."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest

import mvcli
from mvcli.cli import main
from mvcli.data.synthetic import write_synthetic_dataset
from tests.conftest import TINY

FIXTURE = Path(__file__).parent / "fixtures/run-0.1.0"


@pytest.mark.parametrize("old", sorted(mvcli.MOVED_MODULES))
def test_an_old_module_path_is_the_new_module_with_a_warning(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    new = importlib.import_module(mvcli.MOVED_MODULES[old])
    with pytest.warns(FutureWarning, match=f"{old} moved to {new.__name__}"):
        module = importlib.import_module(old)
    assert module is new
    assert new.__spec__.name == new.__name__  # the new module's own spec is kept


@pytest.fixture
def old_run(tmp_path, monkeypatch) -> Path:
    """The 0.1.0 run folder in a working folder with the data it was trained on."""
    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset(
        tmp_path / "data", train=16, valid=12, test=16, chall=4, quirks=True, seed=1, **TINY
    )
    run = tmp_path / "runs/demo/version_0"
    shutil.copytree(FIXTURE, run)
    for name in list(sys.modules):  # so the old class path imports (and warns) again
        if name in mvcli.MOVED_MODULES:
            monkeypatch.delitem(sys.modules, name)
    return run


def test_a_0_1_run_resumes_from_its_config_and_last_checkpoint(old_run):
    with pytest.warns(FutureWarning, match="mvcli.schedulers moved to mvcli.task.schedulers"):
        fit = main(
            ["fit", "--config", str(old_run / "config.yaml"), "--ckpt_path", "last",
             "--trainer.max_epochs", "3", "--trainer.enable_model_summary", "false"]
        )  # fmt: skip
    assert fit.trainer.current_epoch == 3
    history = json.loads((old_run / "history.json").read_text())
    assert [e["epoch"] for e in history] == [0, 1, 2]
    assert type(fit.model.lr_schedulers().scheduler).__name__ == "LinearWarmup"  # in GroupFactorLR


def test_a_0_1_checkpoint_predicts_alone(old_run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        main(
            ["predict", "--ckpt_path", str(old_run / "checkpoints/last.ckpt"),
             "--data.predict_root", "data/Test", "--trainer.enable_model_summary", "false"]
        )  # fmt: skip
    predictions = json.loads((old_run / "predictions.json").read_text())
    tested = json.loads(Path("data/Test/annotations.json").read_text())["Actions"]
    assert set(predictions["Actions"]) <= set(tested) and predictions["Actions"]
