"""The delivery commands refuse what can never succeed, show ids that can be copied, and
ask before bulk work; the errors behind them say what really failed."""

import json
import re
import socket
import uuid
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from rich.console import Console
from typer.testing import CliRunner

from delivery.cli import app, channels, deliveries  # noqa: F401 - registers the commands
from delivery.dispatchers.base import SendContext
from delivery.dispatchers.http import raise_for_status, where
from delivery.dispatchers.webhook import WebhookConfig, WebhookDispatcher
from delivery.engine.suppression import SuppressionList
from delivery.errors import PublishError, RetryableError
from delivery.log import DeliveryLog
from delivery.producer.publisher import Publisher
from delivery.wording import plural
from schemas import Payload, Settings
from tests.conftest import webhook_secret
from tests.support.environment import LOCAL
from tests.support.memory_broker import take_waiting
from tests.support.recording import finish

runner = CliRunner()

#: Two ids that share their first 10 characters, and one that shares nothing.
TWIN_A = "aaaaaaaa-a1aa-4aaa-8aaa-000000000001"
TWIN_B = "aaaaaaaa-a2aa-4aaa-8aaa-000000000002"
LONER = "bbbbbbbb-0000-4000-8000-000000000003"


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def _drain() -> list[dict[str, Any]]:
    """The delivery envelopes waiting on the in-memory broker (each task's first)."""
    found: list[dict[str, Any]] = []
    for message in take_waiting():
        first = message.args[0]
        found += first if isinstance(first, list) else [first]
    return found


@pytest.fixture(autouse=True)
def _settings(settings: Settings) -> None:
    from delivery.cli import context

    context.registry.cache_clear()
    _drain()


@pytest.fixture
def log(settings: Settings) -> DeliveryLog:
    return DeliveryLog.from_settings(settings)


@pytest.fixture
def hooks() -> None:
    assert run("channels", "add", "hooks", "webhook", "--set", f"secret={webhook_secret()}")[0] == 0


def _failed(log: DeliveryLog, *ids: str, channel: str = "hooks") -> None:
    """Failed deliveries with a payload, as a worker leaves them (so retry can reopen)."""
    from delivery.clock import utcnow
    from delivery.log import AttemptResult
    from delivery.log.tables import Outcome
    from schemas import Envelope

    for i in ids:
        envelope = Envelope(
            id=i, channel=channel, address="https://a.example/h", payload=Payload(message="m")
        )
        claim = log.claim(envelope, lease=60)
        finish(
            log,
            claim,
            AttemptResult(Outcome.FAILED, utcnow(), 1.0, error="400 Bad Request"),
            dispatcher="webhook",
            worker=None,
        )


# 1. send refuses what a worker could only fail


@pytest.mark.parametrize(
    ("channel", "address", "message", "says"),
    [
        ("nope", "https://a.example/h", "hi", "no channel named 'nope'"),
        ("hooks", "not-a-url", "hi", "'not-a-url' is not an http(s) URL"),
        ("hooks", "ftp://a.example/h", "hi", "'ftp://a.example/h' is not an http(s) URL"),
        ("hooks", "https://a.example/h", "", "the payload has no text to send"),
        ("hooks", "https://a.example/h", "   ", "the payload has no text to send"),
    ],
)
def test_send_refuses_what_can_never_succeed(
    hooks: None, channel: str, address: str, message: str, says: str
) -> None:
    code, out, err = run("send", channel, address, message)
    assert code == 1 and out == ""
    assert says in err and "Traceback" not in err
    assert _drain() == []  # nothing enqueued


def test_send_refuses_a_removed_channel(hooks: None) -> None:
    assert run("channels", "remove", "hooks")[0] == 0
    code, _, err = run("send", "hooks", "https://a.example/h", "hi")
    assert code == 1 and "no channel named 'hooks'" in err
    assert _drain() == []


def test_send_refuses_a_suppressed_address(
    hooks: None, settings: Settings, log: DeliveryLog
) -> None:
    SuppressionList(log.engine).add("hooks", "https://a.example/h", "manual")
    code, _, err = run("send", "hooks", "https://a.example/h", "hi")
    assert code == 1 and "suppression list" in err
    assert _drain() == []


