import json

import pytest
from typer.testing import CliRunner

from delivery.cli import admin, app, channels, deliveries  # noqa: F401 - registers the commands
from delivery.log import DeliveryLog
from schemas import Envelope, Payload, Settings
from tests.conftest import webhook_secret
from tests.support.recording import finish

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def _settings(settings: Settings) -> None:
    from delivery.cli import context

    context.registry.cache_clear()


def test_channels_add_validates_and_names_the_field() -> None:
    code, _, err = run(
        "channels", "add", "hooks", "webhook", "--set", f"secrett={webhook_secret()}"
    )
    assert code == 1
    assert "unknown field 'secrett'" in err and "allowed fields: secret, timeout, headers" in err
    code, _, err = run(
        "channels",
        "add",
        "hooks",
        "webhook",
        "--set",
        f"secret={webhook_secret()}",
        "--set",
        "timeout=-1",
    )
    assert code == 1 and "timeout: Input should be greater than 0" in err
    code, _, err = run("channels", "add", "hooks", "fax")
    assert code == 1 and "'fax'; known:" in err
    code, _, err = run("channels", "add", "hooks", "webhook", "--config", "{not json")
    assert code == 1 and "--config is not valid JSON" in err
    code, _, err = run("channels", "add", "hooks", "console", "--rate-limit", "lots")
    assert code == 1 and "rate limit" in err


def test_channels_add_list_remove_with_secrets_masked() -> None:
    secret = webhook_secret()
    code, out, _ = run(
        "channels",
        "add",
        "hooks",
        "webhook",
        "--set",
        f"secret={secret}",
        "--set",
        "timeout=5",
        "--retry-schedule",
        "0,5,300",
        "--rate-limit",
        "1/s",
    )
    assert code == 0, out
    code, out, _ = run("channels", "list", "--json")
    assert code == 0 and secret not in out
    [channel] = json.loads(out)["channels"]
    assert channel["config"] == {"secret": "********", "timeout": 5.0, "headers": {}}
    assert channel["retry_schedule"] == [0, 5, 300] and channel["rate_limit"] == "1/s"
    code, out, _ = run("channels", "list")
    assert code == 0 and "hooks" in out and secret not in out
    assert run("channels", "remove", "hooks")[0] == 0
    code, _, err = run("channels", "remove", "hooks")
    assert code == 1 and "no channel named 'hooks'" in err


def test_dispatchers_json_lists_slug_version_protocol_and_fields() -> None:
    code, out, _ = run("dispatchers", "--json")
    assert code == 0
    webhook = next(d for d in json.loads(out)["dispatchers"] if d["slug"] == "webhook")
    assert webhook["version"] and webhook["protocol"]["name"] == "webhook"
    assert {f["name"] for f in webhook["config_fields"]} == {"secret", "timeout", "headers"}


def test_status_and_log_read_the_log(settings: Settings) -> None:
    log = DeliveryLog.from_settings(settings)
    log.claim(
        Envelope(id="d1", channel="hooks", address="https://a", payload=Payload(message="m")),
        lease=60,
    )
    code, out, _ = run("status", "d1", "--json")
    assert code == 0 and json.loads(out)["status"] == "sending"
    code, _, err = run("status", "nope")
    assert code == 1 and "no delivery 'nope'" in err
    code, out, _ = run("log", "--json", "--status", "sending")
    assert [d["id"] for d in json.loads(out)["deliveries"]] == ["d1"]
    code, _, err = run("retry", "d1")
    assert code == 1 and "is sending, not failed" in err


def test_send_refuses_bad_input_before_enqueueing() -> None:
    code, _, err = run("send", "bad channel!", "https://a", "hello")
    assert code == 1 and "channel" in err


def test_keygen_and_schemas() -> None:
    code, out, _ = run("keygen", "--webhook")
    assert code == 0 and out.startswith("whsec_")
    code, out, _ = run("schemas")
    assert code == 0 and set(json.loads(out)) == {"Payload", "Message", "Envelope"}


def test_pause_resume_and_state_in_the_list() -> None:
    assert run("channels", "add", "dev", "console")[0] == 0
    assert run("channels", "pause", "dev")[0] == 0
    code, out, _ = run("channels", "list", "--json")
    assert json.loads(out)["channels"][0]["state"] == "paused"
    assert run("channels", "resume", "dev")[0] == 0
    code, out, _ = run("channels", "list", "--json")
    assert json.loads(out)["channels"][0]["state"] == "active"
    code, _, err = run("channels", "pause", "nope")
    assert code == 1 and "no channel named 'nope'" in err


def test_retry_sends_a_failed_delivery_again_keeping_its_attempts(settings: Settings) -> None:
    from kombu.connection import Connection

    log = DeliveryLog.from_settings(settings)
    envelope = Envelope(id="f1", channel="hooks", address="https://a", payload=Payload(message="m"))
    claim = log.claim(envelope, lease=60)
    from delivery.clock import utcnow
    from delivery.log import AttemptResult
    from delivery.log.tables import Outcome

    finish(
        log,
        claim,
        AttemptResult(Outcome.FAILED, utcnow(), 1.0, error="400"),
        dispatcher=None,
        worker=None,
    )
    code, out, _ = run("retry", "--channel", "hooks", "--yes")
    assert code == 0 and "1 delivery queued again" in out
    record = log.get("f1")
    assert record is not None and record.status == "queued" and len(record.attempts) == 1
    with Connection("memory://") as conn, conn.SimpleQueue("delivery") as queue:
        message = queue.get(timeout=1)
        assert message.decode()[0][0]["id"] == "f1"
        message.ack()
    code, _, err = run("retry", "f1")
    assert code == 1 and "f1 is queued, not failed" in err


def test_commands_refuse_an_out_of_date_log(settings: Settings, tmp_path, monkeypatch) -> None:
    from delivery.log.migrate import upgrade
    from schemas import get_settings

    stale = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(stale, "0001")
    monkeypatch.setenv("DELIVERY_DATABASE_URL", stale)
    get_settings.cache_clear()
    code, _, err = run("log")
    assert code == 1 and "out of date: run `delivery db upgrade`" in err
    assert run("db", "upgrade")[0] == 0
    assert run("log")[0] == 0
