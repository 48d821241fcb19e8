"""Lighter installs, simulated: run Python as if only the base (or some extras) were installed.

``import_names`` lists the top-level modules that pyproject.toml's base dependencies, plus
the extras named, bring (everything they require in turn included). ``run_as_installed``
runs a script in a fresh interpreter whose imports of anything else fail, as they would in
a virtual environment with only those installed; guarded optional imports (kombu's
``yaml``, celery's ``greenlet``) just find nothing.
"""

import functools
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

#: The project's own top-level packages.
OURS = frozenset({"delivery", "schemas", "workers", "migrations"})
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"

_BLOCKER = """
import json, sys

_allowed = set(json.loads(sys.argv.pop(1)))


class _InstalledOnly:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in _allowed or top in sys.stdlib_module_names or top.startswith("_"):
            return None
        raise ModuleNotFoundError(f"No module named {name!r} (not installed)", name=name)


sys.meta_path.insert(0, _InstalledOnly())
del json, _InstalledOnly
"""


def _requirements(extras: Iterable[str]) -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    listed = list(project["dependencies"])
    pending = list(extras)
    seen: set[str] = set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in project["optional-dependencies"][extra]:
            requirement = Requirement(raw)
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                pending.extend(requirement.extras)  # `delivery[worker]`: that extra's
            else:
                listed.append(raw)
    return [Requirement(raw) for raw in listed]


@functools.cache
def import_names(*extras: str) -> frozenset[str]:
    """The top-level modules the base dependencies and ``extras`` bring, as installed here.
    Cached: reading every installed distribution's file list takes about half a second."""
    pending = _requirements(extras)
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        key = f"{canonicalize_name(requirement.name)}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = distribution(requirement.name).requires or []
        except PackageNotFoundError:  # a dependency's optional dependency, not installed
            continue
        wanted = requirement.extras or {""}
        for raw in requires:
            child = Requirement(raw)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in wanted):
                pending.append(child)
    installed = {key.partition("[")[0] for key in seen}
    return frozenset(
        module
        for module, dists in _packages_distributions().items()
        if any(canonicalize_name(d) in installed for d in dists)
    )


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    return packages_distributions()


def run_as_installed(
    script: str, *extras: str, args: Iterable[str] = (), home: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (``-c``) as if only the base and ``extras`` were installed, with
    ``DELIVERY_HOME`` at ``home`` and no other ``DELIVERY_`` setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    env["DELIVERY_HOME"] = str(home)
    allowed = json.dumps(sorted(import_names(*extras) | OURS))
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + script, allowed, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
