"""Digests through real parts: ``delivery.notify`` three times → the embedded broker → a
``delivery worker`` process that collects the events, closes the window itself (no beat)
and sends one delivery → a local webhook receiver; and the same window closed by several
workers at once on PostgreSQL."""

import threading
import time
from datetime import UTC, datetime

import pytest

import delivery
from delivery.notifications import Notifier
from delivery.notifications.closing import CLOSE_GRACE, close_digests
from delivery.notifications.digests import digest_delivery_id
from delivery.producer.events import build_event
from delivery.producer.publisher import get_publisher
from schemas import get_settings
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration

#: The test's window: long enough for three fan-outs, short enough to wait for.
PERIOD = 10


def _at_a_window_start(period: int) -> None:
    """Wait until a window has just begun, so three events sent now share it."""
    time.sleep(period - time.time() % period + 0.3)


def _collected(notifier: Notifier, event_ids: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [notifier.events.get(i) for i in event_ids]
        if all(r is not None and r.fanned_out_at is not None for r in records):
            return
        time.sleep(0.05)
    raise TimeoutError(f"events {event_ids} were not all fanned out")


def _wait_for_text(stack: Stack, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in worker.output() for worker in stack.workers):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not logged")


def test_three_events_in_a_window_arrive_as_one_delivery(embedded_stack: Stack) -> None:
    stack = embedded_stack
    # Given a webhook subscription with a 10-second digest and a template listing the events
    secret = webhook_secret()
    stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    notifier = Notifier(stack.log)
    notifier.templates.add(
        "shipped-digest",
        subject="{{ window.count }} orders shipped",
        text="{% for e in events %}order {{ e.order }};{% endfor %}",
    )
    with Receiver(secret) as receiver:
        subscription = notifier.subscriptions.add(
            "order.shipped",
            "hooks",
            receiver.url("/digest"),
            template="shipped-digest",
            category="orders",
            digest=f"{PERIOD}s",
            shortest_digest=1,
        )
        stack.worker(DELIVERY_DIGEST_INTERVAL="1")
        # When a service notifies three times within the window
        _at_a_window_start(PERIOD)
        receipts = [
            delivery.notify("order.shipped", {"order": n}, idempotency_key=f"o-{n}")
            for n in (1, 2, 3)
        ]
        _collected(notifier, [r.id for r in receipts])
        [window] = notifier.digests.waiting()
        digest_id = digest_delivery_id(subscription.id, window.start)
        # Then, once the window has closed, one delivery lists the three events
        assert stack.wait_until([digest_id], {"delivered"}) == {"delivered": 1}
        [hook] = receiver.wait_for(1, "/digest")
        assert hook.verified
        body = hook.json()
        assert body["subject"] == "3 orders shipped"
        assert body["message"] == "order 1;order 2;order 3;"
        record = stack.log.get(digest_id)
        assert record is not None and record.category == "orders"
        # and a replayed event adds nothing: once the worker has seen it, nothing waits
        delivery.notify("order.shipped", {"order": 1}, idempotency_key="o-1")
        _wait_for_text(stack, "'replayed'")
        assert notifier.digests.waiting() == []
        assert len(receiver.requests_to("/digest")) == 1


def test_several_workers_closing_one_window_make_one_delivery(postgres_stack: Stack) -> None:
    stack = postgres_stack
    stack.channels.add("dev", "console", {})
    notifier = Notifier(stack.log)
    subscription = notifier.subscriptions.add(
        "order.shipped", "dev", "ops", digest="1h", shortest_digest=1
    )
    now = datetime.now(UTC)
    for n in range(20):
        event = build_event("order.shipped", {"order": n}, idempotency_key=str(n))
        notifier.digests.collect(subscription.id, event, period=3600, now=now)
    [window] = notifier.digests.waiting()
    closed = datetime.fromtimestamp(window.start + 3600 + CLOSE_GRACE + 1, UTC)
    publisher = get_publisher(get_settings())
    made: list[int] = []
    barrier = threading.Barrier(4)

    def close() -> None:
        # Each thread its own Notifier: its own sessions, as another worker would have.
        mine = Notifier(stack.log)
        barrier.wait()
        made.append(close_digests(mine, publisher, now=closed))

    threads = [threading.Thread(target=close) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # One window closed, once, by whichever worker came first
    assert sorted(made) == [0, 0, 0, 1]
    assert len(notifier.digests.items(digest_delivery_id(subscription.id, window.start))) == 20
    assert notifier.digests.waiting() == []
