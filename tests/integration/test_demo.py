"""`delivery demo`: a real worker and receiver, and a summary that agrees with the log."""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from delivery.cli import app, demo  # noqa: F401 - registers the command
from delivery.log import DeliveryLog
from delivery.log.database import dispose_engines, get_engine
from delivery.producer import reset_publisher
from schemas import get_settings

pytestmark = pytest.mark.integration

_ROW = r"{}\s*│\s*(\d+)\s*│\s*(\d+)\s*│"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    env.update(
        DELIVERY_HOME=str(tmp_path / ".delivery"),
        # Every first try is turned away; a breaker opened by them would only add a wait.
        DELIVERY_BREAKER_THRESHOLD="0",
        COLUMNS="80",
    )
    return env


def _figures(output: str, label: str) -> tuple[int, int]:
    """The (delivery log, receiver) pair of one row of the summary table."""
    match = re.search(_ROW.format(re.escape(label)), output)
    assert match, f"no {label!r} row in:\n{output}"
    return int(match.group(1)), int(match.group(2))


def _retries_in_log(home: Path) -> int:
    """Attempts beyond the first, read from the log itself rather than from the demo."""
    log = DeliveryLog(get_engine(f"sqlite:///{home / 'log.sqlite3'}"))
    records = log.find(channel="demo-webhook", limit=1_000)
    return sum(r.attempt_count for r in records) - len(records)


@pytest.fixture
def clean_settings() -> Iterator[None]:
    yield
    dispose_engines()
    reset_publisher()
    get_settings.cache_clear()


def test_demo_summary_has_headers_fits_80_columns_and_counts_retries(
    tmp_path: Path, clean_settings: None
) -> None:
    # Given a fresh home and a receiver that turns away every delivery's first try
    env = _env(tmp_path)
    # When the demo runs as a person runs it
    result = subprocess.run(
        [sys.executable, "-m", "delivery", "demo", "--count", "8", "--fail-every", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # Then the table has real headers and fits 80 columns
    assert re.search(r"┃ figure\s*┃ delivery log ┃ receiver ┃", out), out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    # And the retries the log recorded are the receiver's 503s, and what the log itself says
    assert _figures(out, "delivered") == (8, 8)
    assert _figures(out, "retries (503, then sent again)") == (8, 8)
    assert _figures(out, "attempts (requests)") == (16, 16)
    assert _retries_in_log(tmp_path / ".delivery") == 8
    assert "worker start-up included" in out
    assert "not a throughput figure" in out


def test_demo_through_cli_runner_agrees_with_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_settings: None
) -> None:
    for key in list(os.environ):
        if key.startswith("DELIVERY_"):
            monkeypatch.delenv(key)
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    # The default receiver turns away one first try in twenty: however many that was, the
    # summary's retries agree with the receiver's count and with the log.
    result = CliRunner().invoke(app, ["demo", "--count", "30"])
    assert result.exit_code == 0, result.output
    log_retries, turned_away = _figures(result.output, "retries (503, then sent again)")
    assert log_retries == turned_away == _retries_in_log(tmp_path / ".delivery")
    log_attempts, requests = _figures(result.output, "attempts (requests)")
    assert log_attempts == requests == 30 + log_retries
