"""``delivery subscriptions add … --category --per-recipient --digest`` and ``delivery
notify --category``: stored as given, or refused with exit code 2 naming the option."""

import json
import re

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from delivery.cli import app, channels, deliveries, events  # noqa: F401 - registers the commands
from delivery.engine.assembly import assemble
from schemas import CATEGORY_PATTERN, Settings

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def _settings(settings: Settings) -> None:
    from delivery.cli import context

    context.registry.cache_clear()
    assemble(settings).channels.add("dev", "console", {})


def test_subscriptions_add_stores_category_throttle_and_digest() -> None:
    code, out, err = run(
        "subscriptions", "add", "order.shipped", "dev", "ops",
        "--category", "orders", "--per-recipient", "3/h", "--digest", "1h",
    )  # fmt: skip
    assert code == 0, err
    code, listed, _ = run("subscriptions", "list", "--json")
    [subscription] = json.loads(listed)["subscriptions"]
    assert subscription["id"] == out.strip()
    assert subscription["category"] == "orders"
    assert subscription["per_recipient"] == "3/h"
    assert subscription["digest"] == "1h"


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--category", "Marketing", "short lower-case name"),
        ("--category", "x" * 33, "short lower-case name"),
        ("--per-recipient", "3/week", "e.g. 3/h"),
        ("--per-recipient", "0/h", "e.g. 3/h"),
        ("--digest", "1w", "e.g. 15m, 1h or 1d"),
        ("--digest", "10s", "outside 60 seconds to 7 days"),
    ],
)
def test_a_bad_option_is_a_usage_error_naming_it(option: str, value: str, problem: str) -> None:
    code, _, err = run("subscriptions", "add", "order.shipped", "dev", "ops", option, value)
    assert code == 2 and option in err and problem in " ".join(err.split())
    assert "Traceback" not in err
    assert json.loads(run("subscriptions", "list", "--json")[1])["subscriptions"] == []


def test_notify_refuses_a_bad_category_before_publishing() -> None:
    code, _, err = run("notify", "order.shipped", "--category", "Security")
    assert code == 2 and "--category" in err


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=40).filter(lambda t: not t.startswith("-")))
def test_any_category_text_is_stored_or_refused_cleanly(text: str) -> None:
    code, _, err = run("subscriptions", "add", "order.shipped", "dev", "ops", "--category", text)
    assert "Traceback" not in err
    assert code == (0 if re.fullmatch(CATEGORY_PATTERN, text) else 2), err