def test_send_of_a_good_delivery_enqueues_it_and_notes_a_paused_channel(hooks: None) -> None:
    code, out, _ = run("send", "hooks", "https://a.example/h", "hi")
    assert code == 0
    [envelope] = _drain()
    assert envelope["id"] == out.strip() and envelope["address"] == "https://a.example/h"
    assert run("channels", "pause", "hooks")[0] == 0
    code, out, err = run("send", "hooks", "https://a.example/h", "hi")
    assert code == 0 and "paused" in err and len(_drain()) == 1


# 2. ids that can be copied, and prefixes that find them


def test_log_at_80_columns_shows_ids_status_finds_again(
    hooks: None, log: DeliveryLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliveries, "out", at_a_terminal(width=80))
    _failed(log, TWIN_A, TWIN_B, LONER)
    code, out, err = run("log")
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    # The first column: the shortest start no other delivery shares, whole on its line.
    shown = [m for m in re.findall(r"^│ (\S+) +│", out, flags=re.M) if m != "id"]
    assert sorted(shown) == [TWIN_A[:12], TWIN_B[:12], LONER[:8]]
    assert LONER not in out
    for short in shown:
        code, doc, err = run("status", short, "--json")
        assert code == 0, err
        assert json.loads(doc)["id"].startswith(short)


def test_short_ids_grow_until_unique(log: DeliveryLog) -> None:
    close = ["cccccccc-0000-4000-8000-000000000001", "cccccccc-0000-4000-8000-000000000002"]
    _failed(log, TWIN_A, TWIN_B, LONER, *close)
    shown = log.short_ids([TWIN_A, TWIN_B, LONER, *close])
    assert shown[LONER] == LONER[:8]
    assert (shown[TWIN_A], shown[TWIN_B]) == (TWIN_A[:12], TWIN_B[:12])
    # Ids that differ only in their last character are shown whole
    assert [shown[i] for i in close] == close
    assert log.short_ids(["d1"]) == {"d1": "d1"}


def test_log_on_a_wide_terminal_shows_whole_ids(
    hooks: None, log: DeliveryLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliveries, "out", at_a_terminal(width=200))
    _failed(log, LONER)
    code, out, _ = run("log")
    assert code == 0 and LONER in out
    # and, having the room, each delivery's last error
    assert re.search(rf"^│ {LONER} .*│ 400 Bad Request +│$", out, flags=re.M), out


def at_a_terminal(width: int | None = None) -> Console:
    """The console ``delivery`` prints to, as at a terminal (without colours, so lines are
    as long as they look); ``width`` None: the terminal's, from ``COLUMNS``."""
    return Console(width=width, force_terminal=True, color_system=None)


def _failed_at_length(log: DeliveryLog, *ids: str) -> None:
    """Failed deliveries whose channel, address and error are far too long for 80 columns."""
    from delivery.clock import utcnow
    from delivery.log import AttemptResult
    from delivery.log.tables import Outcome
    from schemas import Envelope

    for i in ids:
        envelope = Envelope(
            id=i,
            channel="transactional-email-for-the-accounts-team",
            address="https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX",
            payload=Payload(message="m"),
        )
        claim = log.claim(envelope, lease=60)
        error = "PermanentError: 404 Not Found from hooks.slack.com\n(and a second line)"
        finish(
            log,
            claim,
            AttemptResult(Outcome.FAILED, utcnow(), 1.0, error=error),
            dispatcher="webhook",
            worker=None,
        )


