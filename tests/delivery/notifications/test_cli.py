"""``delivery templates``, ``subscriptions``, ``notify`` and ``status EVENT_ID``."""

import json

import pytest
from typer.testing import CliRunner

from delivery.cli import app, channels, deliveries, events  # noqa: F401 - registers the commands
from delivery.engine.assembly import assemble
from delivery.notifications import Notifier
from delivery.producer.publisher import get_publisher
from schemas import Settings, get_settings
from schemas.events import Event

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def _settings(settings: Settings) -> None:
    from delivery.cli import context

    context.registry.cache_clear()
    assemble(settings).channels.add("dev", "console", {})


def test_templates_add_refuses_a_broken_one_naming_the_line() -> None:
    code, _, err = run("templates", "add", "t", "--text", "Hi\n{{ name }\n")
    assert code == 1 and "text: line 2" in err and "Traceback" not in err
    code, _, err = run("templates", "add", "t", "--text", "{{ ''.__class__ }}")
    assert code == 1 and "not allowed" in err
    code, out, _ = run("templates", "add", "t", "--subject", "S {{ a }}", "--text", "T {{ a }}")
    assert code == 0 and "saved" in out
    code, out, _ = run("templates", "list", "--json")
    assert [t["name"] for t in json.loads(out)["templates"]] == ["t"]
    code, out, _ = run("templates", "show", "t", "--json")
    assert json.loads(out)["subject"] == "S {{ a }}"
    assert run("templates", "show", "nope")[0] == 1
    assert run("templates", "remove", "t")[0] == 0
    assert run("templates", "remove", "t")[0] == 1


def test_subscriptions_commands() -> None:
    code, out, err = run("subscriptions", "add", "order.shipped", "dev", "{{ email }}")
    assert code == 0, err
    subscription_id = out.strip()
    code, _, err = run("subscriptions", "add", "order.shipped", "nope", "x")
    assert code == 1 and "no channel named 'nope'" in err
    code, _, err = run("subscriptions", "add", "order.shipped", "dev", "x", "--filter", "a >")
    assert code == 1 and "filter:" in err
    assert run("subscriptions", "pause", subscription_id)[0] == 0
    code, out, _ = run("subscriptions", "list", "--json", "--event", "order.shipped")
    [listed] = json.loads(out)["subscriptions"]
    assert listed["id"] == subscription_id and listed["paused"] is True
    assert run("subscriptions", "resume", subscription_id)[0] == 0
    assert run("subscriptions", "remove", subscription_id)[0] == 0
    assert run("subscriptions", "remove", subscription_id)[0] == 1


@pytest.mark.parametrize(
    ("context", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"total": NaN}', "NaN is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"a": "\\u0000"}', "NUL"),
    ],
)
def test_notify_refuses_bad_context(context: str, problem: str) -> None:
    code, _, err = run("notify", "order.shipped", "--context", context)
    assert code == 1 and problem in err and "Traceback" not in err


def test_notify_prints_the_event_id_and_status_shows_the_event() -> None:
    code, out, err = run("subscriptions", "add", "order.shipped", "dev", "{{ who }}")
    assert code == 0, err
    code, out, err = run(
        "notify", "order.shipped", "--context", '{"who": "ann"}', "--idempotency-key", "k"
    )
    assert code == 0, err
    event_id = out.strip()
    # the worker's half, run here: fan the published event out
    Notifier(assemble(get_settings()).log).fan_out(
        Event(id=event_id, name="order.shipped", context={"who": "ann"}), get_publisher()
    )
    code, out, _ = run("status", event_id, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["id"] == event_id and doc["event"] == "order.shipped"
    [made] = doc["deliveries"]
    assert (made["channel"], made["address"], made["outcome"]) == ("dev", "ann", "queued")
    code, out, _ = run("status", event_id)
    assert code == 0 and "order.shipped" in out and made["delivery_id"][:8] in out
    code, _, err = run("status", "no-such-id")
    assert code == 1 and "no delivery" in err


def test_channels_add_takes_a_fallback() -> None:
    code, _, err = run("channels", "add", "texts", "console", "--fallback", "nope")
    assert code == 1 and "no channel named 'nope' to fall back to" in err
    assert run("channels", "add", "texts", "console", "--fallback", "dev")[0] == 0
    code, out, _ = run("channels", "list", "--json")
    fallbacks = {c["name"]: c["fallback"] for c in json.loads(out)["channels"]}
    assert fallbacks == {"dev": None, "texts": "dev"}
