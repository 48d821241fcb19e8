"""Events, several recipients and failover through real parts: the producer → redis-server
→ a `delivery worker` process → webhook receiver, SMTP server (aiosmtpd), Twilio stand-in
→ the log."""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

import delivery
from delivery.notifications import EventRecord, Notifier
from schemas import Payload
from tests.conftest import webhook_secret
from tests.delivery.dispatchers.conftest import Mailbox
from tests.integration.conftest import Stack
from tests.support.receiver import Receiver
from tests.support.servers import free_port

pytestmark = pytest.mark.integration


@dataclass
class Refusing(Mailbox):
    """An SMTP mailbox that refuses some recipients (550 to their RCPT TO)."""

    refuse: set[str] = field(default_factory=set)

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such user here"
        return await super().handle_RCPT(server, session, envelope, address, options)


@pytest.fixture
def smtp() -> Iterator[tuple[Refusing, int]]:
    mailbox, port = Refusing(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


def _mail_channel(stack: Stack, port: int) -> None:
    stack.channels.add(
        "mail",
        "email",
        {"host": "127.0.0.1", "port": port, "tls": "none", "from_address": "shop@example.com"},
    )


def _fanned_out(notifier: Notifier, event_id: str, timeout: float = 30.0) -> EventRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = notifier.events.get(event_id)
        if record is not None and record.fanned_out_at is not None:
            return record
        time.sleep(0.05)
    raise TimeoutError(f"event {event_id} was not fanned out")


def _wait_for_text(stack: Stack, text: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(w.output().count(text) for w in stack.workers) >= count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not logged {count} times")


@pytest.mark.parametrize("log", ["sqlite", "postgresql"])
def test_an_event_fans_out_rendered_and_a_replay_sends_nothing_more(
    log: str, request: pytest.FixtureRequest, smtp: tuple[Refusing, int]
) -> None:
    stack: Stack = request.getfixturevalue("redis_stack" if log == "sqlite" else "postgres_stack")
    # Given a webhook channel, an email channel, a template and four subscriptions
    mailbox, port = smtp
    secret = webhook_secret()
    stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    _mail_channel(stack, port)
    notifier = Notifier(stack.log)
    notifier.templates.add(
        "shipped",
        subject="Order {{ order.id }} shipped",
        text="Hello {{ name }}, order {{ order.id }} is on its way.",
        html="<p>Hello {{ name }}</p>",
    )
    subscribe = notifier.subscriptions.add
    with Receiver(secret) as receiver:
        subscribe("order.shipped", "mail", "{{ email }}", template="shipped")
        subscribe("order.shipped", "mail", "ops@example.com", template="shipped")
        subscribe("order.shipped", "hooks", receiver.url("/orders"))
        skipped = subscribe(
            "order.shipped", "hooks", receiver.url("/big"), filter="order.total > 100"
        )
        subscribe("order.paid", "hooks", receiver.url("/paid"))
        stack.worker()
        # When a service notifies
        context = {"order": {"id": 42, "total": 20}, "name": "<Ann>", "email": "ann@example.com"}
        receipt = delivery.notify("order.shipped", context, idempotency_key="order-42-shipped")
        record = _fanned_out(notifier, receipt.id)
        made = [o.delivery_id for o, _ in record.deliveries if o.outcome == "queued"]
        counts = stack.wait_until(made, {"delivered"})
        # Then three deliveries went out, rendered, on two dispatchers; the filter skipped one
        assert counts == {"delivered": 3}
        assert {o.subscription_id: o.outcome for o, _ in record.deliveries}[skipped.id] == "skipped"
        [hook] = receiver.wait_for(1, "/orders")
        assert hook.verified and hook.json()["data"]["order"] == {"id": 42, "total": 20}
        assert hook.json()["data"]["event_id"] == receipt.id
        assert sorted(m.rcpt_tos[0] for m in mailbox.received) == [
            "ann@example.com",
            "ops@example.com",
        ]
        message = mailbox.received[0].message
        assert message["Subject"] == "Order 42 shipped"
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        assert text is not None and "Hello <Ann>, order 42" in text.get_content()
        assert html is not None and "Hello &lt;Ann&gt;" in html.get_content()
        # When the event is replayed, and its task redelivered as a broker would
        again = delivery.notify("order.shipped", context, idempotency_key="order-42-shipped")
        assert again.id == receipt.id
        _wait_for_text(stack, "'replayed'", 1)
        # Then nothing more was sent
        time.sleep(0.5)
        assert len(receiver.requests_to("/orders")) == 1
        assert receiver.requests_to("/big") == [] and receiver.requests_to("/paid") == []
        assert len(mailbox.received) == 2
    shown = notifier.events.get(receipt.id)
    assert shown is not None
    assert sorted(s for _, s in shown.deliveries if s) == ["delivered"] * 3


def test_several_identities_one_refused_by_the_smtp_server(
    redis_stack: Stack, smtp: tuple[Refusing, int]
) -> None:
    # Given an SMTP server that does not know one of three recipients
    mailbox, port = smtp
    mailbox.refuse = {"gone@example.com"}
    _mail_channel(redis_stack, port)
    redis_stack.worker()
    # When one send names all three
    receipts = delivery.send(
        "mail",
        ["ann@example.com", "gone@example.com", "bob@example.com"],
        Payload(message="Sale starts now", subject="Sale"),
        idempotency_key="sale-1",
    )
    ids = [r.id for r in receipts]
    counts = redis_stack.wait_until(ids, {"delivered", "failed"})
    # Then two were delivered and the refused one failed alone, once, for good
    assert counts == {"delivered": 2, "failed": 1}
    gone = redis_stack.log.get(ids[1])
    assert gone is not None and gone.status == "failed" and gone.address == "gone@example.com"
    assert [(a.outcome, a.status_code) for a in gone.attempts] == [("failed", 550)]
    assert "RecipientRejected" in (gone.last_error or "")
    assert sorted(m.rcpt_tos[0] for m in mailbox.received) == ["ann@example.com", "bob@example.com"]


TWILIO_SID = "AC" + "2" * 32
MESSAGES = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"


def _sms_channel(stack: Stack, name: str, base_url: str, **extra: object) -> None:
    stack.channels.add(
        name,
        "sms",
        {
            "account_sid": TWILIO_SID,
            "auth_token": f"token-{name}",
            "from_number": "+14155550100",
            "api_base_url": base_url,
            "timeout": 2,
        },
        retry_schedule=(0, 0.2),
        **extra,  # type: ignore[arg-type]
    )


def test_failover_to_a_backup_when_the_primarys_provider_is_down(
    redis_stack: Stack, httpserver: HTTPServer
) -> None:
    # Given a primary SMS provider nobody answers at, and a backup that works
    def twilio(request: Request) -> Response:
        body = {"sid": f"SM{request.form['To'][-4:]}", "status": "queued", "num_segments": "1"}
        return Response(json.dumps(body), 201, content_type="application/json")

    httpserver.expect_request(MESSAGES, method="POST").respond_with_handler(twilio)
    _sms_channel(redis_stack, "texts-backup", httpserver.url_for("/"))
    _sms_channel(redis_stack, "texts", f"http://127.0.0.1:{free_port()}/", fallback="texts-backup")
    redis_stack.worker()
    # When a text is sent on the primary
    receipt = delivery.send("texts", "+14155552671", Payload(message="Your code is 1234"))
    counts = redis_stack.wait_until([receipt.id], {"delivered", "failed"})
    # Then it used up its attempts on the primary, moved, and the backup delivered it
    assert counts == {"delivered": 1}
    record = redis_stack.log.get(receipt.id)
    assert record is not None and record.channel == "texts-backup"
    assert [a.outcome for a in record.attempts] == ["retry", "retry", "delivered"]
    assert record.attempts[1].detail["failover_to"] == "texts-backup"
    assert record.attempts[2].provider_ref == "SM2671"
    assert [r.form["To"] for r, _ in httpserver.log] == ["+14155552671"]
