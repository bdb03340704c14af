"""Runs made by mvcli 0.1.0, before the package moved into folders by role, still resume and
predict: old module paths import as the new modules, with a warning."""

from __future__ import annotations

import ast
import importlib
import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from jsonargparse.typing import NonNegativeInt

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
    shutil.copytree(FIXTURE, run, ignore=shutil.ignore_patterns("MADE_BY.md"))
    _write_0_1_checkpoint(run)
    for name in list(sys.modules):  # so the old class path imports (and warns) again
        if name in mvcli.MOVED_MODULES:
            monkeypatch.delitem(sys.modules, name)
    return run


def _write_0_1_checkpoint(run: Path) -> None:
    """``run/checkpoints/last.ckpt`` as 0.1.0 wrote it for the fixture's config.yaml.

    Trained from that config by today's code, then given what set 0.1.0's files apart
    (checked against a checkpoint 0.1.0 wrote, see MADE_BY.md): flat loss and clip
    hyperparameters, no ``finetune``, the data root as given (relative), and
    ``LinearWarmup.warmup_steps`` saved as jsonargparse's ``NonNegativeInt``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fit = main(
            ["fit", "--config", str(run / "config.yaml"), "--trainer.enable_model_summary",
             "false", "--trainer.logger.init_args.save_dir", "made"]
        )  # fmt: skip
    made = Path(fit.trainer.log_dir) / "checkpoints/last.ckpt"
    checkpoint = torch.load(made, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    loss, clip = hparams.pop("loss"), hparams.pop("clip")
    hparams.pop("finetune", None)
    hparams["loss"] = loss.pop("kind")
    hparams |= loss
    hparams |= {"num_frames": clip["num_frames"], "img_height": clip["height"],
                "img_width": clip["width"], "mean": clip["mean"], "std": clip["std"]}  # fmt: skip
    checkpoint["datamodule_hyper_parameters"]["root"] = "data"
    warmup = checkpoint["lr_schedulers"][0]["inner"]
    warmup["warmup_steps"] = NonNegativeInt(warmup["warmup_steps"])
    (run / "checkpoints").mkdir()
    torch.save(checkpoint, run / "checkpoints/last.ckpt")


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
    predictions = json.loads((old_run / "predict/last-Test/predictions.json").read_text())
    tested = json.loads(Path("data/Test/annotations.json").read_text())["Actions"]
    assert set(predictions["Actions"]) <= set(tested) and predictions["Actions"]


# -- the package's shape: folders by role, no import circles, tests mirror it ------------------
PACKAGE = Path(mvcli.__file__).parent


def _modules() -> dict[str, Path]:
    return {
        ".".join(p for p in path.relative_to(PACKAGE.parent).with_suffix("").parts
                 if p != "__init__"): path
        for path in PACKAGE.rglob("*.py")
    }  # fmt: skip


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """mvcli modules ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def test_at_most_eight_modules_at_the_top():
    assert len(list(PACKAGE.glob("*.py"))) <= 8


def test_no_circle_of_imports():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    circles = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if reaches(d, m))
    assert not circles, circles


def test_every_module_has_its_test_file():
    tests = Path(__file__).parent
    missing = [
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
        and not (tests / path.parent.relative_to(PACKAGE) / f"test_{path.name}").is_file()
    ]
    assert not missing, missing
