"""Another package called `schemas` (or `workers`, `migrations`) first on sys.path gets a clear
error naming it, not an AttributeError later."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from delivery._layout import MARKER, PACKAGES, require


def _fake_package(root: Path, name: str) -> Path:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text('"""Some other project\'s package."""\nPayload = None\n')
    return package / "__init__.py"


def _python(code: str, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", PACKAGES)
def test_our_packages_carry_the_marker(name: str) -> None:
    assert getattr(require(name), MARKER) is True


def test_a_shadowing_schemas_stops_import_delivery_with_its_path(tmp_path: Path) -> None:
    # Given another project's `schemas` package first on PYTHONPATH
    (tmp_path / "elsewhere").mkdir()
    fake = _fake_package(tmp_path / "elsewhere", "schemas")
    # When a process imports delivery
    result = _python("import delivery", tmp_path / "elsewhere", cwd=tmp_path)
    # Then it fails at once, naming the file it found and how to fix it
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: `import schemas` found "), result.stderr
    assert str(fake) in last
    assert "not delivery's `schemas` package" in last
    assert "PYTHONPATH" in last
    assert "AttributeError" not in result.stderr


def test_without_the_shadow_the_same_process_imports_delivery(tmp_path: Path) -> None:
    # The same command with an empty PYTHONPATH directory: the check passes.
    (tmp_path / "elsewhere").mkdir()
    result = _python("import delivery; print(delivery.Payload)", tmp_path / "elsewhere", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "schemas.messages.Payload" in result.stdout


def test_the_cli_reports_a_shadowing_schemas_from_the_current_directory(tmp_path: Path) -> None:
    # `python -m` puts the current directory first: an application's own `schemas/` there.
    fake = _fake_package(tmp_path, "schemas")
    result = subprocess.run(
        [sys.executable, "-m", "delivery", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"`import schemas` found {fake}" in result.stderr


@pytest.mark.parametrize("name", ["workers", "migrations"])
def test_require_names_a_shadowing_workers_or_migrations(tmp_path: Path, name: str) -> None:
    fake = _fake_package(tmp_path, name)
    result = _python(f"from delivery._layout import require; require({name!r})", tmp_path, tmp_path)
    assert result.returncode != 0
    assert f"`import {name}` found {fake}, which is not delivery's `{name}`" in result.stderr


def test_db_upgrade_refuses_another_projects_migrations(tmp_path: Path) -> None:
    # Alembic would otherwise run that project's env.py against the delivery log.
    fake = _fake_package(tmp_path, "migrations")
    env = {**os.environ, "DELIVERY_HOME": str(tmp_path / ".delivery")}
    env.pop("DELIVERY_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "delivery", "db", "upgrade"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"`import migrations` found {fake}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".delivery" / "log.sqlite3").exists()
