"""Parts talk through declared interfaces, not through attributes set on each other's objects.

What passes between the CLI, the module, the data module and the callbacks goes through
constructor arguments, documented properties and methods, Lightning hooks and logged metrics.
Three rules, checked over every module of the package except utils/compat.py (the one place
that sets library internals, each with its reason: see its docstring):

- no attribute assigned (``=``, ``+=``, ``del``, ``setattr``/``delattr``) onto a Lightning
  object from outside its class: a trainer, LightningModule, data module, strategy or callback,
  known by its name (``trainer``, ``pl_module``, ``model``, ``datamodule``, ``strategy``,
  ``callback``, ``x.trainer``, ``x.lightning_module``...) or by its parameter annotation,
  unless the attribute is a property with a setter on that class (or on mvcli's subclass of
  it: ``MVFoulModule.lr``, ``MVFoulModule.step_runner``), i.e. a documented property;
- no method replaced: no attribute assigned whose name is a method of a Lightning class
  (Trainer, LightningModule, LightningDataModule, Callback, Strategy, LightningCLI), on any
  object; nor one of an mvcli subclass of those, on another object; nor, on ``self``, one of
  its own class's methods;
- no change to ``trainer.callbacks`` (their order is the CLI's: ``mvcli.cli.FIRST_SECTIONS``).

``ALLOWED`` lists the exceptions, each with its reason.
"""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import Strategy

from mvcli.cli import MVCLI
from mvcli.commandline.subcommands import MVTrainer
from mvcli.data.datamodule import MVFoulDataModule
from mvcli.task.module import MVFoulModule
from tests.utils.test_compat import _sources

# Role -> the classes whose settable properties may be assigned from outside.
ROLE_CLASSES: dict[str, tuple[type, ...]] = {
    "trainer": (Trainer, MVTrainer),
    "module": (LightningModule, MVFoulModule),
    "datamodule": (LightningDataModule, MVFoulDataModule),
    "strategy": (Strategy,),
    "callback": (Callback,),
}
# A variable or attribute of these names holds that role's object.
ROLE_NAMES = {
    "trainer": "trainer",
    "pl_module": "module",
    "lightning_module": "module",
    "model": "module",
    "datamodule": "datamodule",
    "strategy": "strategy",
    "callback": "callback",
}
# A parameter annotated with one of these names holds that role's object.
ROLE_ANNOTATIONS = {
    "Trainer": "trainer",
    "MVTrainer": "trainer",
    "LightningModule": "module",
    "MVFoulModule": "module",
    "LightningDataModule": "datamodule",
    "MVFoulDataModule": "datamodule",
    "Strategy": "strategy",
    "DDPStrategy": "strategy",
    "Callback": "callback",
    "ModelCheckpoint": "callback",
}
_MUTATORS = {"append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse"}

ALLOWED = {
    ("utils/checkpoints.py", "callback.best_model_path"): (
        "save_last_checkpoint writes the last-checkpoint ModelCheckpoint's own last.ckpt outside "
        "its schedule (signal, OOM stop) and records it as that callback would (public, "
        "documented ModelCheckpoint attributes), so a resumed run overwrites it"
    ),
    ("utils/checkpoints.py", "callback.last_model_path"): "same as callback.best_model_path",
    ("commandline/help.py", "trainer._group_actions"): (
        "`trainer` there is the argparse group of the --trainer.* options, not a Trainer"
    ),
    ("tools/search.py", "trainer.callbacks"): (
        "mvcli search adds the trial's Optuna pruning callback to the trainer it built, before "
        "fit: the trial object cannot travel through the command line"
    ),
}


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _annotated_roles(tree: ast.AST) -> dict[ast.AST, dict[str, str]]:
    """Per function, its parameters whose annotation names a role class."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            roles = {}
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                if getattr(arg, "annotation", None) is None:
                    continue
                names = {n.id for n in ast.walk(arg.annotation) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(arg.annotation) if isinstance(n, ast.Attribute)}
                if isinstance(arg.annotation, ast.Constant) and isinstance(
                    arg.annotation.value, str
                ):
                    names |= set(arg.annotation.value.replace("|", " ").split())
                role = next((ROLE_ANNOTATIONS[n] for n in names if n in ROLE_ANNOTATIONS), None)
                if role is not None:
                    roles[arg.arg] = role
            out[node] = roles
    return out


def _role(node: ast.expr, params: dict[str, str]) -> str | None:
    """The role of the object ``node`` evaluates to, when it is a Lightning object."""
    if isinstance(node, ast.Name):
        return params.get(node.id) or ROLE_NAMES.get(node.id)
    if isinstance(node, ast.Attribute):
        return ROLE_NAMES.get(node.attr)
    return None


def _settable(role: str, attr: str) -> bool:
    """Whether ``attr`` is a property with a setter on the role's classes."""
    for cls in ROLE_CLASSES[role]:
        prop = inspect.getattr_static(cls, attr, None)
        if isinstance(prop, property) and prop.fset is not None:
            return True
    return False


