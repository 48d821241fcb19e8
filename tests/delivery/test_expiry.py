"""``ttl``: a delivery not sent in time ends ``expired`` and is never sent late; bad values
are refused where they enter; nothing waits in the log past its deadline."""

import math
from datetime import timedelta

import pytest
from pydantic import ValidationError
from pytest_httpserver import HTTPServer

from delivery.clock import utcnow
from delivery.engine.assembly import assemble
from delivery.engine.service import DeliveryService
from schemas import Envelope, Message, Payload, Settings
from tests.conftest import webhook_secret


@pytest.fixture
def service(settings: Settings) -> DeliveryService:
    engine = assemble(settings, channel_ttl=0)
    engine.channels.add("hooks", "webhook", {"secret": webhook_secret()}, retry_schedule=(0, 3600))
    return engine.service


def envelope(url: str, *, expires_in: float) -> Envelope:
    return Envelope(
        id="d1",
        channel="hooks",
        address=url,
        payload=Payload(message="code 123456"),
        expires_at=utcnow() + timedelta(seconds=expires_in),
    )


def test_a_delivery_past_its_deadline_expires_unsent(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    decision = service.deliver(envelope(httpserver.url_for("/h"), expires_in=-5))
    assert (decision.action, decision.outcome) == ("done", "expired")
    record = service.log.get("d1")
    assert record is not None and record.status == "expired"
    assert "ttl ran out" in (record.last_error or "")
    assert httpserver.log == []


def test_one_in_time_is_sent(service: DeliveryService, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=202)
    assert service.deliver(envelope(httpserver.url_for("/h"), expires_in=60)).outcome == (
        "delivered"
    )


def test_a_retry_due_after_the_deadline_is_due_at_it_instead(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    # The channel's next attempt is an hour away; the delivery has a minute left
    httpserver.expect_request("/h").respond_with_data("", status=503)
    sent = envelope(httpserver.url_for("/h"), expires_in=60)
    service.deliver(sent)
    record = service.log.get("d1")
    assert record is not None and record.status == "retrying"
    assert record.next_attempt_at == sent.expires_at
    # And when it comes round (the deadline passed meanwhile), it expires, unsent
    with service.log.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE deliveries SET next_attempt_at = NULL")
    late = sent.model_copy(update={"expires_at": utcnow() - timedelta(seconds=1)})
    assert service.deliver(late).outcome == "expired"
    assert len(httpserver.log) == 1


def test_a_paused_channel_holds_it_no_longer_than_its_deadline(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    service.dispatchers.channels.set_paused("hooks", True)
    sent = envelope(httpserver.url_for("/h"), expires_in=3)
    service.deliver(sent)
    record = service.log.get("d1")
    assert record is not None and record.next_attempt_at is not None
    assert record.next_attempt_at <= sent.expires_at  # type: ignore[operator]
    assert httpserver.log == []


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, -math.inf, 10**12, "soon", True])
def test_bad_ttls_are_refused_at_entry(ttl: object) -> None:
    with pytest.raises(ValidationError, match="ttl"):
        Message.model_validate(
            {"channel": "c", "address": "a@example.com", "payload": {"message": "m"}, "ttl": ttl}
        )


def test_a_countdown_beyond_the_ttl_is_refused_at_entry() -> None:
    with pytest.raises(ValidationError, match="would expire before it could be sent"):
        Message(channel="c", address="a", payload=Payload(message="m"), countdown=60, ttl=30)


def test_send_stamps_the_deadline_from_the_ttl(settings: Settings) -> None:
    from delivery.producer.publisher import _envelope

    before = utcnow()
    stamped = _envelope(Message(channel="c", address="a", payload=Payload(message="m"), ttl=90))
    assert stamped.expires_at is not None
    assert before + timedelta(seconds=90) <= stamped.expires_at <= utcnow() + timedelta(seconds=90)
