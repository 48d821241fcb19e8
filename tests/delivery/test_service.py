import pytest
from pytest_httpserver import HTTPServer

from delivery.channels import ChannelStore
from delivery.crypto import SecretBox
from delivery.log import DeliveryLog, utcnow
from delivery.registry import DispatcherRegistry
from delivery.service import DeliveryService, Dispatchers
from schemas import Envelope, Payload, Settings
from tests.conftest import webhook_secret


@pytest.fixture
def service(settings: Settings) -> DeliveryService:
    log = DeliveryLog.from_settings(settings)
    registry = DispatcherRegistry.from_installed()
    channels = ChannelStore(log.engine, registry, lambda: SecretBox.from_settings(settings))
    channels.add("hooks", "webhook", {"secret": webhook_secret()}, retry_schedule=(0, 10, 10))
    return DeliveryService(settings, log, Dispatchers(channels, registry, ttl=0))


def envelope(url: str, delivery_id: str = "d1", channel: str = "hooks") -> Envelope:
    return Envelope(id=delivery_id, channel=channel, address=url, payload=Payload(message="m"))


def test_delivered_then_a_duplicate_is_skipped(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=202)
    assert service.deliver(envelope(httpserver.url_for("/h"))).outcome == "delivered"
    assert service.deliver(envelope(httpserver.url_for("/h"))).action == "done"
    assert len(httpserver.log) == 1


def test_retryable_failure_schedules_the_next_attempt(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=503)
    decision = service.deliver(envelope(httpserver.url_for("/h")))
    assert decision.action == "retry"
    assert 7 <= decision.countdown <= 12  # 10 s ± 20 % jitter
    record = service.log.get("d1")
    assert record is not None and record.status == "retrying"
    assert record.next_attempt_at is not None and record.next_attempt_at > utcnow()
    # a copy arriving early waits for the schedule instead of sending now
    early = service.deliver(envelope(httpserver.url_for("/h")))
    assert early.action == "later" and early.countdown > 5
    assert len(httpserver.log) == 1


def test_schedule_exhausted_fails_with_the_last_error(
    service: DeliveryService, httpserver: HTTPServer, settings: Settings
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=500)
    url = httpserver.url_for("/h")
    service.deliver(envelope(url))
    for _ in range(2):
        # move the schedule along instead of waiting for it
        with service.log.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE deliveries SET next_attempt_at = NULL")
        decision = service.deliver(envelope(url))
    assert decision.action == "done" and decision.outcome == "failed"
    record = service.log.get("d1")
    assert record is not None and record.status == "failed"
    assert [a.outcome for a in record.attempts] == ["retry", "retry", "failed"]
    assert "500" in (record.last_error or "")


def test_unknown_channel_fails_once_without_retry(service: DeliveryService) -> None:
    decision = service.deliver(envelope("https://example.com", channel="gone"))
    assert (decision.action, decision.outcome) == ("done", "failed")
    record = service.log.get("d1")
    assert record is not None and "no channel named 'gone'" in (record.last_error or "")


def test_payload_the_protocol_cannot_carry_fails_permanently(service: DeliveryService) -> None:
    service.dispatchers.channels.add("dev", "console", {})
    decision = service.deliver(
        Envelope(id="d2", channel="dev", address="x", payload=Payload(message="  "))
    )
    assert decision.outcome == "failed"
    record = service.log.get("d2")
    assert record is not None and "PayloadRejected" in (record.last_error or "")
