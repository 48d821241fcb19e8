"""One message to several recipients over SMTP (aiosmtpd on loopback): refused ones alone
fail; the default many-address send of any dispatcher."""

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from delivery.dispatchers.base import SendContext, SendResult
from delivery.dispatchers.console import ConsoleDispatcher
from delivery.dispatchers.email import EmailConfig, EmailDispatcher
from delivery.errors import InvalidAddress, PayloadRejected, RecipientRejected, RetryableError
from schemas import Payload
from tests.delivery.dispatchers.conftest import Mailbox
from tests.support.environment import LOCAL
from tests.support.servers import free_port

CONTEXT = SendContext(delivery_id="group-1")


@dataclass
class Refusing(Mailbox):
    """Refuses the addresses it is given (550) or defers them (451)."""

    refuse: set[str] = field(default_factory=set)
    defer: set[str] = field(default_factory=set)

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such user"
        if address in self.defer:
            return "451 4.2.1 Mailbox busy"
        return await super().handle_RCPT(server, session, envelope, address, options)


@pytest.fixture
def email() -> Iterator[tuple[EmailDispatcher, Refusing]]:
    mailbox = Refusing()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    config = EmailConfig(host="127.0.0.1", port=port, tls="none", from_address="a@example.com")
    dispatcher = EmailDispatcher(config, environment=LOCAL)
    yield dispatcher, mailbox
    dispatcher.close()
    controller.stop()


def test_one_transaction_reports_each_recipient(email: tuple[EmailDispatcher, Refusing]) -> None:
    dispatcher, mailbox = email
    mailbox.refuse = {"gone@example.com"}
    mailbox.defer = {"busy@example.com"}
    addresses = [
        "ann@example.com",
        "gone@example.com",
        "bob@example.com",
        "busy@example.com",
        "not an address",
    ]
    results = dispatcher.send_many_addresses(
        addresses, Payload(message="hi", subject="S"), context=CONTEXT
    )
    assert set(results) == set(addresses)
    assert isinstance(results["ann@example.com"], SendResult)
    assert isinstance(results["bob@example.com"], SendResult)
    assert isinstance(results["gone@example.com"], RecipientRejected)
    assert results["gone@example.com"].status == 550
    assert isinstance(results["busy@example.com"], RetryableError)
    assert isinstance(results["not an address"], InvalidAddress)
    # one message, to the accepted recipients only, none of whom sees the others
    [mail] = mailbox.received
    assert sorted(mail.rcpt_tos) == ["ann@example.com", "bob@example.com"]
    assert mail.message["To"] == "undisclosed-recipients:;"
    ok = results["ann@example.com"]
    assert isinstance(ok, SendResult) and ok.provider_ref == "Q00001"
    # the connection is still good for the next message
    dispatcher.send("carol@example.com", Payload(message="next"), context=CONTEXT)
    assert len(mailbox.received) == 2


def test_all_refused_sends_no_message(email: tuple[EmailDispatcher, Refusing]) -> None:
    dispatcher, mailbox = email
    mailbox.refuse = {"x@example.com", "y@example.com"}
    results = dispatcher.send_many_addresses(
        ["x@example.com", "y@example.com"], Payload(message="hi"), context=CONTEXT
    )
    assert all(isinstance(r, RecipientRejected) for r in results.values())
    assert mailbox.received == []


def test_a_data_refusal_fails_every_accepted_recipient(
    email: tuple[EmailDispatcher, Refusing],
) -> None:
    dispatcher, mailbox = email
    mailbox.data_replies = ["554 5.6.0 Message rejected"]
    results = dispatcher.send_many_addresses(
        ["a1@example.com", "a2@example.com"], Payload(message="hi"), context=CONTEXT
    )
    assert [type(r).__name__ for r in results.values()] == ["PermanentError", "PermanentError"]


def test_the_default_sends_each_address_on_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    console = ConsoleDispatcher()
    results = console.send_many_addresses(["a", "b"], Payload(message="hi"), context=CONTEXT)
    assert all(isinstance(r, SendResult) for r in results.values())
    assert capsys.readouterr().out.count("hi") == 2
    refused = console.send_many_addresses(["a"], Payload(message="  "), context=CONTEXT)
    assert isinstance(refused["a"], PayloadRejected)