def test_an_80_column_log_is_one_line_per_delivery(
    log: DeliveryLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a terminal 80 columns wide (rich reads COLUMNS) and deliveries with long fields
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(deliveries, "out", at_a_terminal())
    _failed_at_length(log, TWIN_A, TWIN_B, LONER)
    # When the log is shown
    code, out, err = run("log")
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    # Then each delivery is one line: its id, short and whole, then its status, the rest cut
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 3 and len(lines) == 3 + 4  # and the rules and the header, one line
    cells = [[cell.strip() for cell in row.strip("│").split("│")] for row in rows]
    assert sorted(c[0] for c in cells) == [TWIN_A[:12], TWIN_B[:12], LONER[:8]]
    assert {c[1] for c in cells} == {"failed"} and {c[4] for c in cells} == {"1"}
    assert all(c[2].endswith("…") and c[3].startswith("https://") for c in cells)
    # The address is masked: the token in its path is never shown
    assert "XXXX" not in out and "T0000" not in out


def test_a_piped_log_is_tab_separated_rows_with_whole_ids(
    log: DeliveryLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given stdout that is not a terminal (CliRunner captures it), however wide COLUMNS says
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(deliveries, "out", Console())
    _failed_at_length(log, TWIN_A, LONER)
    code, out, err = run("log")
    assert code == 0, err
    # Then a header line, and one line per delivery: no table, nothing cut short
    header, *rows = out.splitlines()
    assert header.split("\t") == [
        "id",
        "status",
        "channel",
        "address",
        "attempts",
        "last change",
        "last error",
    ]
    assert "│" not in out and "…" not in out
    fields = [row.split("\t") for row in rows]
    assert all(len(f) == 7 for f in fields)
    assert sorted(f[0] for f in fields) == sorted([TWIN_A, LONER])  # `cut -f1` gives ids
    assert {f[1] for f in fields} == {"failed"}
    assert {f[2] for f in fields} == {"transactional-email-for-the-accounts-team"}
    assert {f[3] for f in fields} == {"https://hooks.slack.com/***"}
    assert {f[4] for f in fields} == {"1"}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", f[5]) for f in fields)
    # An error of several lines is one field of one line
    assert {f[6] for f in fields} == {
        "PermanentError: 404 Not Found from hooks.slack.com (and a second line)"
    }
    # Every line's ids work in `status`
    for f in fields:
        assert run("status", f[0], "--json")[0] == 0


def test_status_retry_and_cancel_take_a_unique_prefix(hooks: None, log: DeliveryLog) -> None:
    _failed(log, TWIN_A, TWIN_B, LONER)
    code, out, _ = run("status", LONER[:8], "--json")
    assert code == 0 and json.loads(out)["id"] == LONER
    code, out, _ = run("retry", LONER[:6])
    assert code == 0 and "1 delivery queued again" in out
    assert [e["id"] for e in _drain()] == [LONER]
    # Now queued: cancelled by its prefix
    code, out, _ = run("cancel", LONER[:10])
    assert code == 0 and f"{LONER} is cancelled" in out
    record = log.get(LONER)
    assert record is not None and record.status == "cancelled"


def test_an_ambiguous_prefix_lists_candidates(hooks: None, log: DeliveryLog) -> None:
    _failed(log, TWIN_A, TWIN_B, LONER)
    for command in ("status", "retry", "cancel"):
        code, _, err = run(command, "aaaaaaaa")
        assert code == 1, command
        assert "several delivery ids" in err and TWIN_A in err and TWIN_B in err
    assert _drain() == []
    assert {log.get(i).status for i in (TWIN_A, TWIN_B)} == {"failed"}  # type: ignore[union-attr]


def test_a_too_short_prefix_is_refused(hooks: None, log: DeliveryLog) -> None:
    _failed(log, LONER)
    for command in ("status", "retry", "cancel"):
        code, _, err = run(command, "bbb")
        assert code == 1 and "at least 6 characters" in err, command
    assert log.get(LONER).status == "failed"  # type: ignore[union-attr]


def test_cancel_of_an_id_the_log_does_not_know(log: DeliveryLog) -> None:
    # Not a whole id: refused, rather than "cancelled" and forgotten
    code, _, err = run("cancel", "no-such-delivery")
    assert code == 1 and "give its whole id" in err
    assert log.get("no-such-delivery") is None
    # A whole id still in the broker: recorded as cancelled for the worker
    pending = str(uuid.uuid4())
    code, out, _ = run("cancel", pending)
    assert code == 0 and "cancelled" in out
    assert log.get(pending).status == "cancelled"  # type: ignore[union-attr]


# 3. statuses are checked


def test_log_and_retry_refuse_an_unknown_status() -> None:
    for args in (["log", "--status", "bogus"], ["retry", "--all", "--status", "bogus"]):
        code, _, err = run(*args)
        assert code == 2, args
        assert "'bogus' is not one of" in err and "'failed'" in err and "'cancelled'" in err


def test_log_takes_a_known_status_and_says_when_nothing_matches(
    hooks: None, log: DeliveryLog
) -> None:
    code, out, _ = run("log", "--status", "delivered")
    assert code == 0 and "no deliveries match" in out
    _failed(log, LONER)
    code, out, _ = run("log", "--status", "FAILED", "--json")
    assert code == 0 and [d["id"] for d in json.loads(out)["deliveries"]] == [LONER]


def test_retry_refuses_a_status_other_than_failed() -> None:
    code, _, err = run("retry", "--all", "--status", "delivered")
    assert code == 1 and "only failed deliveries can be sent again, not delivered ones" in err


# 4. channel options


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--retry-schedule", "", "retry schedule is empty"),
        ("--retry-schedule", " ", "retry schedule is empty"),
        ("--retry-schedule", "0,nan", "retry schedule delays must be numbers"),
        ("--retry-schedule", "0,inf", "retry schedule delays must be numbers"),
        ("--retry-schedule", "0,-5", "retry schedule delays must be numbers"),
        ("--retry-schedule", "five", "must be seconds separated by commas"),
        ("--rate-limit", "", "rate limit '' must be a number above 0"),
        ("--rate-limit", "0/s", "rate limit '0/s' must be a number above 0"),
        ("--rate-limit", "-1/s", "rate limit '-1/s' must be a number above 0"),
        ("--rate-limit", "nan/s", "must be a number above 0"),
        ("--rate-limit", "inf/m", "must be a number above 0"),
        ("--rate-limit", "1/day", "e.g. 1/s, 60/m or 500/h"),
        ("--fallback", "", "--fallback needs a channel name"),
    ],
)
def test_channels_add_refuses_empty_and_odd_values(option: str, value: str, says: str) -> None:
    code, _, err = run("channels", "add", "dev", "console", option, value)
    assert code == 1 and says in " ".join(err.split())
    assert json.loads(run("channels", "list", "--json")[1])["channels"] == []


