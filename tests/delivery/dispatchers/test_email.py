"""The email dispatcher against a real SMTP server (aiosmtpd) on loopback."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from delivery.dispatchers.base import SendContext
from delivery.dispatchers.email import EmailConfig, EmailDispatcher
from delivery.errors import (
    ConfigurationError,
    InvalidAddress,
    PermanentError,
    RecipientRejected,
    RetryableError,
)
from schemas import Payload
from tests.delivery.dispatchers.conftest import Certificate, SmtpFactory, accept_user
from tests.support.environment import LOCAL
from tests.support.servers import free_port

CONTEXT = SendContext(delivery_id="d-1")


Factory = Callable[..., EmailDispatcher]


@pytest.fixture
def dispatcher() -> Iterator[Factory]:
    """Email dispatchers for a local server; their connections are closed afterwards."""
    made: list[EmailDispatcher] = []

    def make(port: int, **overrides: Any) -> EmailDispatcher:
        config: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "tls": "none",
            "from_address": "alerts@example.com",
            "timeout": 5,
            **overrides,
        }
        made.append(EmailDispatcher(EmailConfig.model_validate(config), environment=LOCAL))
        return made[-1]

    yield make
    for email in made:
        email.close()


def test_sends_text_and_html_as_alternatives(dispatcher: Factory, smtp_server: SmtpFactory) -> None:
    # Given a plain SMTP server and a channel with a display name and a Reply-To
    server = smtp_server()
    email = dispatcher(server.port, from_name="Ops Alerts", reply_to="ops@example.com")
    payload = Payload(
        message="Disk is full", subject="Disk alert", html_message="<p>Disk is <b>full</b></p>"
    )
    # When we send
    result = email.send("Someone@Example.COM", payload, context=CONTEXT)
    # Then one message arrived with both parts, the headers set, and the queue id recorded
    [mail] = server.mailbox.received
    assert mail.mail_from == "alerts@example.com"
    assert mail.rcpt_tos == ["Someone@example.com"]  # the domain is normalised
    message = mail.message
    assert message["Subject"] == "Disk alert"
    assert message["From"] == "Ops Alerts <alerts@example.com>"
    assert message["Reply-To"] == "ops@example.com"
    assert message["X-Delivery-ID"] == "d-1"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and text.get_content().strip() == "Disk is full"
    assert html is not None and "<b>full</b>" in html.get_content()
    assert result.provider_ref == "Q00001"
    assert result.status == 250
    assert result.detail["message_id"] == message["Message-ID"]


def test_text_only_is_a_single_part(dispatcher: Factory, smtp_server: SmtpFactory) -> None:
    server = smtp_server()
    email = dispatcher(server.port)
    email.send("a@example.com", Payload(message="just text"), context=CONTEXT)
    [mail] = server.mailbox.received
    assert mail.message.get_content_type() == "text/plain"
    assert "Subject" not in mail.message


def test_html_only_gets_a_text_part_made_from_it(
    dispatcher: Factory, smtp_server: SmtpFactory
) -> None:
    server = smtp_server()
    email = dispatcher(server.port)
    email.send("a@example.com", Payload(message="", html_message="<h1>Hello</h1>"), context=CONTEXT)
    [mail] = server.mailbox.received
    text = mail.message.get_body(preferencelist=("plain",))
    assert text is not None and "Hello" in text.get_content()


def test_subject_line_breaks_cannot_inject_headers(
    dispatcher: Factory, smtp_server: SmtpFactory
) -> None:
    server = smtp_server()
    email = dispatcher(server.port)
    payload = Payload(message="x", subject="Hi\r\nBcc: victim@example.com")
    email.send("a@example.com", payload, context=CONTEXT)
    [mail] = server.mailbox.received
    assert mail.message["Subject"] == "Hi Bcc: victim@example.com"
    assert "Bcc" not in mail.message


def test_connection_is_reused_between_messages(
    dispatcher: Factory, smtp_server: SmtpFactory
) -> None:
    server = smtp_server()
    email = dispatcher(server.port)
    for n in range(3):
        email.send("a@example.com", Payload(message=f"m{n}"), context=CONTEXT)
    assert len({mail.peer for mail in server.mailbox.received}) == 1


def test_reconnects_when_the_server_closed_the_connection(
    dispatcher: Factory, smtp_server: SmtpFactory
) -> None:
    # Given a server that hangs up after the first message, as an idle server does
    server = smtp_server()
    server.mailbox.close_after_data = True
    email = dispatcher(server.port)
    email.send("a@example.com", Payload(message="first"), context=CONTEXT)
    # When we send again, then the dispatcher reconnects once and the message goes through
    email.send("a@example.com", Payload(message="second"), context=CONTEXT)
    first, second = server.mailbox.received
    assert first.peer != second.peer
    assert second.message.get_content().strip() == "second"


def test_starttls_with_a_trusted_self_signed_certificate_and_auth(
    dispatcher: Factory, smtp_server: SmtpFactory, certificate: Certificate
) -> None:
    # Given a server that requires STARTTLS, and AUTH only over TLS
    server = smtp_server(
        tls_context=certificate.server_context(),
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=accept_user("mailer", "s3cret"),
    )
    email = dispatcher(
        server.port,
        tls="starttls",
        username="mailer",
        password="s3cret",
        ca_file=str(certificate.cert_file),
    )
    email.send("a@example.com", Payload(message="over TLS"), context=CONTEXT)
    [mail] = server.mailbox.received
    assert mail.encrypted
    assert mail.login == b"mailer"


def test_implicit_tls(
    dispatcher: Factory, smtp_server: SmtpFactory, certificate: Certificate
) -> None:
    server = smtp_server(ssl_context=certificate.server_context())
    email = dispatcher(server.port, tls="implicit", ca_file=str(certificate.cert_file))
    email.send("a@example.com", Payload(message="wrapped"), context=CONTEXT)
    [mail] = server.mailbox.received
    assert mail.encrypted


def test_untrusted_certificate_is_a_configuration_error(
    dispatcher: Factory, smtp_server: SmtpFactory, certificate: Certificate
) -> None:
    # The system's CAs do not include our self-signed certificate.
    server = smtp_server(tls_context=certificate.server_context())
    email = dispatcher(server.port, tls="starttls")
    with pytest.raises(ConfigurationError, match="ca_file"):
        email.send("a@example.com", Payload(message="x"), context=CONTEXT)
    assert server.mailbox.received == []


def test_wrong_password_is_permanent_and_not_echoed(
    dispatcher: Factory, smtp_server: SmtpFactory, certificate: Certificate
) -> None:
    server = smtp_server(
        tls_context=certificate.server_context(),
        auth_required=True,
        authenticator=accept_user("mailer", "s3cret"),
    )
    email = dispatcher(
        server.port,
        tls="starttls",
        username="mailer",
        password="not-the-password",
        ca_file=str(certificate.cert_file),
    )
    with pytest.raises(PermanentError) as caught:
        email.send("a@example.com", Payload(message="x"), context=CONTEXT)
    assert caught.value.status == 535
    assert "not-the-password" not in str(caught.value)


def test_server_without_starttls_is_refused(dispatcher: Factory, smtp_server: SmtpFactory) -> None:
    server = smtp_server()
    email = dispatcher(server.port, tls="starttls")
    with pytest.raises(ConfigurationError, match="STARTTLS"):
        email.send("a@example.com", Payload(message="x"), context=CONTEXT)
    assert server.mailbox.received == []


def test_550_for_the_recipient_is_permanent(dispatcher: Factory, smtp_server: SmtpFactory) -> None:
    server = smtp_server()
    server.mailbox.rcpt_replies.append("550 5.1.1 <a@example.com>: Recipient address rejected")
    email = dispatcher(server.port)
    with pytest.raises(RecipientRejected) as caught:
        email.send("a@example.com", Payload(message="x"), context=CONTEXT)
    assert caught.value.status == 550
    assert "Recipient address rejected" in str(caught.value)
    # The connection was reset, not lost: the next message goes over it.
    email.send("b@example.com", Payload(message="y"), context=CONTEXT)
    assert [m.rcpt_tos for m in server.mailbox.received] == [["b@example.com"]]


def test_451_is_retryable(dispatcher: Factory, smtp_server: SmtpFactory) -> None:
    server = smtp_server()
    server.mailbox.data_replies.append("451 4.3.0 Temporary lookup failure")
    email = dispatcher(server.port)
    with pytest.raises(RetryableError) as caught:
        email.send("a@example.com", Payload(message="x"), context=CONTEXT)
    assert caught.value.status == 451


def test_554_after_data_is_permanent(dispatcher: Factory, smtp_server: SmtpFactory) -> None:
    server = smtp_server()
    server.mailbox.data_replies.append("554 5.7.1 Message rejected as spam")
    email = dispatcher(server.port)
    with pytest.raises(PermanentError) as caught:
        email.send("a@example.com", Payload(message="x"), context=CONTEXT)
    assert not isinstance(caught.value, RecipientRejected)
    assert caught.value.status == 554


def test_connection_refused_is_retryable(dispatcher: Factory) -> None:
    email = dispatcher(free_port())
    with pytest.raises(RetryableError, match=r"cannot talk to 127\.0\.0\.1"):
        email.send("a@example.com", Payload(message="x"), context=CONTEXT)


@pytest.mark.parametrize("address", ["not-an-address", "a@localhost", "a@@example.com", ""])
def test_invalid_addresses_are_refused_before_connecting(dispatcher: Factory, address: str) -> None:
    email = dispatcher(free_port())
    with pytest.raises(InvalidAddress):
        email.send(address, Payload(message="x"), context=CONTEXT)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"username": "u"}, "username and password go together"),
        ({"username": "u", "password": "p", "tls": "none"}, "in clear"),
        ({"from_address": "nobody"}, "from_address"),
        ({"reply_to": "x@"}, "reply_to"),
        ({"tls": "ssl"}, "tls"),
    ],
)
def test_config_is_checked(overrides: dict[str, Any], complaint: str) -> None:
    raw = {"host": "smtp.example.com", "from_address": "a@example.com", "tls": "starttls"}
    with pytest.raises(ValidationError, match=complaint):
        EmailConfig.model_validate({**raw, **overrides})


@pytest.mark.parametrize(("tls", "port"), [("none", 25), ("starttls", 587), ("implicit", 465)])
def test_default_port_follows_tls_mode(tls: str, port: int) -> None:
    config = EmailConfig.model_validate({"host": "h", "from_address": "a@example.com", "tls": tls})
    assert config.resolved_port == port
