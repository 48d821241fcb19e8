"""``delivery preferences set`` and ``show`` through typer's runner, on a migrated log."""

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from delivery.cli import app, preferences  # noqa: F401 - registers the commands
from delivery.log import DeliveryLog
from delivery.recipients import Preferences
from schemas import Settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _settings(settings: Settings) -> None:
    from delivery.cli import context

    context.registry.cache_clear()


def run(*args: str) -> tuple[int, str, str]:
    """``delivery preferences ARGS…``."""
    result = runner.invoke(app, ["preferences", *args])
    return result.exit_code, result.stdout, result.stderr


def show(address: str) -> dict[str, Any]:
    code, stdout, stderr = run("show", address, "--json")
    assert code == 0, stderr
    doc: dict[str, Any] = json.loads(stdout)
    return doc


def test_set_rules_and_quiet_hours_then_show(settings: Settings) -> None:
    # Given a recipient who wants no marketing, no SMS at all, and quiet nights
    assert run("set", "Ann@Example.com", "--category", "marketing", "--off")[0] == 0
    assert run("set", "ann@example.com", "--channel", "sms", "--off")[0] == 0
    code, stdout, stderr = run(
        "set",
        "ann@example.com",
        "--timezone",
        "Europe/London",
        "--quiet",
        "22:00-07:00",
    )
    assert code == 0, stderr
    assert "22:00-07:00" in stdout
    # Then show says so, under the normalised address, most specific rule first
    assert show("ANN@example.com") == {
        "address": "ann@example.com",
        "timezone": "Europe/London",
        "quiet": "22:00-07:00",
        "rules": [
            {"channel": None, "category": "marketing", "enabled": False},
            {"channel": "sms", "category": None, "enabled": False},
        ],
    }
    # and the worker's look-up agrees
    found = Preferences(DeliveryLog.from_settings(settings).engine).lookup(["ann@example.com"])
    assert found["ann@example.com"].refuses(channel="sms", category="receipts")
    # A channel and category together override the category alone
    assert (
        run(
            "set",
            "ann@example.com",
            "--channel",
            "email",
            "--category",
            "marketing",
            "--on",
        )[0]
        == 0
    )
    ann = Preferences(DeliveryLog.from_settings(settings).engine).show("ann@example.com")
    assert ann.refuses(channel="email", category="marketing") is None
    assert ann.refuses(channel="push", category="marketing")


def test_quiet_none_clears_the_quiet_hours_and_keeps_the_rest() -> None:
    run("set", "ann@example.com", "--timezone", "Asia/Tokyo", "--quiet", "23:00-06:00")
    run("set", "ann@example.com", "--category", "news", "--off")
    assert run("set", "ann@example.com", "--quiet", "none")[0] == 0
    doc = show("ann@example.com")
    assert doc["quiet"] is None and doc["timezone"] == "Asia/Tokyo" and len(doc["rules"]) == 1


def test_show_an_address_without_preferences() -> None:
    code, stdout, _ = run("show", "+447700900123")
    assert code == 0 and "everything on" in stdout


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--category", "marketing"], "--on or --off"),
        (["--category", "marketing", "--on", "--off"], "not both"),
        ([], "nothing to set"),
        (["--timezone", "Mars/Olympus"], "time zone"),
        (["--quiet", "10pm-7am"], "HH:MM-HH:MM"),
        (["--category", "Marketing", "--off"], "category"),
        (["--channel", "no spaces", "--off"], "channel"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args: list[str], complaint: str) -> None:
    code, _, stderr = run("set", "ann@example.com", *args)
    assert code == 1
    assert complaint in stderr
    assert "Traceback" not in stderr
    assert show("ann@example.com")["rules"] == []


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    address=st.text(min_size=1, max_size=30).filter(lambda a: not a.startswith("-")),
    zone=st.text(max_size=30).filter(lambda z: not z.startswith("-")),
    quiet=st.text(max_size=15).filter(lambda q: not q.startswith("-")),
)
def test_any_input_is_saved_or_refused_with_a_message(address: str, zone: str, quiet: str) -> None:
    code, _, stderr = run("set", address, "--timezone", zone, "--quiet", quiet)
    assert code in (0, 1), stderr
    if code == 1:
        assert stderr.startswith("error:") and "unexpected" not in stderr