_HOOK_CLASSES = (Trainer, LightningModule, LightningDataModule, Callback, Strategy, LightningCLI)


def _method_names() -> tuple[set[str], set[str]]:
    """Methods of Lightning's hook classes (and their bases), and of mvcli's subclasses."""
    library = set()
    for cls in _HOOK_CLASSES:
        for klass in cls.__mro__:
            if klass.__module__.startswith("lightning"):
                library |= {n for n, v in vars(klass).items() if inspect.isfunction(v)}
    names = set()
    for _, module_name, tree in _sources():
        classes = [n.name for n in getattr(tree, "body", []) if isinstance(n, ast.ClassDef)]
        if not classes:
            continue  # nothing to look at; and importing mvcli.__main__ would run the CLI
        module = importlib.import_module(module_name)
        for name in classes:
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, _HOOK_CLASSES):
                names |= {n for n, v in vars(cls).items() if inspect.isfunction(v)}
    return _plain_names(library), _plain_names(names)


def _plain_names(names: set[str]) -> set[str]:
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))}


def _own_methods(cls_node: ast.ClassDef) -> set[str]:
    return {
        item.name
        for item in cls_node.body
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
        and not any(_is_property(d) for d in item.decorator_list)
    }


def _is_property(decorator: ast.expr) -> bool:
    text = ast.unparse(decorator)
    return text in ("property", "functools.cached_property", "cached_property") or (
        text.endswith((".setter", ".deleter"))
    )


def _scopes(tree: ast.AST) -> dict[ast.AST, tuple[dict[str, str], set[str]]]:
    """Each node -> the role-annotated parameters of the functions around it, and the
    methods of the class around it."""
    roles = _annotated_roles(tree)
    out: dict[ast.AST, tuple[dict[str, str], set[str]]] = {}

    def visit(node: ast.AST, params: dict[str, str], own: set[str]) -> None:
        if node in roles:
            params = {**params, **roles[node]}
        if isinstance(node, ast.ClassDef):
            own = _own_methods(node)
        out[node] = (params, own)
        for child in ast.iter_child_nodes(node):
            visit(child, params, own)

    visit(tree, {}, set())
    return out


def channel_violations(
    tree: ast.AST, methods: tuple[set[str], set[str]]
) -> list[tuple[int, str, str]]:
    """(line, ``obj.attr``, why) of each rule broken in ``tree``."""
    scopes = _scopes(tree)
    params = {node: scope[0] for node, scope in scopes.items()}
    found = []

    def check(node: ast.AST, obj: ast.expr, attr: str | None, code: str) -> None:
        library, ours = methods
        ours = scopes.get(node, ({}, set()))[1] if _is_self(obj) else ours
        if attr is not None and (attr in library or attr in ours):
            found.append((node.lineno, code, "replaces a method"))
            return
        if _is_self(obj):
            return
        role = _role(obj, params.get(node, {}))
        if role is None:
            return
        if attr is not None and _settable(role, attr):
            return
        found.append((node.lineno, code, f"sets an attribute of a {role} from outside"))

    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.Delete):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store | ast.Del):
                    check(node, sub.value, sub.attr, ast.unparse(sub))
                if (
                    isinstance(sub, ast.Subscript)
                    and isinstance(sub.value, ast.Attribute)
                    and sub.value.attr == "callbacks"
                    and _role(sub.value.value, params.get(node, {})) == "trainer"
                ):
                    found.append((node.lineno, ast.unparse(sub), "changes trainer.callbacks"))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("setattr", "delattr") and node.args:
            name = node.args[1] if len(node.args) > 1 else None
            attr = name.value if isinstance(name, ast.Constant) else None
            obj = node.args[0]
            code = f"{ast.unparse(obj)}.{attr if attr is not None else '<name>'}"
            if attr is None and not _is_self(obj) and _role(obj, params.get(node, {})):
                found.append((node.lineno, code, "sets an attribute by a computed name"))
            else:
                check(node, obj, attr, code)
        elif (
            isinstance(func, ast.Attribute)
            and func.attr in _MUTATORS
            and isinstance(func.value, ast.Attribute)
            and func.value.attr == "callbacks"
            and _role(func.value.value, params.get(node, {})) == "trainer"
        ):
            found.append((node.lineno, ast.unparse(func.value), "changes trainer.callbacks"))
    return found


