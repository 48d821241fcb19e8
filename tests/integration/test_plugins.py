"""A third-party package that declares an entry point shows up with no change here."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PLUGIN = Path(__file__).parent.parent / "fixtures" / "plugin"


def test_installed_plugin_is_listed_with_its_version(tmp_path: Path) -> None:
    target = tmp_path / "site"
    source = tmp_path / "src"
    shutil.copytree(PLUGIN, source)  # building writes beside the sources
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "DELIVERY_HOME": str(tmp_path / "home")}
    listed = subprocess.run(
        [sys.executable, "-m", "delivery", "dispatchers", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    fax = next(d for d in json.loads(listed.stdout)["dispatchers"] if d["slug"] == "fax")
    assert fax["version"] == "2.3.4" and fax["distribution"] == "delivery-fax"
    assert fax["address_types"] == ["phone"]
    assert [(f["name"], f["secret"]) for f in fax["config_fields"]] == [
        ("gateway", False),
        ("token", True),
    ]
