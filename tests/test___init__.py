"""Runs made by mvcli 0.1.0, before the package moved into folders by role, still resume and
predict: old module paths import as the new modules, with a warning."""

from __future__ import annotations

import ast
import importlib
import json
import sys
import warnings
from pathlib import Path

import pytest

import mvcli
from mvcli.cli import main


@pytest.mark.parametrize("old", sorted(mvcli.MOVED_MODULES))
def test_an_old_module_path_is_the_new_module_with_a_warning(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    new = importlib.import_module(mvcli.MOVED_MODULES[old])
    with pytest.warns(FutureWarning, match=f"{old} moved to {new.__name__}"):
        module = importlib.import_module(old)
    assert module is new
    assert new.__spec__.name == new.__name__  # the new module's own spec is kept


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
