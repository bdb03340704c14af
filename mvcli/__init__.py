"""mvcli: a LightningCLI application for multi-task, multi-view video classification."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# Module paths before the package was arranged in folders by role (0.1.0 runs): class paths
# in a saved config.yaml (``mvcli.schedulers.LinearWarmup``) still import, with a warning.
# Kept for one release.
MOVED_MODULES = {
    "mvcli.checkpoints": "mvcli.utils.checkpoints",
    "mvcli.compat": "mvcli.utils.compat",
    "mvcli.errors": "mvcli.utils.errors",
    "mvcli.io": "mvcli.utils.io",
    "mvcli.loggers": "mvcli.utils.loggers",
    "mvcli.plots": "mvcli.utils.plots",
    "mvcli.help": "mvcli.commandline.help",
    "mvcli.quiet": "mvcli.commandline.quiet",
    "mvcli.limits": "mvcli.commandline.limits",
    "mvcli.outputs": "mvcli.commandline.outputs",
    "mvcli.trainer": "mvcli.commandline.subcommands",
    "mvcli.module": "mvcli.task.module",
    "mvcli.losses": "mvcli.task.losses",
    "mvcli.metrics": "mvcli.task.metrics",
    "mvcli.schedulers": "mvcli.task.schedulers",
    "mvcli.export": "mvcli.deploy.export",
    "mvcli.compress": "mvcli.deploy.compress",
    "mvcli.scoring": "mvcli.deploy.scoring",
    "mvcli.demo": "mvcli.tools.demo",
    "mvcli.search": "mvcli.tools.search",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as its new module (the same object, so classes compare
    equal) and says where it moved."""

    def __init__(self) -> None:
        self._specs: dict = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED_MODULES[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path works until the next release "
            "(update class paths in configs)",
            FutureWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The import system gave the new module the old path's spec: give its own back.
        module.__spec__ = self._specs[_old_path(module.__name__)]


def _old_path(new: str) -> str:
    return next(old for old, moved in MOVED_MODULES.items() if moved == new)


sys.meta_path.append(_MovedModuleFinder())
