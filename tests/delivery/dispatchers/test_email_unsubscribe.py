"""RFC 8058 one-click unsubscribe headers, as a real SMTP server (aiosmtpd) receives them."""

from collections.abc import Iterator

import pytest

from delivery.dispatchers.base import SendContext
from delivery.dispatchers.email import EmailConfig, EmailDispatcher
from schemas import Payload
from tests.delivery.dispatchers.conftest import SmtpFactory, SmtpServer
from tests.support.environment import LOCAL

#: As long as a link for a long address gets: it must still arrive as one unbroken <URL>.
URL = "https://delivery.example.com/unsubscribe/" + "eyJhIjoi" * 40 + "." + "s" * 43


@pytest.fixture
def email(smtp_server: SmtpFactory) -> Iterator[tuple[EmailDispatcher, SmtpServer]]:
    server = smtp_server()
    config = {"host": "127.0.0.1", "port": server.port, "tls": "none"}
    dispatcher = EmailDispatcher(
        EmailConfig.model_validate({**config, "from_address": "news@example.com", "timeout": 5}),
        environment=LOCAL,
    )
    yield dispatcher, server
    dispatcher.close()


def _raw(message, name: str) -> list[str]:
    """The header as written on the wire (not decoded from RFC 2047 words)."""
    return [value for key, value in message.raw_items() if key.lower() == name.lower()]


def test_a_message_with_an_unsubscribe_link_carries_both_headers(email) -> None:
    # Given a delivery whose recipient may unsubscribe with one click
    dispatcher, server = email
    context = SendContext(delivery_id="d-1", unsubscribe_url=URL)
    # When it is sent
    dispatcher.send("ann@example.com", Payload(message="News", subject="Monthly"), context=context)
    # Then the server received the link, unbroken, and the one-click declaration
    [mail] = server.mailbox.received
    assert _raw(mail.message, "List-Unsubscribe") == [f"<{URL}>"]
    assert _raw(mail.message, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]


def test_a_message_without_a_link_has_neither_header(email) -> None:
    dispatcher, server = email
    dispatcher.send("ann@example.com", Payload(message="x"), context=SendContext("d-2"))
    [mail] = server.mailbox.received
    assert "List-Unsubscribe" not in mail.message
    assert "List-Unsubscribe-Post" not in mail.message


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/x>\r\nBcc: victim@example.com",
        "javascript:alert(1)",
        "https://example.com/ü",
        "https://example.com/" + "a" * 2000,
    ],
)
def test_a_link_unfit_for_a_header_is_left_out(email, url: str) -> None:
    # The worker only hands over links it signed, but a header is no place to find out
    dispatcher, server = email
    dispatcher.send(
        "ann@example.com", Payload(message="x"), context=SendContext("d-3", unsubscribe_url=url)
    )
    [mail] = server.mailbox.received
    assert "List-Unsubscribe" not in mail.message
    assert "Bcc" not in mail.message
