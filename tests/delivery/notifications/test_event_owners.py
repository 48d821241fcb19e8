"""Who owns what an event makes (issue 27): the fan-out passes the API key and its test
flag on to every delivery; a digest is a key's only if all its events are; a test key's
event joins no digest. On a real SQLite log and the in-memory broker."""

from datetime import UTC, datetime

import pytest

from delivery.notifications import Notifier
from delivery.notifications.closing import CLOSE_GRACE, close_digests
from delivery.notifications.digests import digest_delivery_id
from delivery.producer.events import build_event
from delivery.producer.publisher import get_publisher
from schemas.events import Event
from tests.delivery.notifications.conftest import drain_envelopes


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
    made = sorted((e["owner"] or "", e["test"], e["address"]) for e in drain_envelopes())
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
    [envelope] = drain_envelopes()
    assert envelope["id"] == digest_delivery_id(subscription, window.start)
    assert (envelope["owner"], envelope["test"]) == ("billing", False)


@pytest.mark.parametrize("second", ["shop", None])
def test_a_digest_mixing_publishers_is_nobodys(notifier: Notifier, second: str | None) -> None:
    notifier.subscriptions.add("order.shipped", "dev", "ops", digest="1h")
    notifier.fan_out(_event(1, "billing"), get_publisher())
    notifier.fan_out(_event(2, second), get_publisher())
    _close_all(notifier)
    [envelope] = drain_envelopes()
    assert envelope["owner"] is None and envelope["test"] is False


def test_a_test_keys_event_joins_no_digest(notifier: Notifier) -> None:
    notifier.subscriptions.add("order.shipped", "dev", "ops", digest="1h")
    done = notifier.fan_out(_event(1, "ci", test=True), get_publisher())
    assert (done.collected, done.skipped, done.queued) == (0, 1, 0)
    assert notifier.digests.waiting() == []
    [(outcome, _)] = notifier.events.get(_event(1).id).deliveries  # type: ignore[union-attr]
    assert outcome.outcome == "skipped" and "test key" in (outcome.reason or "")
    assert drain_envelopes() == []
