"""Categories, per-recipient throttles and digests in the fan-out, on a real SQLite log and
the in-memory broker: what a subscription stores, what its envelopes carry, and how a
digest window is collected, closed once and sent once."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from delivery.engine.assembly import Assembly
from delivery.errors import ConfigurationError
from delivery.log.tables import DeliveryRow
from delivery.notifications import Notifier
from delivery.notifications.closing import CLOSE_GRACE, REPUBLISH_AFTER, close_digests
from delivery.notifications.digests import digest_delivery_id
from delivery.notifications.periods import check_period, period_seconds, window_start
from delivery.producer.events import build_event
from delivery.producer.publisher import get_publisher, reset_publisher
from delivery.recipients.unsubscribe import read_token
from schemas import Envelope, get_settings
from schemas.events import Event
from tests.delivery.notifications.conftest import drain_envelopes


def _event(n: int, *, category: str | None = None, key: str | None = None) -> Event:
    return build_event(
        "order.shipped", {"order": n}, idempotency_key=key or f"k{n}", category=category
    )


def _close(notifier: Notifier, now: datetime) -> int:
    return close_digests(notifier, get_publisher(), now=now)


# -- periods -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("1h", 3600), ("1d", 86400)])
def test_periods_read_as_seconds(text: str, seconds: int) -> None:
    assert check_period(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "0h", "1 h", "1H", "1w", "-1h", "1.5h", "1h\n"])
def test_a_bad_period_says_what_one_looks_like(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 15m, 1h or 1d"):
        check_period(text)


def test_a_period_too_short_or_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="outside 60 seconds to 7 days"):
        check_period("30s")
    with pytest.raises(ValueError, match="outside"):
        check_period("8d")
    assert check_period("2s", shortest=1) == 2


def test_windows_are_aligned_on_the_epoch() -> None:
    moment = datetime(2026, 12, 7, 10, 42, 17, tzinfo=UTC)
    assert window_start(moment, 3600) == int(datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp())
    assert window_start(moment, period_seconds("15m")) % 900 == 0


# -- subscriptions -------------------------------------------------------------------------


def test_a_subscription_keeps_its_category_throttle_and_digest(notifier: Notifier) -> None:
    added = notifier.subscriptions.add(
        "order.shipped", "dev", "x", category="orders", per_recipient="3/h", digest="1h"
    )
    [stored] = notifier.subscriptions.all()
    assert (stored.category, stored.per_recipient, stored.digest) == ("orders", "3/h", "1h")
    assert stored.to_json()["digest"] == "1h" and stored.id == added.id


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"category": "Orders"}, "category: a category is a short lower-case name"),
        ({"category": "a" * 33}, "category: "),
        ({"category": "bad\x00"}, "category: "),
        ({"per_recipient": "3/w"}, "per-recipient: .* e.g. 3/h"),
        ({"per_recipient": "0/h"}, "per-recipient: "),
        ({"digest": "1w"}, "digest: .* e.g. 15m, 1h or 1d"),
        ({"digest": "10s"}, "digest: .* outside 60 seconds"),
    ],
)
def test_bad_subscription_options_are_refused(
    notifier: Notifier, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        notifier.subscriptions.add("order.shipped", "dev", "x", **options)
    assert notifier.subscriptions.all() == []


# -- categories in the fan-out --------------------------------------------------------------


def test_fanned_out_envelopes_carry_category_subscription_and_throttle(
    notifier: Notifier,
) -> None:
    plain = notifier.subscriptions.add("order.shipped", "dev", "a", category="orders")
    throttled = notifier.subscriptions.add("order.shipped", "dev", "b", per_recipient="3/h")
    notifier.fan_out(_event(1), get_publisher())
    by_address = {e["address"]: Envelope.model_validate(e) for e in drain_envelopes()}
    assert by_address["a"].category == "orders" and by_address["a"].subscription == plain.id
    assert by_address["a"].per_recipient is None
    assert by_address["b"].category is None and by_address["b"].subscription == throttled.id
    assert by_address["b"].per_recipient == "3/h"


def test_the_category_notify_names_wins_over_the_subscriptions(notifier: Notifier) -> None:
    notifier.subscriptions.add("order.shipped", "dev", "a", category="orders")
    notifier.fan_out(_event(1, category="security"), get_publisher())
    [envelope] = drain_envelopes()
    assert envelope["category"] == "security"


def test_the_category_is_recorded_in_the_log_when_claimed(engine: Assembly) -> None:
    envelope = Envelope(
        id="c1", channel="dev", address="a", payload={"message": "x"}, category="billing"
    )
    engine.log.claim(envelope, lease=30)
    with engine.log._sessions() as session:
        row = session.get(DeliveryRow, "c1")
    assert row is not None and row.category == "billing"


def test_templates_get_an_empty_unsubscribe_url_for_critical_categories(
    notifier: Notifier,
) -> None:
    notifier.templates.add("t", text="order {{ order }} [{{ unsubscribe_url }}]")
    notifier.subscriptions.add("order.shipped", "dev", "a", template="t", category="security")
    notifier.fan_out(_event(7), get_publisher())
    [envelope] = drain_envelopes()
    assert envelope["payload"]["message"] == "order 7 []"


def test_templates_get_a_signed_unsubscribe_url_for_other_categories(
    notifier: Notifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIVERY_PUBLIC_URL", "https://delivery.example.com")
    get_settings.cache_clear()
    reset_publisher()
    notifier.templates.add("t", text="{{ unsubscribe_url }}")
    notifier.subscriptions.add("order.shipped", "dev", "ann@example.com", template="t")
    notifier.fan_out(_event(7, category="marketing"), get_publisher())
    [envelope] = drain_envelopes()
    link = envelope["payload"]["message"]
    assert link.startswith("https://delivery.example.com/unsubscribe/")
    target = read_token(get_settings(), link.rsplit("/", 1)[1])
    assert target is not None and target.category == "marketing"


# -- digests -------------------------------------------------------------------------------


def _digest(notifier: Notifier, **options: Any) -> str:
    notifier.templates.add(
        "digest",
        subject="{{ window.count }} orders shipped",
        text="{% for e in events %}#{{ e.order }} {% endfor %}",
    )
    return notifier.subscriptions.add(
        "order.shipped", "dev", "ops", template="digest", digest="1h", **options
    ).id


def test_a_digest_subscription_collects_events_instead_of_sending_them(
    notifier: Notifier,
) -> None:
    subscription = _digest(notifier)
    result = notifier.fan_out(_event(1), get_publisher())
    assert (result.queued, result.collected) == (0, 1)
    assert drain_envelopes() == []
    [window] = notifier.digests.waiting()
    assert window.subscription_id == subscription


def test_a_replayed_event_is_collected_once(notifier: Notifier) -> None:
    _digest(notifier)
    event = _event(1)
    notifier.fan_out(event, get_publisher())
    # The event store says "fanned out" to a replay; collecting again must add nothing
    # either (a fan-out killed between collecting and marking the event done).
    start = notifier.digests.collect(
        notifier.subscriptions.all()[0].id, event, period=3600, now=datetime.now(UTC)
    )
    assert len(notifier.digests.waiting()) == 1
    _close(notifier, datetime.fromtimestamp(start + 3600 + CLOSE_GRACE + 1, UTC))
    [envelope] = drain_envelopes()
    assert envelope["payload"]["message"] == "#1 "


def test_a_window_is_sent_once_when_it_closes(notifier: Notifier) -> None:
    subscription = _digest(notifier, category="orders")
    for n in (1, 2, 3):
        notifier.fan_out(_event(n), get_publisher())
    [window] = notifier.digests.waiting()
    end = datetime.fromtimestamp(window.start + 3600, UTC)
    # Still open (and within the grace after its end): nothing is sent.
    assert _close(notifier, end) == 0
    assert drain_envelopes() == []
    # Closed: one delivery, its id derived from the subscription and the window.
    assert _close(notifier, end + timedelta(seconds=CLOSE_GRACE + 1)) == 1
    [envelope] = drain_envelopes()
    assert envelope["id"] == digest_delivery_id(subscription, window.start)
    assert envelope["payload"]["subject"] == "3 orders shipped"
    assert envelope["payload"]["message"] == "#1 #2 #3 "
    assert envelope["category"] == "orders" and envelope["subscription"] == subscription
    # A second worker closing the same window, or the next turn, finds nothing.
    assert _close(notifier, end + timedelta(seconds=CLOSE_GRACE + 2)) == 0
    assert drain_envelopes() == []
    assert notifier.digests.waiting() == []


def test_a_claim_whose_worker_died_before_publishing_is_published_again_the_same(
    notifier: Notifier,
) -> None:
    subscription = _digest(notifier)
    notifier.fan_out(_event(1), get_publisher())
    [window] = notifier.digests.waiting()
    closed_at = datetime.fromtimestamp(window.start + 3600 + CLOSE_GRACE + 1, UTC)
    # Given a worker that claimed the window and died before publishing
    claimed = notifier.digests.claim(window, now=closed_at)
    assert claimed is not None
    assert _close(notifier, closed_at) == 0  # too soon to say its worker died
    # When a later turn comes, then the same delivery is published
    assert _close(notifier, closed_at + REPUBLISH_AFTER + timedelta(seconds=1)) == 1
    [envelope] = drain_envelopes()
    assert envelope["id"] == claimed.delivery_id == digest_delivery_id(subscription, window.start)


def test_an_event_too_late_for_its_windows_delivery_makes_a_second_one(
    notifier: Notifier,
) -> None:
    subscription = _digest(notifier)
    notifier.fan_out(_event(1), get_publisher())
    [window] = notifier.digests.waiting()
    closed_at = datetime.fromtimestamp(window.start + 3600 + CLOSE_GRACE + 1, UTC)
    assert _close(notifier, closed_at) == 1
    first = drain_envelopes()
    # A fan-out that computed the same window but committed after the close
    late = _event(2)
    notifier.digests.collect(
        subscription, late, period=3600, now=datetime.fromtimestamp(window.start + 5, UTC)
    )
    assert _close(notifier, closed_at + timedelta(seconds=1)) == 1
    [second] = drain_envelopes()
    assert second["id"] == digest_delivery_id(subscription, window.start, late.id)
    assert second["id"] != first[0]["id"] and second["payload"]["message"] == "#2 "


def test_without_a_template_a_digest_carries_the_contexts_in_its_data(
    notifier: Notifier,
) -> None:
    notifier.subscriptions.add("order.shipped", "dev", "ops", digest="15m")
    for n in (1, 2):
        notifier.fan_out(_event(n, category="orders"), get_publisher())
    [window] = notifier.digests.waiting()
    _close(notifier, datetime.fromtimestamp(window.start + 900 + CLOSE_GRACE + 1, UTC))
    [envelope] = drain_envelopes()
    assert envelope["payload"]["data"]["events"] == [{"order": 1}, {"order": 2}]
    assert envelope["payload"]["message"] == "order.shipped: 2 events"
    # Every event said "orders" and the subscription named none: the digest is "orders".
    assert envelope["category"] == "orders"


def test_a_removed_subscriptions_window_ends_as_a_failed_delivery(notifier: Notifier) -> None:
    subscription = _digest(notifier)
    notifier.fan_out(_event(1), get_publisher())
    [window] = notifier.digests.waiting()
    notifier.subscriptions.remove(subscription)
    _close(notifier, datetime.fromtimestamp(window.start + 3600 + CLOSE_GRACE + 1, UTC))
    assert drain_envelopes() == []
    record = notifier.log.get(digest_delivery_id(subscription, window.start))
    assert record is not None and record.status == "failed"
    assert "subscription was removed" in (record.last_error or "")


def test_nothing_waiting_costs_nothing_and_sends_nothing(notifier: Notifier) -> None:
    assert _close(notifier, datetime.now(UTC)) == 0
    assert drain_envelopes() == []
