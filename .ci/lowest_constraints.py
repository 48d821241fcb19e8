"""Print pip constraints pinning every runtime dependency to its declared lower bound.

The lower bounds in pyproject.toml are a promise; CI installs them and runs the tests again.
Runtime dependencies are the base ones (the producer) and the extras' (``worker``,
``server``…); an extra naming delivery itself (``delivery[worker]``) adds nothing of its own.
"""

import re
import tomllib
from pathlib import Path

#: Extras left at their newest: the test and lint tools, and apprise, whose 1.8.0 fails
#: test_redirects_are_refused_when_guarded (it was never pinned to its lower bound).
UNPINNED_EXTRAS = {"dev", "apprise"}

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra, listed in project.get("optional-dependencies", {}).items():
    if extra not in UNPINNED_EXTRAS:
        requirements.extend(listed)

pins: dict[str, str] = {}
for requirement in requirements:
    match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)", requirement)
    if match:
        name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        if name == project["name"]:
            continue
        if name in pins and pins[name] != match.group(2):
            raise SystemExit(f"{name}: two lower bounds, {pins[name]} and {match.group(2)}")
        pins[name] = match.group(2)
for name, lowest in pins.items():
    print(f"{name}=={lowest}")  # noqa: T201 - the output is the point
