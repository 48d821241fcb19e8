"""``delivery.notify``: publish one event for the workers to fan out to its subscriptions.

Thin like ``send``: it validates, derives the event's id and publishes one task. The
subscriptions, templates and rendering are worker-side (``delivery.notifications``).
"""

import uuid
from collections.abc import Mapping
from typing import Any

from delivery.clock import utcnow
from delivery.producer.publisher import get_publisher
from delivery.tracing import current_traceparent
from schemas.events import Event, EventReceipt

#: Namespace for event ids derived from ``(event name, idempotency_key)``.
EVENT_NAMESPACE = uuid.UUID("c4a1e9d2-7b3f-4e68-a05c-1d9e8f2b6a73")


def event_id(event: str, idempotency_key: str | None) -> str:
    """The same ``(event, idempotency_key)`` always yields the same id; without a key, a
    new random one."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{event}\x00{idempotency_key}"))


def build_event(
    event: str,
    context: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    category: str | None = None,
    owner: str | None = None,
    test: bool = False,
    fixed_id: str | None = None,
) -> Event:
    """The validated event, its id derived (``notify`` publishes it; so does the API).
    ``owner`` and ``test``: the API key that publishes it, whose id (``fixed_id``) the API
    derives per key.

    Raises:
        pydantic.ValidationError: a bad event name, context or key.
    """
    if fixed_id is None:
        fixed_id = event_id(event, idempotency_key) if isinstance(event, str) else None
    return Event.model_validate(
        {
            "id": fixed_id or str(uuid.uuid4()),
            "name": event,
            "context": dict(context) if isinstance(context, Mapping) else context,
            "idempotency_key": idempotency_key,
            "occurred_at": utcnow(),
            "category": category,
            "traceparent": current_traceparent(),
            "owner": owner,
            "test": test,
        }
    )


def notify(
    event: str,
    context: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    category: str | None = None,
) -> EventReceipt:
    """Publish an event; the workers make one delivery per subscription to it.

    ``context`` is a JSON object the subscriptions' templates, addresses and filters are
    rendered with. The receipt's ``id`` is the event's id: ``delivery status ID`` shows the
    event and the deliveries it made. Notifying again with the same ``idempotency_key``
    sends nothing more.

    ``category`` sets the category of every delivery the event makes; without it, each
    subscription's own category (``--category``) applies.

    Raises:
        pydantic.ValidationError: a bad event name, context or category; nothing was
            enqueued.
        PublishError: the broker could not be reached within ``DELIVERY_PUBLISH_TIMEOUT``.
    """
    validated = build_event(event, context, idempotency_key=idempotency_key, category=category)
    get_publisher().publish_event(validated)
    return EventReceipt(
        id=validated.id, event=validated.name, idempotency_key=validated.idempotency_key
    )
