"""A clear error when another package shadows one of our generic top-level names.

The design card fixes ``schemas``, ``workers`` and ``migrations`` at the top of the
repository, so an install puts them at the top of site-packages, where an application's own
``schemas/`` (in the current directory, on ``PYTHONPATH``, or from another distribution) can
come first on ``sys.path``. Without this check the first sign is an ``AttributeError`` or an
``ImportError`` about a missing name somewhere later, pointing at the wrong file.
"""

import importlib
from pathlib import Path
from types import ModuleType

#: Each of our top-level packages sets this to True in its ``__init__``.
MARKER = "__delivery_layout__"
#: The top-level packages beside ``delivery`` that the layout requires.
PACKAGES = ("schemas", "workers", "migrations")


def require(name: str) -> ModuleType:
    """Import our top-level package ``name``, making sure it is ours.

    Raises:
        ImportError: another package of that name comes first on ``sys.path``.
    """
    module = importlib.import_module(name)
    if getattr(module, MARKER, False) is not True:
        raise ImportError(_explain(name, module), name=name, path=_where(module))
    return module


def _where(module: ModuleType) -> str:
    if module.__file__:
        return module.__file__
    return ", ".join(getattr(module, "__path__", [])) or repr(module)  # a namespace package


def _explain(name: str, module: ModuleType) -> str:
    ours = Path(__file__).resolve().parent.parent / name
    found = (
        f"delivery's own is at {ours}"
        if (ours / "__init__.py").is_file()
        else f"delivery's own is missing from {ours.parent}: reinstall delivery"
    )
    return (
        f"`import {name}` found {_where(module)}, which is not delivery's `{name}` package: "
        f"another package called `{name}` comes first on sys.path ({found}). Rename or move "
        "that package, or take its directory off PYTHONPATH (or run from another directory); "
        "if another installed distribution provides it, give delivery a virtual environment "
        "of its own."
    )


# Every entry point (the producer, the CLI, the API, the workers) imports `delivery` before
# `schemas`, and delivery/__init__.py imports this module first, so `schemas` is checked here.
require("schemas")