def test_channels_add_keeps_a_good_rate_limit_without_spaces() -> None:
    assert run("channels", "add", "dev", "console", "--rate-limit", " 2/s ")[0] == 0
    [channel] = json.loads(run("channels", "list", "--json")[1])["channels"]
    assert channel["rate_limit"] == "2/s"


# 5. bulk retry asks first


def test_a_bare_retry_asks_for_a_filter(hooks: None, log: DeliveryLog) -> None:
    _failed(log, LONER)
    code, _, err = run("retry")
    assert code == 1 and "--all" in err and "--channel" in err
    assert log.get(LONER).status == "failed"  # type: ignore[union-attr]


def test_bulk_retry_without_a_terminal_needs_yes(hooks: None, log: DeliveryLog) -> None:
    _failed(log, TWIN_A, LONER)
    code, _, err = run("retry", "--all")
    assert code == 1 and "2 failed deliveries" in err and "--yes" in err
    assert _drain() == []
    code, out, _ = run("retry", "--channel", "hooks", "--yes")
    assert code == 0 and "2 deliveries queued again" in out
    assert sorted(e["id"] for e in _drain()) == [TWIN_A, LONER]
    code, out, _ = run("retry", "--all", "--yes")
    assert code == 0 and "no failed deliveries match" in out


def test_bulk_retry_at_a_terminal_asks_showing_how_many(
    hooks: None, log: DeliveryLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliveries, "_interactive", lambda: True)
    _failed(log, LONER)
    code, out, err = run("retry", "--all", input="n\n")
    assert code == 1 and "Send 1 failed delivery again?" in out and "nothing was sent" in err
    assert log.get(LONER).status == "failed"  # type: ignore[union-attr]
    code, out, _ = run("retry", "--all", input="y\n")
    assert code == 0 and "1 delivery queued again" in out
    assert [e["id"] for e in _drain()] == [LONER]


def test_bulk_retry_says_when_more_match_than_the_limit(
    hooks: None, log: DeliveryLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliveries, "_interactive", lambda: True)
    _failed(log, TWIN_A, TWIN_B, LONER)
    code, out, _ = run("retry", "--all", "--limit", "2", input="y\n")
    assert code == 0 and "Send 2 failed deliveries again (more match" in out
    assert "2 deliveries queued again" in out


def test_retry_of_one_id_with_bulk_filters_is_refused(hooks: None, log: DeliveryLog) -> None:
    _failed(log, LONER)
    code, _, err = run("retry", LONER, "--all")
    assert code == 1 and "not both" in err


# 6. plurals


def test_plural() -> None:
    assert plural(1, "delivery", "deliveries") == "1 delivery"
    assert plural(0, "delivery", "deliveries") == "0 deliveries"
    assert plural(2, "channel") == "2 channels"


# 7. a webhook's error names its host, never its secret parts


