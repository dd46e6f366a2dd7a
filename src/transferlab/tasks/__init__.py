"""The task registry: one module per task answers everything that differs between tasks.

A task is a `Task` (`transferlab.tasks.base`): its LightningModule, the eval transform its
checkpoints name, how its predictions are written and scored, and what its exported model
returns. Built-in tasks are the modules of this package, found by name; a task of your own is a
module that calls `register(...)`, found once imported, or by its module path. Adding a task is
one module and its configs (`conf/task/<name>.yaml`); nothing else changes.
"""

import importlib
import pkgutil

from transferlab.errors import ConfigError
from transferlab.tasks.base import Task

__all__ = ["Task", "get", "names", "register"]

_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Make `task` known under `task.name` (its module's `task` attribute)."""
    _REGISTRY[task.name] = task
    return task


def get(name: str) -> Task:
    """The task called `name`: registered, built in (`transferlab.tasks.<name>`), or the module at
    that import path, which registers it."""
    if name not in _REGISTRY:
        module = name if "." in name else f"{__name__}.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is None or not module.startswith(err.name):
                raise
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(names())} (a task of your "
                          "own registers itself with transferlab.tasks.register)")
    return _REGISTRY[name]


HELPERS = ("base", "raw")  # modules of this package that are not tasks


def names() -> list[str]:
    built_in = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in HELPERS]
    return sorted(set(built_in) | set(_REGISTRY))
