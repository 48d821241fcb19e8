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
        ("timeout", False),
    ]


def test_plugin_suite_passes_the_conformance_checks(tmp_path: Path) -> None:
    # Given the plugin installed as a third party installs it, with its own tests
    target = tmp_path / "site"
    source = tmp_path / "src"
    shutil.copytree(PLUGIN, source)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    # When its suite runs delivery.testing's checks, from its own folder and config
    env = {**os.environ, "PYTHONPATH": str(target), "DELIVERY_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "plugin_tests"],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
    )
    # Then every check ran and passed, the HTTP ones against real loopback servers
    assert run.returncode == 0, run.stdout + run.stderr
    assert "10 passed" in run.stdout, run.stdout