@pytest.fixture(scope="module")
def methods() -> tuple[set[str], set[str]]:
    return _method_names()


def test_parts_talk_through_declared_interfaces(methods) -> None:
    problems = []
    used = set()
    for relative, _, tree in _sources():  # every module but utils/compat.py
        for line, code, why in channel_violations(tree, methods):
            used.add((relative, code))
            if (relative, code) not in ALLOWED:
                problems.append(f"mvcli/{relative}:{line}: {code}: {why}")
    assert not problems, (
        "a part sets state on another's object: use a constructor argument, a documented "
        "property (with a setter) or method, a Lightning hook or a logged metric:\n"
        + "\n".join(problems)
    )
    assert set(ALLOWED) <= used, f"stale ALLOWED: {set(ALLOWED) - used}"


@pytest.mark.parametrize(
    "code",
    [
        "def f(trainer):\n    trainer.output_dir = 'x'\n",
        "def f(self, trainer, pl_module):\n    pl_module.last_train_loss = 1.0\n",
        "def f(trainer):\n    setattr(trainer, 'output_dir', 'x')\n",
        "def f(trainer, name):\n    setattr(trainer, name, 1)\n",
        "def f(model):\n    model.lr_factors = {}\n",
        "def f(self):\n    self.trainer.anything = 1\n",
        "def f(self, module: LightningModule):\n    module.optimizer = None\n",
        "def f(self, x: 'Trainer | None'):\n    x.flag += 1\n",
        "def f(trainer):\n    trainer.strategy.whatever = 1\n",
        "def f(pl_module):\n    del pl_module.training_step\n",
        "def f(obj, step):\n    obj.training_step = step\n",
        "class A:\n    def f(self):\n        self.training_step = print\n",
        "def f(obj):\n    obj.on_train_batch_start = print\n",
        "def f(obj):\n    setattr(obj, 'on_fit_start', print)\n",
        "def f(obj):\n    obj.instantiate_trainer = print\n",  # an mvcli method (MVCLI)
        "def f(obj):\n    obj.run_training_step = print\n",  # an mvcli callback's method
        "class A:\n    def g(self):\n        pass\n    def f(self):\n        self.g = print\n",
        "def f(self, trainer):\n    trainer.callbacks.insert(0, self)\n",
        "def f(self, trainer):\n    trainer.callbacks.remove(self)\n",
        "def f(self, trainer):\n    trainer.callbacks[0] = self\n",
    ],
)
def test_channel_violations_found(code: str, methods) -> None:
    assert channel_violations(ast.parse(code), methods), code


def test_declared_channels_pass(methods) -> None:
    code = (
        "class A:\n"
        "    def __init__(self, output_dir=None):\n"
        "        self.output_dir = output_dir\n"  # own attribute
        "        self.hparams.mean = 1\n"  # own hyper-parameters
        "    def setup(self, trainer, pl_module, stage):\n"
        "        pl_module.lr = 0.1\n"  # MVFoulModule.lr: a property with a setter
        "        pl_module.step_runner = self\n"  # MVFoulModule.step_runner: the same
        "        trainer.strategy.checkpoint_io = None\n"  # Strategy.checkpoint_io: the same
        "        report.views = 3\n"  # not a Lightning object
        "        setattr(metric, 'value', 1)\n"
        "        p.requires_grad = False\n"
        "        return [c for c in trainer.callbacks]\n"
    )
    assert channel_violations(ast.parse(code), methods) == []


def test_the_properties_set_from_outside_are_declared() -> None:
    for cls, attr in [(MVFoulModule, "lr"), (MVFoulModule, "step_runner"),
                      (Strategy, "checkpoint_io")]:  # fmt: skip
        prop = inspect.getattr_static(cls, attr)
        assert isinstance(prop, property) and prop.fset is not None
        assert prop.__doc__ or cls is Strategy  # Lightning documents it on its site


def test_mvcli_methods_are_known(methods) -> None:
    assert {"instantiate_trainer", "run_training_step", "batch_training_step"} <= methods[1]
    assert {"training_step", "on_fit_start", "setup"} <= methods[0]
    assert "instantiate_trainer" in vars(MVCLI)
