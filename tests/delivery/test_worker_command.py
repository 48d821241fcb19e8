"""``delivery worker`` runs Celery's worker command itself: its usage errors are ours."""

import gc

import pytest
from typer.testing import CliRunner

from delivery.cli import admin, app  # noqa: F401 - registers the commands
from schemas import Settings

runner = CliRunner()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--bogus"], "--bogus"),
        (["--pool", "nope"], "--pool"),
        (["--concurrency", "many"], "--concurrency"),
    ],
)
def test_a_bad_worker_option_is_one_line_naming_it_with_typers_exit_code(
    settings: Settings, argv: list[str], named: str
) -> None:
    result = runner.invoke(app, ["worker", *argv])

    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert named in result.output
    assert "celery worker --help" in result.output
    assert "Traceback" not in result.output
    # and the garbage collector, paused for the worker's imports, runs again
    assert gc.isenabled()
