"""Secret fields never reach a log at any level, the libraries' own loggers included: every
dispatcher sends to a local server at DEBUG, and the captured log is searched for each
secret (and the parts of it that libraries log on their own)."""

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from delivery.dispatchers.base import SendContext
from delivery.engine.assembly import Assembly, assemble
from delivery.redaction import REDACTED, Redactor, mask_address, redactor, secret_parts
from schemas import Payload, Settings
from tests.conftest import webhook_secret
from tests.delivery.dispatchers.conftest import Certificate, SmtpFactory, accept_user

pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")

SID = "AC" + "1" * 32
CONTEXT = SendContext(delivery_id="d-redact", attempt=1, channel="c")
#: The test's own servers log what clients send them; that log is not ours.
SERVER_LOGGERS = ("mail.log", "werkzeug")


@pytest.fixture
def engine(settings: Settings) -> Iterator[Assembly]:
    made = assemble(settings)
    yield made
    made.close()


def _send(engine: Assembly, name: str, dispatcher: str, config: dict[str, Any], to: str) -> None:
    engine.channels.add(name, dispatcher, config)
    _, instance = engine.dispatchers.get(name)
    instance.send(to, Payload(message="hello", subject="hi"), context=CONTEXT)


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    lines = []
    for record in caplog.records:
        if record.name.startswith(SERVER_LOGGERS):
            continue
        lines.append(record.getMessage())
        if record.exc_text:
            lines.append(record.exc_text)
    return "\n".join(lines)


def _assert_secret_absent(text: str, secret: str) -> None:
    for part in secret_parts(secret) or [secret]:
        assert part not in text, f"{part!r} was logged"


def test_every_dispatcher_at_debug_logs_no_secret(
    engine: Assembly,
    httpserver: HTTPServer,
    smtp_server: SmtpFactory,
    certificate: Certificate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    httpserver.expect_request("/services/T0001/B0001/hook-path-secret-1234").respond_with_data("ok")
    httpserver.expect_request("/api/chat.postMessage").respond_with_json({"ok": True, "ts": "1.2"})
    httpserver.expect_request(f"/2010-04-01/Accounts/{SID}/Messages.json").respond_with_json(
        {"sid": "SM1", "status": "queued"}, status=201
    )
    httpserver.expect_request("/apprise-hook").respond_with_data("ok")
    httpserver.expect_request("/hook").respond_with_data("", status=204)
    smtp = smtp_server(tls_context=certificate.server_context(), require_starttls=True,
                       auth_required=True, auth_require_tls=True,
                       authenticator=accept_user("mailer", "smtp-password-1234"))  # fmt: skip
    base = httpserver.url_for("").rstrip("/")
    host = base.split("://", 1)[1]
    secrets = {
        "webhook": webhook_secret(),
        "slack-hook": httpserver.url_for("/services/T0001/B0001/hook-path-secret-1234"),
        "slack-bot": "xoxb-bot-token-secret-5678",
        "sms": "twilio-auth-token-9012",
        "apprise": f"json://apprise-user:apprise-pass-3456@{host}/apprise-hook",
        "email": "smtp-password-1234",
    }
    caplog.set_level(logging.DEBUG)
    _send(engine, "hooks", "webhook", {"secret": secrets["webhook"]}, f"{base}/hook")
    _send(engine, "slack-hook", "slack", {"webhook_url": secrets["slack-hook"]}, "-")
    _send(engine, "slack-bot", "slack",
          {"bot_token": secrets["slack-bot"], "api_base_url": f"{base}/api/"}, "#ops")  # fmt: skip
    _send(engine, "sms", "sms", {"account_sid": SID, "auth_token": secrets["sms"],
          "from_number": "+14155550100", "api_base_url": base}, "+14155552671")  # fmt: skip
    _send(engine, "apprise", "apprise", {"url": secrets["apprise"]}, "")
    _send(engine, "email", "email", {"host": "127.0.0.1", "port": smtp.port,
          "tls": "starttls", "ca_file": str(certificate.cert_file),
          "from_address": "a@example.com", "username": "mailer",
          "password": secrets["email"]}, "oncall@example.com")  # fmt: skip
    assert len(httpserver.log) == 5 and len(smtp.mailbox.received) == 1
    text = _logged(caplog)
    assert len(caplog.records) > 20  # the libraries did log, at DEBUG
    for secret in secrets.values():
        _assert_secret_absent(text, secret)
    assert REDACTED in text  # and it was there to hide


def test_a_traceback_is_redacted_too(caplog: pytest.LogCaptureFixture) -> None:
    redactor.register(["traceback-secret-value"])
    try:
        raise RuntimeError("failed calling https://x/traceback-secret-value")
    except RuntimeError:
        logging.getLogger("some.library").exception("boom: %s", "traceback-secret-value")
    assert "traceback-secret-value" not in caplog.text
    assert caplog.text.count(REDACTED) >= 2


def test_short_values_are_not_redacted() -> None:
    local = Redactor()
    local.register(["abc", "long-enough-secret"])
    assert local.redact("abc long-enough-secret") == f"abc {REDACTED}"


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("alice@example.com", "a***@example.com"),
        ("+14155552671", "+14***71"),
        ("https://hooks.slack.com/services/T/B/secret", "https://hooks.slack.com/***"),
        ("#ops", "***"),
    ],
)
def test_masked_addresses_show_little(address: str, shown: str) -> None:
    assert mask_address(address) == shown
