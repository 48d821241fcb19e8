"""Closing digest windows: the job the workers take turns at (``workers.sweeper``).

Each turn claims the windows that have closed, renders one delivery per window with
``{{ events }}`` (the list of the events' contexts), publishes them and marks them
published. A window is closed ``CLOSE_GRACE`` seconds after its end, so fan-outs still
committing events for it make it in; see ``delivery.notifications.digests`` for why each
window is sent once however many workers close it and whenever one dies.
"""

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from delivery.errors import RenderError
from delivery.notifications.digests import Claimed, Item
from delivery.notifications.fanout import Notifier
from delivery.notifications.periods import as_datetime, period_seconds
from delivery.notifications.subscriptions import Subscription
from delivery.notifications.templates import Template
from delivery.producer.publisher import Outgoing, Publisher

logger = logging.getLogger(__name__)

#: Seconds past a window's end before it is closed: fan-outs that put an event in it just
#: before its end have committed by then.
CLOSE_GRACE = 2.0
#: A delivery claimed this long ago and still not marked published lost its worker
#: between the two; it is published again, under the same id.
REPUBLISH_AFTER = timedelta(minutes=1)


def close_digests(notifier: Notifier, publisher: Publisher, *, now: datetime) -> int:
    """Send every digest window that has closed; how many deliveries were made.

    Raises:
        PublishError: the broker stayed unreachable; the next turn publishes them again.
    """
    store = notifier.digests
    subscriptions: dict[str, Subscription | None] = {}
    claimed: dict[str, Claimed] = {}
    for window in store.waiting():
        if window.subscription_id not in subscriptions:
            subscriptions[window.subscription_id] = notifier.subscriptions.get(
                window.subscription_id
            )
        subscription = subscriptions[window.subscription_id]
        if subscription is not None and subscription.digest is not None:
            end = window.start + period_seconds(subscription.digest)
            if end + CLOSE_GRACE > now.timestamp():
                continue  # still open
        # A removed subscription's items are claimed too, and end as a failed delivery.
        found = store.claim(window, now=now)
        if found is not None:
            claimed[found.delivery_id] = found
    for late in store.unpublished(claimed_before=now - REPUBLISH_AFTER):
        claimed.setdefault(late.delivery_id, late)
    if not claimed:
        store.forget(now=now)
        return 0
    outgoing = _render(notifier, publisher, list(claimed.values()), subscriptions)
    if outgoing:
        publisher.publish_envelopes(outgoing, batch=True)
    store.mark_published(list(claimed), now=now)
    logger.info("digests: %d windows closed, %d deliveries queued", len(claimed), len(outgoing))
    return len(claimed)


def _render(
    notifier: Notifier,
    publisher: Publisher,
    claimed: Sequence[Claimed],
    subscriptions: dict[str, Subscription | None],
) -> list[Outgoing]:
    """The envelopes of the claimed windows; those that cannot be made are recorded as
    failed deliveries, with the reason."""
    templates: dict[str, Template | None] = {}
    outgoing: list[Outgoing] = []
    for window in claimed:
        if window.subscription_id not in subscriptions:
            subscriptions[window.subscription_id] = notifier.subscriptions.get(
                window.subscription_id
            )
        subscription = subscriptions[window.subscription_id]
        items = notifier.digests.items(window.delivery_id)
        if subscription is None or subscription.digest is None or not items:
            if items:
                notifier.log.reject(
                    window.delivery_id,
                    channel="-",
                    address="-",
                    reason=f"digest of {len(items)} events: its subscription was removed",
                    owner=_shared_owner(items),
                )
            continue
        variables = _variables(subscription, subscription.digest, window, items)
        address = subscription.address
        try:
            address = subscription.address_for(variables)
            envelope = notifier.envelope(
                subscription,
                window.delivery_id,
                address,
                variables,
                data={
                    "event": subscription.event,
                    "events": variables["events"],
                    "window": variables["window"],
                },
                message=f"{subscription.event}: {len(items)} events",
                category=subscription.category or _shared_category(items),
                settings=publisher.settings,
                templates=templates,
                owner=_shared_owner(items),
            )
        except RenderError as exc:
            notifier.log.reject(
                window.delivery_id,
                channel=subscription.channel,
                address=address,
                reason=f"could not render the digest of {len(items)} {subscription.event}: {exc}",
                owner=_shared_owner(items),
            )
            continue
        outgoing.append((envelope, None))
    return outgoing


def _variables(
    subscription: Subscription, digest: str, window: Claimed, items: Sequence[Item]
) -> dict[str, Any]:
    """What a digest's templates see: ``events`` (the contexts, oldest first), ``window``
    (its start, end and count) and ``event`` (the name); the first event's context too,
    so that a templated address such as ``{{ email }}`` renders."""
    end = window.start + period_seconds(digest)
    return {
        **items[0].context,
        "event": {"name": subscription.event, "id": window.delivery_id},
        "events": [item.context for item in items],
        "window": {
            "start": as_datetime(window.start).isoformat(),
            "end": as_datetime(end).isoformat(),
            "count": len(items),
        },
    }


def _shared_category(items: Sequence[Item]) -> str | None:
    """The category ``notify`` gave every event of the window, if they all agree."""
    categories = {item.category for item in items}
    return categories.pop() if len(categories) == 1 else None


def _shared_owner(items: Sequence[Item]) -> str | None:
    """The API key that published every event of the window, if one did; a window that
    mixes keys, or a key's events with Python's, belongs to none (admin keys read it)."""
    owners = {item.owner for item in items}
    return owners.pop() if len(owners) == 1 else None
