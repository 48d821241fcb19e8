"""Email, Slack and SMS through a real worker process, against local stand-ins.

producer → redis-server → ``delivery worker`` → aiosmtpd / local HTTP server, and the
delivery log records each attempt with what the provider said (queue id, ts, SID).
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

import delivery
from schemas import Payload
from tests.delivery.dispatchers.conftest import (
    SmtpServer,
    accept_user,
    make_certificate,
    start_smtp,
)
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

TWILIO_SID = "AC" + "1" * 32
MESSAGES = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"


def cli(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "delivery", *args],
        env=stack.env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def attempts(stack: Stack, delivery_id: str) -> list[tuple[str, int | None, str | None]]:
    record = stack.log.get(delivery_id)
    assert record is not None
    return [(a.outcome, a.status_code, a.provider_ref) for a in record.attempts]


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[SmtpServer, Path]]:
    """An SMTP server that insists on STARTTLS and AUTH, and the CA file that trusts it."""
    certificate = make_certificate(tmp_path)
    server = start_smtp(
        tls_context=certificate.server_context(),
        require_starttls=True,
        auth_required=True,
        authenticator=accept_user("mailer", "smtp-s3cret"),
    )
    yield server, certificate.cert_file
    server.stop()


def test_email_through_a_worker(redis_stack: Stack, smtp: tuple[SmtpServer, Path]) -> None:
    server, ca_file = smtp
    # Given a channel added on the command line (its password masked when listed)
    cli(
        redis_stack,
        "channels", "add", "mail", "email",
        "--set", "host=127.0.0.1", "--set", f"port={server.port}",
        "--set", "tls=starttls", "--set", f"ca_file={ca_file}",
        "--set", "username=mailer", "--set", "password=smtp-s3cret",
        "--set", "from_address=alerts@example.com",
        "--retry-schedule", "0,0.3,0.3",
    )  # fmt: skip
    assert "smtp-s3cret" not in cli(redis_stack, "channels", "list", "--json")
    redis_stack.worker()
    payload = Payload(message="Disk is full", subject="Disk", html_message="<p>Disk is full</p>")
    # When a message goes through, then one is refused for a while, then one for good
    ok = delivery.send("mail", "ops@example.com", payload).id
    redis_stack.wait_until([ok], {"delivered"})
    server.mailbox.data_replies.append("451 4.3.0 Try again later")
    later = delivery.send("mail", "ops@example.com", payload).id
    redis_stack.wait_until([later], {"delivered"})
    server.mailbox.rcpt_replies.append("550 5.1.1 No such user")
    refused = delivery.send("mail", "nobody@example.com", payload).id
    redis_stack.wait_until([refused], {"failed"})
    # Then the log has the server's queue ids and reply codes
    assert attempts(redis_stack, ok) == [("delivered", 250, "Q00001")]
    assert attempts(redis_stack, later) == [("retry", 451, None), ("delivered", 250, "Q00002")]
    assert attempts(redis_stack, refused) == [("failed", 550, None)]
    record = redis_stack.log.get(refused)
    assert record is not None and record.last_error is not None
    assert "RecipientRejected" in record.last_error and "No such user" in record.last_error
    # and the messages that arrived were sent over TLS, logged in, with both parts
    assert [m.rcpt_tos for m in server.mailbox.received] == [["ops@example.com"]] * 2
    assert all(m.encrypted and m.login == b"mailer" for m in server.mailbox.received)
    assert server.mailbox.received[0].message.get_content_type() == "multipart/alternative"


def test_slack_through_a_worker(redis_stack: Stack, httpserver: HTTPServer) -> None:
    busy_seen: list[bool] = []

    def slack_api(request: Request) -> Response:
        body = request.get_json()
        if body["channel"] == "#gone":
            answer, status, headers = {"ok": False, "error": "channel_not_found"}, 200, {}
        elif body["channel"] == "#busy" and not busy_seen:
            busy_seen.append(True)
            answer, status, headers = (
                {"ok": False, "error": "ratelimited"},
                429,
                {"Retry-After": "1"},
            )
        else:
            answer, status, headers = (
                {"ok": True, "channel": "C1", "ts": "1712345678.000100"},
                200,
                {},
            )
        return Response(json.dumps(answer), status, headers, content_type="application/json")

    httpserver.expect_request("/api/chat.postMessage", method="POST").respond_with_handler(
        slack_api
    )
    redis_stack.channels.add(
        "team",
        "slack",
        {"bot_token": "xoxb-integration", "api_base_url": httpserver.url_for("/api/")},
        retry_schedule=(0, 0.3, 0.3),
    )
    redis_stack.worker()
    ok, busy, gone = (
        delivery.send("team", channel, Payload(message="deploy done", subject="Deploy")).id
        for channel in ("#ops", "#busy", "#gone")
    )
    redis_stack.wait_until([ok, busy, gone], {"delivered", "failed"})
    assert attempts(redis_stack, ok) == [("delivered", 200, "1712345678.000100")]
    assert attempts(redis_stack, busy) == [
        ("retry", 429, None),
        ("delivered", 200, "1712345678.000100"),
    ]
    busy_record = redis_stack.log.get(busy)
    assert busy_record is not None
    first, second = busy_record.attempts
    assert (second.started_at - first.started_at).total_seconds() >= 0.9  # Retry-After: 1
    assert attempts(redis_stack, gone) == [("failed", 200, None)]
    texts = {json.loads(r.get_data())["text"] for r, _ in httpserver.log}
    assert texts == {"*Deploy*\n\ndeploy done"}


def test_sms_through_a_worker(redis_stack: Stack, httpserver: HTTPServer) -> None:
    down_seen: list[bool] = []

    def twilio(request: Request) -> Response:
        to = request.form["To"]
        if to == "+14155552672":
            answer, status = {"code": 21211, "message": "Invalid 'To' number", "status": 400}, 400
        elif to == "+14155552673" and not down_seen:
            down_seen.append(True)
            return Response("", 503)
        else:
            segments = "2" if len(request.form["Body"]) > 160 else "1"
            answer = {"sid": f"SM{to[-4:]}", "status": "queued", "num_segments": segments}
            status = 201
        return Response(json.dumps(answer), status, content_type="application/json")

    httpserver.expect_request(MESSAGES, method="POST").respond_with_handler(twilio)
    redis_stack.channels.add(
        "texts",
        "sms",
        {
            "account_sid": TWILIO_SID,
            "auth_token": "twilio-integration",
            "from_number": "+14155550100",
            "default_region": "US",
            "api_base_url": httpserver.url_for("/"),
        },
        retry_schedule=(0, 0.3, 0.3),
    )
    redis_stack.worker()
    long, invalid, flaky = (
        delivery.send("texts", number, Payload(message="x" * 200)).id
        for number in ("(415) 555-2671", "+1 415 555 2672", "+14155552673")
    )
    redis_stack.wait_until([long, invalid, flaky], {"delivered", "failed"})
    assert attempts(redis_stack, long) == [("delivered", 201, "SM2671")]
    record = redis_stack.log.get(long)
    assert record is not None
    assert record.attempts[0].detail["segments"] == 2
    assert attempts(redis_stack, invalid) == [("failed", 400, None)]
    assert attempts(redis_stack, flaky) == [("retry", 503, None), ("delivered", 201, "SM2673")]
    assert {r.form["To"] for r, _ in httpserver.log} == {
        "+14155552671",
        "+14155552672",
        "+14155552673",
    }
