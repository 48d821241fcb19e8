"""Who owns what an event makes (issue 27): the fan-out passes the API key and its test
flag on to every delivery; a digest is a key's only if all its events are; a test key's
event joins no digest. On a real SQLite log and the in-memory broker."""

from datetime import UTC, datetime
from typing import Any

import pytest
from kombu.connection import Connection

from delivery.engine.assembly import Assembly, assemble
from delivery.notifications import Notifier
from delivery.notifications.closing import CLOSE_GRACE, close_digests
from delivery.notifications.digests import digest_delivery_id
from delivery.producer.events import build_event
from delivery.producer.publisher import get_publisher
from schemas import Settings
from schemas.events import Event


def _drain() -> list[dict[str, Any]]:
    """Every envelope waiting in the in-memory broker, single or batched."""
    envelopes: list[dict[str, Any]] = []
    with Connection("memory://") as conn, conn.SimpleQueue("delivery") as queue:
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                return envelopes
            args, _, _ = message.decode()
            task = message.headers["task"]
            if task == "delivery.deliver_batch":
                envelopes.extend(args[0])
            elif task == "delivery.deliver":
                envelopes.extend(args)
            message.ack()


@pytest.fixture
def engine(settings: Settings) -> Assembly:
    _drain()
    assembly = assemble(settings)
    assembly.channels.add("dev", "console", {})
    return assembly


@pytest.fixture
def notifier(engine: Assembly) -> Notifier:
    return Notifier(engine.log)


def _event(n: int, owner: str | None = None, *, test: bool = False) -> Event:
    return build_event(
        "order.shipped", {"order": n}, idempotency_key=f"k{n}", owner=owner, test=test
    )


def _close_all(notifier: Notifier) -> None:
    [window] = notifier.digests.waiting()
    close_digests(
        notifier,
        get_publisher(),
        now=datetime.fromtimestamp(window.start + 3600 + CLOSE_GRACE + 1, UTC),
    )


def test_every_delivery_an_event_makes_is_its_keys(notifier: Notifier) -> None:
    notifier.subscriptions.add("order.shipped", "dev", "ann")
    notifier.subscriptions.add("order.shipped", "dev", "bob")
    notifier.fan_out(_event(1, "billing"), get_publisher())
    notifier.fan_out(_event(2, "ci", test=True), get_publisher())
    notifier.fan_out(_event(3), get_publisher())  # Python's: no owner, as before
    made = sorted((e["owner"] or "", e["test"], e["address"]) for e in _drain())
    assert made == [
        ("", False, "ann"),
        ("", False, "bob"),
        ("billing", False, "ann"),
        ("billing", False, "bob"),
        ("ci", True, "ann"),
        ("ci", True, "bob"),
    ]
    record = notifier.events.get(_event(2).id)
    assert record is not None and (record.owner, record.test) == ("ci", True)


def test_a_delivery_that_cannot_be_rendered_fails_as_its_keys(notifier: Notifier) -> None:
    # The address needs a context key the event lacks: recorded failed, readable by the key
    notifier.subscriptions.add("order.shipped", "dev", "{{ email }}")
    event = _event(1, "ci", test=True)
    assert notifier.fan_out(event, get_publisher()).failed == 1
    [(outcome, _)] = notifier.events.get(event.id).deliveries  # type: ignore[union-attr]
    record = notifier.log.get(outcome.delivery_id)
    assert record is not None and record.status == "failed"
    assert (record.owner, record.test) == ("ci", True)


def test_a_digest_of_one_keys_events_is_that_keys(notifier: Notifier) -> None:
    subscription = notifier.subscriptions.add("order.shipped", "dev", "ops", digest="1h").id
    for n in (1, 2):
        notifier.fan_out(_event(n, "billing"), get_publisher())
    [window] = notifier.digests.waiting()
    _close_all(notifier)
    [envelope] = _drain()
    assert envelope["id"] == digest_delivery_id(subscription, window.start)
    assert (envelope["owner"], envelope["test"]) == ("billing", False)


@pytest.mark.parametrize("second", ["shop", None])
def test_a_digest_mixing_publishers_is_nobodys(notifier: Notifier, second: str | None) -> None:
    notifier.subscriptions.add("order.shipped", "dev", "ops", digest="1h")
    notifier.fan_out(_event(1, "billing"), get_publisher())
    notifier.fan_out(_event(2, second), get_publisher())
    _close_all(notifier)
    [envelope] = _drain()
    assert envelope["owner"] is None and envelope["test"] is False


def test_a_test_keys_event_joins_no_digest(notifier: Notifier) -> None:
    notifier.subscriptions.add("order.shipped", "dev", "ops", digest="1h")
    done = notifier.fan_out(_event(1, "ci", test=True), get_publisher())
    assert (done.collected, done.skipped, done.queued) == (0, 1, 0)
    assert notifier.digests.waiting() == []
    [(outcome, _)] = notifier.events.get(_event(1).id).deliveries  # type: ignore[union-attr]
    assert outcome.outcome == "skipped" and "test key" in (outcome.reason or "")
    assert _drain() == []
