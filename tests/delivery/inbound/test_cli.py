"""``delivery inbound``, ``delivery inbox`` and ``delivery suppressions``."""

import json

import pytest
from typer.testing import CliRunner

from delivery.cli import app, inbound  # noqa: F401 - registers the commands
from delivery.engine.assembly import assemble
from delivery.inbound import InboundMessage
from delivery.inbound.wiring import Inbound
from schemas import Settings

runner = CliRunner()
TOKEN = "cli-twilio-auth-token"


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def parts(settings: Settings) -> Inbound:
    from delivery.cli import context

    context.registry.cache_clear()
    return Inbound.from_assembly(assemble(settings))


def test_inbound_add_list_remove_with_secrets_masked(parts: Inbound) -> None:
    code, out, err = run(
        "inbound", "add", "tw", "twilio", "--set", f"auth_token={TOKEN}", "--set", "channel=sms"
    )
    assert code == 0, err
    assert "/inbound/tw" in out
    code, out, _ = run("inbound", "add", "gw", "http", "--set", "identity=phone", "--set",
                       "text=message", "--set", "required=campaign,shortcode")  # fmt: skip
    assert code == 0
    code, out, _ = run("inbound", "list", "--json")
    listed = {b["name"]: b for b in json.loads(out)["backends"]}
    assert listed["tw"]["config"]["auth_token"] == "********" and TOKEN not in out
    assert listed["gw"]["config"]["required"] == ["campaign", "shortcode"]
    assert listed["gw"]["path"] == "/inbound/gw"
    # the stored secret is encrypted, and decrypts for the route
    assert parts.backends.get("tw").config.auth_token.get_secret_value() == TOKEN  # type: ignore[attr-defined]
    code, _, err = run("inbound", "add", "tw", "twilio", "--set", f"auth_token={TOKEN}")
    assert code == 1 and "exists" in err
    assert run("inbound", "remove", "tw")[0] == 0
    code, _, err = run("inbound", "remove", "tw")
    assert code == 1 and "no inbound backend named 'tw'" in err


def test_inbound_add_names_what_to_fix(parts: Inbound) -> None:
    code, _, err = run("inbound", "add", "x", "fax")
    assert code == 1 and "'fax'; known: http, standard-webhooks, twilio" in err
    code, _, err = run("inbound", "add", "x", "twilio")
    assert code == 1 and "auth_token: required" in err
    code, _, err = run("inbound", "add", "x", "http", "--set", "model=no.such:Model")
    assert code == 1 and "model: Value error, no.such:Model does not import" in err
    code, _, err = run("inbound", "add", "x", "http", "--set", "idnetity=phone")
    assert code == 1 and "unknown field 'idnetity'" in err
    code, _, err = run("inbound", "add", "x", "standard-webhooks", "--set", "secret=%%%")
    assert code == 1 and "not a Standard Webhooks secret" in err and "%%%" not in err
    code, _, err = run("inbound", "add", "bad name", "http")
    assert code == 1 and "backend name" in err


def test_inbound_kinds(parts: Inbound) -> None:
    code, out, _ = run("inbound", "kinds", "--json")
    assert code == 0
    kinds = {k["kind"]: k for k in json.loads(out)["kinds"]}
    assert {"http", "twilio", "standard-webhooks"} <= set(kinds)
    assert kinds["twilio"]["version"]


def test_inbox_lists_messages_and_handling(parts: Inbound) -> None:
    from delivery.inbound.inbox import HandlingOutcome

    recorded = parts.inbox.record("gw", "http", InboundMessage("+1555", "ping", {"a": 1}, "p1"))
    parts.inbox.record("other", "http", InboundMessage("+1556", "hello"))
    parts.inbox.record_handling(recorded.id, "echo", HandlingOutcome.HANDLED, "replied PONG")
    code, out, _ = run("inbox", "--json", "--backend", "gw")
    assert code == 0
    [message] = json.loads(out)["messages"]
    assert (message["identity"], message["text"], message["extra"]) == ("+1555", "ping", {"a": 1})
    assert message["handling"][0] == {
        **message["handling"][0],
        "handler": "echo",
        "outcome": "handled",
        "result": "replied PONG",
        "attempts": 1,
    }
    code, out, _ = run("inbox")
    assert code == 0 and "replied PONG" in out and "+1556" in out


def test_suppressions_list_add_remove(parts: Inbound) -> None:
    parts.assembly.channels.add("sms", "console", {})
    parts.suppressions.add("sms", "+14155552671", "opt-out", detail="inbound x")
    code, out, _ = run("suppressions", "list", "--json", "--channel", "sms")
    [s] = json.loads(out)["suppressions"]
    assert (s["address"], s["reason"], s["detail"]) == ("+14155552671", "opt-out", "inbound x")
    parts.assembly.channels.add(
        "twilio-sms",
        "sms",
        {"account_sid": "AC" + "0" * 32, "auth_token": "t", "from_number": "+14155550100"},
    )
    assert run("suppressions", "add", "sms", "+14155550000")[0] == 0
    # written as the dispatcher writes it, so the check before each send matches
    assert run("suppressions", "add", "twilio-sms", "+1 (415) 555-0101")[0] == 0
    assert [s.address for s in parts.suppressions.list(channel="twilio-sms")] == ["+14155550101"]
    code, _, err = run("suppressions", "add", "twilio-sms", "not a number")
    assert code == 1 and "not a phone number" in err
    assert run("suppressions", "remove", "twilio-sms", "+1 415 555 0101")[0] == 0
    code, _, err = run("suppressions", "add", "nochannel", "+14155550000")
    assert code == 1 and "no channel named 'nochannel'" in err
    assert run("suppressions", "remove", "sms", "+14155552671")[0] == 0
    code, _, err = run("suppressions", "remove", "sms", "+14155552671")
    assert code == 1 and "is not suppressed" in err
    assert [x.address for x in parts.suppressions.list()] == ["+14155550000"]
