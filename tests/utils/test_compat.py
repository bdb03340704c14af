"""Private APIs of other libraries are used in mvcli/utils/compat.py only (see its docstring).

Three rules, checked over every module of the package except compat.py:

- no ``obj._name`` on anything but ``self``, ``cls`` or ``super()`` (another object's
  internals, a library's or mvcli's own);
- no ``from lib import _name`` / ``from lib._module import ...`` from another package;
- no ``self._name`` (or method ``_name``) in an mvcli class where ``_name`` belongs to a
  library base class: its attributes, methods, or ``self._name`` assignments in its source.

``ALLOWED`` lists the exceptions, each with its reason (the same ones compat.py's docstring
gives).
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
from pathlib import Path

import pytest

import mvcli
from mvcli.utils import compat

PACKAGE = Path(mvcli.__file__).parent
COMPAT = "utils/compat.py"

_OVERRIDE = "MVCLI overrides this private LightningCLI hook (no public one; compat.py docstring)"
_ARGPARSE = "argparse's help formatting is only reachable through its underscored internals"
ALLOWED = {
    ("cli.py", "_add_subcommands"): _OVERRIDE,
    ("cli.py", "_prepare_subcommand_parser"): _OVERRIDE,
    ("cli.py", "_parse_ckpt_path"): _OVERRIDE,
    ("cli.py", "_instantiate_trainer"): _OVERRIDE,
    ("commandline/help.py", "_split_lines"): _ARGPARSE,
    ("commandline/help.py", "_fill_text"): _ARGPARSE,
    ("commandline/help.py", "_format_action_invocation"): _ARGPARSE,
    ("commandline/help.py", "_action_groups"): _ARGPARSE,
    ("commandline/help.py", "_group_actions"): _ARGPARSE,
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_self(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def foreign_private_uses(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, name, code) of each private attribute of another object and private import."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and not _is_self(node.value):
            found.append((node.lineno, node.attr, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            if module.split(".")[0] == "mvcli":
                continue
            if any(_private(part) for part in module.split(".")):
                found.append((node.lineno, module, f"from {module} import ..."))
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, alias.name, f"from {module} import {alias.name}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(_private(part) for part in alias.name.split(".")):
                    found.append((node.lineno, alias.name, f"import {alias.name}"))
    return found


def _self_privates(cls_node: ast.ClassDef) -> dict[str, int]:
    """Private names an mvcli class uses on itself: ``self._x``, ``super()._x``, methods."""
    names = {}
    for node in ast.walk(cls_node):
        if isinstance(node, ast.Attribute) and _private(node.attr) and _is_self(node.value):
            names.setdefault(node.attr, node.lineno)
    for node in cls_node.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _private(node.name):
            names.setdefault(node.name, node.lineno)
    return names


_OWNED: dict[type, set[str]] = {}


def _library_owned(cls: type) -> set[str]:
    """Private names a library class defines: class attributes, methods, and the
    ``self._x`` its methods assign (instance attributes are not in ``__dict__``)."""
    if cls not in _OWNED:
        names = {name for name in vars(cls) if _private(name)}
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):  # built in (C): its __dict__ says it all
            source = None
        if source is not None:
            for node in ast.walk(ast.parse(inspect.cleandoc("\n" + source))):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and _private(node.attr)
                    and _is_self(node.value)
                ):
                    names.add(node.attr)
        _OWNED[cls] = names
    return _OWNED[cls]


def inherited_private_uses(module_name: str, tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, name, owner) of each private name an mvcli class shares with a library base."""
    classes = [node for node in getattr(tree, "body", []) if isinstance(node, ast.ClassDef)]
    if not classes:
        return []  # nothing to check; and importing mvcli.__main__ would run the CLI
    module = importlib.import_module(module_name)
    found = []
    for cls_node in classes:
        cls = getattr(module, cls_node.name, None)
        if not isinstance(cls, type):
            continue
        bases = [b for b in cls.__mro__[1:] if not b.__module__.startswith("mvcli")]
        bases = [b for b in bases if b.__module__ != "builtins"]
        for name, line in _self_privates(cls_node).items():
            owners = [b for b in bases if name in _library_owned(b)]
            if owners:
                owner = f"{owners[0].__module__}.{owners[0].__qualname__}"
                found.append((line, name, f"self.{name}, private to {owner}"))
    return found


def _sources() -> list[tuple[str, str, ast.AST]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == COMPAT:
            continue
        parts = ("mvcli", *path.relative_to(PACKAGE).with_suffix("").parts)
        module = ".".join(p for p in parts if p != "__init__")
        out.append((relative, module, ast.parse(path.read_text(), filename=str(path))))
    return out


def _violations(relative: str, found: list[tuple[int, str, str]]) -> list[str]:
    return [
        f"mvcli/{relative}:{line}: {what} ({name})"
        for line, name, what in found
        if (relative, name) not in ALLOWED
    ]


def test_private_apis_only_in_compat() -> None:
    problems = []
    used_allowances = set()
    for relative, module, tree in _sources():
        found = foreign_private_uses(tree) + inherited_private_uses(module, tree)
        used_allowances |= {(relative, name) for _, name, _ in found}
        problems += _violations(relative, found)
    assert not problems, (
        "private API outside mvcli/utils/compat.py: use a public API, or add a function with its "
        "reason to compat.py:\n" + "\n".join(problems)
    )
    assert set(ALLOWED) <= used_allowances, f"stale ALLOWED: {set(ALLOWED) - used_allowances}"


@pytest.mark.parametrize(
    "code",
    [
        "def f(trainer):\n    trainer._signal_connector.received_sigterm = True\n",
        "def f(self):\n    return self.trainer.fit_loop._results\n",
        "from lightning.fabric.utilities.data import _set_sampler_epoch\n",
        "from jsonargparse._common import parent_parser\n",
        "import torch._dynamo\n",
    ],
)
def test_foreign_private_uses_found(code: str) -> None:
    assert foreign_private_uses(ast.parse(code))


def test_public_and_own_names_pass() -> None:
    code = (
        "from torch.nn import Module as _Module\n"
        "class A:\n"
        "    def __init__(self):\n"
        "        self._own = 1\n"
        "        super().__init__()\n"
        "    def f(self, other):\n"
        "        return self._own, other.__class__, other.public\n"
    )
    assert foreign_private_uses(ast.parse(code)) == []


def test_inherited_private_found() -> None:
    # mvcli.callbacks.tuning's LearningRateFinder reading Lightning's own ``_update_attr``
    # (its update_attr argument) would be a library private used on self.
    code = (
        "class LearningRateFinder(_LearningRateFinder):\n"
        "    def on_fit_start(self, trainer, pl_module):\n"
        "        return self._update_attr and self._early_exit\n"
    )
    found = inherited_private_uses("mvcli.callbacks.tuning", ast.parse(code))
    assert {name for _, name, _ in found} == {"_update_attr", "_early_exit"}


def test_a_started_compile_clock_copies_as_a_stopped_one():
    """EMA deep-copies the model, which reaches the Throughput callback's clock through
    jsonargparse's instantiators: the copy must not carry Dynamo's handler (it holds a lock)."""
    clock = compat.CompileClock()
    clock.start()
    try:
        clock.seconds = 1.5
        twin = copy.deepcopy(clock)
    finally:
        clock.stop()
    assert twin.seconds == 1.5
    assert twin.__getstate__()["_handler"] is None
    twin.stop()  # a stopped clock: nothing to remove
