"""The recipient's say, as the worker's service applies it: preferences skip, quiet hours
schedule, throttles skip beyond their count, critical categories pass all three."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from pytest_httpserver import HTTPServer

from delivery.clock import utcnow
from delivery.engine.assembly import assemble
from delivery.engine.channels import parse_per_recipient
from delivery.engine.service import DeliveryService
from delivery.engine.throttle import RecipientThrottle
from delivery.errors import ConfigurationError
from delivery.recipients import Preferences, QuietHours
from schemas import Envelope, Payload, Settings
from tests.conftest import webhook_secret


@pytest.fixture
def service(settings: Settings) -> DeliveryService:
    engine = assemble(settings, channel_ttl=0)
    engine.channels.add("hooks", "webhook", {"secret": webhook_secret()})
    engine.channels.add("capped", "webhook", {"secret": webhook_secret()}, per_recipient="2/h")
    return engine.service


@pytest.fixture
def preferences(service: DeliveryService) -> Preferences:
    return Preferences(service.log.engine)


@pytest.fixture
def receiver(httpserver: HTTPServer) -> HTTPServer:
    httpserver.expect_request("/a").respond_with_data("", status=202)
    httpserver.expect_request("/b").respond_with_data("", status=202)
    return httpserver


def envelope(url: str, delivery_id: str, **fields: object) -> Envelope:
    return Envelope.model_validate(
        {
            "id": delivery_id,
            "channel": "hooks",
            "address": url,
            "payload": Payload(message="m"),
            **fields,
        }
    )


def _status(service: DeliveryService, delivery_id: str) -> str:
    record = service.log.get(delivery_id)
    assert record is not None
    return record.status


def test_a_category_turned_off_is_skipped_and_a_critical_one_still_sent(
    service: DeliveryService, preferences: Preferences, receiver: HTTPServer
) -> None:
    url = receiver.url_for("/a")
    preferences.set_rule(url, channel=None, category=None, enabled=False)  # everything off
    skipped = service.deliver(envelope(url, "news", category="marketing"))
    sent = service.deliver(envelope(url, "reset", category="security"))
    assert (skipped.outcome, sent.outcome) == ("skipped", "delivered")
    record = service.log.get("news")
    assert record is not None and record.status == "skipped"
    assert "preferences" in (record.last_error or "")
    assert len(receiver.log) == 1


def test_the_most_specific_rule_decides_per_channel(
    service: DeliveryService, preferences: Preferences, receiver: HTTPServer
) -> None:
    url = receiver.url_for("/a")
    preferences.set_rule(url, channel="hooks", category=None, enabled=False)
    preferences.set_rule(url, channel="hooks", category="billing", enabled=True)
    decisions = service.deliver_many(
        [
            envelope(url, "d1", category="marketing"),
            envelope(url, "d2", category="billing"),
            envelope(receiver.url_for("/b"), "d3", category="marketing"),
        ]
    )
    assert [d.outcome for d in decisions] == ["skipped", "delivered", "delivered"]


def test_quiet_hours_schedule_a_delivery_for_their_end(
    service: DeliveryService, preferences: Preferences, receiver: HTTPServer
) -> None:
    url = receiver.url_for("/a")
    now = utcnow()
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    window = QuietHours.parse(f"{start:%H:%M}-{end:%H:%M}")
    preferences.set_quiet(url, window, timezone="UTC")
    decision = service.deliver(envelope(url, "later", category="marketing"))
    assert decision.action == "done" and decision.outcome is None
    record = service.log.get("later")
    assert record is not None and record.status == "scheduled"
    expected = end.replace(second=0, microsecond=0)
    assert record.next_attempt_at is not None
    assert abs(record.next_attempt_at - expected) <= timedelta(minutes=1)
    # A critical delivery is not held
    assert service.deliver(envelope(url, "code", category="security")).outcome == "delivered"
    assert len(receiver.log) == 1


def test_a_channel_throttle_skips_beyond_its_count_per_address(
    service: DeliveryService, receiver: HTTPServer
) -> None:
    a, b = receiver.url_for("/a"), receiver.url_for("/b")
    outcomes = [
        service.deliver(envelope(a, f"a{i}", channel="capped")).outcome for i in range(3)
    ] + [service.deliver(envelope(b, "b0", channel="capped")).outcome]
    assert outcomes == ["delivered", "delivered", "skipped", "delivered"]
    record = service.log.get("a2")
    assert record is not None and "throttled" in (record.last_error or "")
    assert "2/h" in (record.last_error or "")
    # Critical categories are never throttled
    critical = envelope(a, "a3", channel="capped", category="security")
    assert service.deliver(critical).outcome == "delivered"


def test_a_subscription_throttle_counts_its_own_deliveries(
    service: DeliveryService, receiver: HTTPServer
) -> None:
    a = receiver.url_for("/a")
    fanned = [envelope(a, f"s{i}", subscription="sub-1", per_recipient="1/d") for i in range(2)]
    other = envelope(a, "t0", subscription="sub-2", per_recipient="1/d")
    outcomes = [d.outcome for d in service.deliver_many([*fanned, other])]
    assert outcomes == ["delivered", "skipped", "delivered"]


def test_a_retry_is_counted_once(service: DeliveryService) -> None:
    throttle = RecipientThrottle(service.log.engine)
    now = datetime.now(UTC)

    def take(delivery_id: str, *, at: datetime = now, dry_run: bool = False) -> bool:
        return throttle.take(
            "channel:x", "addr", delivery_id, limit=1, period=3600.0, now=at, dry_run=dry_run
        )

    assert take("d1")
    assert take("d1")  # the same delivery again: a retry or a copy of its message
    assert not take("d2")
    assert take("d3", at=now + timedelta(hours=2))
    # A dry run only looks
    assert not take("d4", dry_run=True)


def test_threads_never_take_more_places_than_the_throttle_has(service: DeliveryService) -> None:
    throttle = RecipientThrottle(service.log.engine)
    now = datetime.now(UTC)

    def take(i: int) -> bool:
        return throttle.take("channel:x", "addr", f"d{i}", limit=5, period=60.0, now=now)

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(take, range(40))) == 5


@pytest.mark.parametrize("value", ["3/h", "10/d", "5/30m", " 1/s "])
def test_throttles_parse(value: str) -> None:
    count, period = parse_per_recipient(value)
    assert count >= 1 and period >= 1


@pytest.mark.parametrize("value", ["", "0/h", "3", "3/w", "-1/h", "1.5/h", "3/0m", "3/h\x00"])
def test_bad_throttles_are_refused_when_the_channel_is_added(
    service: DeliveryService, value: str
) -> None:
    with pytest.raises(ConfigurationError, match="per-recipient"):
        service.dispatchers.channels.add("bad", "console", {}, per_recipient=value)


def test_a_delivery_sent_again_from_the_log_keeps_its_subscription_throttle(
    service: DeliveryService, receiver: HTTPServer
) -> None:
    a = receiver.url_for("/a")
    first = envelope(a, "s0", subscription="sub-1", per_recipient="1/d", category="news")
    service.log.claim(first.model_copy(update={"id": "s1"}), lease=60)
    record = service.log.get("s1")
    assert record is not None
    again = record.envelope()
    assert (again.subscription, again.per_recipient, again.category) == ("sub-1", "1/d", "news")