def test_where_names_host_and_port_only() -> None:
    assert where("https://hooks.example.com/services/T/B/secret?token=s3cr3t") == (
        "hooks.example.com"
    )
    assert where("https://user:pw@hooks.example.com:8443/x?y=1") == "hooks.example.com:8443"
    assert where("http://hooks.example.com:80/x") == "hooks.example.com"
    assert where("http://[::1]:9000/x") == "[::1]:9000"
    assert where("/hook?token=s3cr3t") == "the server"
    assert where("http://host:notaport/") == "the server"


def test_webhook_503_names_the_host_not_the_query(
    httpserver: HTTPServer, settings: Settings
) -> None:
    httpserver.expect_request("/hook").respond_with_data("", status=503)
    dispatcher = WebhookDispatcher(WebhookConfig(secret=webhook_secret()), environment=LOCAL)
    context = SendContext(delivery_id=str(uuid.uuid4()), attempt=1, channel="hooks")
    url = httpserver.url_for("/hook") + "?token=s3cr3t-token"
    with pytest.raises(RetryableError) as caught:
        dispatcher.send(url, Payload(message="m"), context=context)
    message = str(caught.value)
    # werkzeug spells the reason in capitals
    assert message.lower() == f"503 service unavailable from {httpserver.host}:{httpserver.port}"
    assert "None" not in message and "s3cr3t" not in message and "/hook" not in message


def test_raise_for_status_never_quotes_credentials() -> None:
    with pytest.raises(RetryableError) as caught:
        raise_for_status(
            502,
            reason="Bad Gateway",
            headers={},
            url="https://u:pw@h.example/x?k=v",
            dispatcher="x",
        )
    assert str(caught.value) == "502 Bad Gateway from h.example"


# 8. PublishError says what really failed


def _publisher(settings: Settings, broker_url: str, timeout: float = 1) -> Publisher:
    return Publisher(
        settings.model_copy(update={"broker_url": broker_url, "publish_timeout": timeout})
    )


def _envelope() -> Any:
    from schemas import Envelope

    return Envelope(
        id=str(uuid.uuid4()), channel="hooks", address="https://a", payload=Payload(message="m")
    )


def test_a_library_bug_is_named_at_once_not_blamed_on_the_network(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "redis://:hunter2secret@127.0.0.1:1/0"
    publisher = _publisher(settings, url, timeout=30)
    calls = []

    def broken(tasks: Any) -> None:
        calls.append(tasks)
        raise AttributeError(f"'NoneType' object has no attribute 'pipeline' ({url})")

    monkeypatch.setattr(publisher, "_publish_tasks", broken)
    with pytest.raises(PublishError) as caught:
        publisher.publish_envelopes([(_envelope(), None)])
    message = str(caught.value)
    assert len(calls) == 1  # not retried for 30 s: retrying cannot help
    assert "AttributeError: 'NoneType' object has no attribute 'pipeline'" in message
    assert "unreachable" not in message and "within" not in message
    assert "hunter2secret" not in message and "redis://:**@127.0.0.1:1/0" in message


def test_a_serialisation_error_is_named(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu.exceptions import EncodeError

    publisher = _publisher(settings, "memory://")

    def refuse(tasks: Any) -> None:
        raise EncodeError("Object of type set is not JSON serializable")

    monkeypatch.setattr(publisher, "_publish_tasks", refuse)
    with pytest.raises(PublishError, match="EncodeError: Object of type set is not JSON"):
        publisher.publish_envelopes([(_envelope(), None)])


def test_a_full_disk_is_not_called_unreachable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = _publisher(settings, "memory://")

    def full(tasks: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publisher, "_publish_tasks", full)
    with pytest.raises(PublishError) as caught:
        publisher.publish_envelopes([(_envelope(), None)])
    assert "No space left on device" in str(caught.value)
    assert "unreachable" not in str(caught.value)


def test_a_refused_connection_is_called_unreachable_with_its_cause(settings: Settings) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    publisher = _publisher(settings, f"redis://:hunter2secret@127.0.0.1:{port}/0")
    with pytest.raises(PublishError) as caught:
        publisher.publish_envelopes([(_envelope(), None)])
    message = str(caught.value)
    # the cause, type and words: "OperationalError: Error 111 connecting to …"
    assert re.search(r"within 1s: it is unreachable \(\w+Error: .+\)$", message), message
    assert "hunter2secret" not in message
