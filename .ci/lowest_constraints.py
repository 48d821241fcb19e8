"""Print pip constraints pinning every runtime dependency to its declared lower bound.

The lower bounds in pyproject.toml are a promise; CI installs them and runs the tests again.
"""

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
for requirement in project["dependencies"]:
    match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)", requirement)
    if match:
        print(f"{match.group(1)}=={match.group(2)}")  # noqa: T201 - the output is the point
