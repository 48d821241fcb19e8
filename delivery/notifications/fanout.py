"""Fan an event out: one delivery per active subscription, each rendered from the context.

Every delivery's id is derived from the event's id and the subscription's, so a replayed
event, or the broker handing the fan-out task over twice, makes the same deliveries again,
and the workers (which skip a delivery id the log has done) send each once.

A digest subscription (``--digest 1h``) gets no delivery per event: the event is collected
in its window (``delivery.notifications.digests``), which becomes one delivery when it
closes.

A delivery's category is the one ``notify`` gave, else its subscription's. It carries the
subscription's id and throttle per recipient, which the worker enforces.

An event published with an API key makes deliveries owned by that key (which reads them
through ``/v1/deliveries``), and a test key's event makes only test deliveries (no
provider is called). A test key's event joins no digest: a window mixes events from any
publisher and is sent for real, so it is skipped for digest subscriptions, saying why.
"""

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from delivery.clock import utcnow
from delivery.errors import RenderError
from delivery.log import DeliveryLog
from delivery.notifications.digests import DigestStore, digest_delivery_id
from delivery.notifications.events import EventDelivery, EventStore
from delivery.notifications.links import unsubscribe_link
from delivery.notifications.operational import held_by_itself
from delivery.notifications.periods import as_datetime, period_seconds
from delivery.notifications.subscriptions import Subscription, SubscriptionStore
from delivery.notifications.templates import Template, TemplateStore, payload_of
from delivery.producer.publisher import Outgoing, Publisher
from schemas import Envelope, Payload, Settings
from schemas.events import Event
from schemas.validation import explain

logger = logging.getLogger(__name__)

#: Namespace for delivery ids derived from ``(event id, subscription id)``.
FANOUT_NAMESPACE = uuid.UUID("0b6f3c1e-9a4d-5e27-8c13-2f7a9d4e6b58")


def fanout_delivery_id(event_id: str, subscription_id: str) -> str:
    """The delivery an event makes for a subscription: the same on every replay."""
    return str(uuid.uuid5(FANOUT_NAMESPACE, f"{event_id}\x00{subscription_id}"))


def variables_of(event: Event) -> dict[str, Any]:
    """What templates see: the context's keys, and ``event`` (name and id) unless the
    context has a key of that name."""
    return {"event": {"name": event.name, "id": event.id}, **event.context}


@dataclass(frozen=True, slots=True)
class FanOut:
    """What one fan-out did."""

    event_id: str
    queued: int = 0
    failed: int = 0
    skipped: int = 0
    #: The event had been fanned out before: nothing was done again.
    replayed: bool = False
    #: Collected in a digest subscription's window, to be sent when it closes.
    collected: int = 0

    def describe(self) -> str:
        if self.replayed:
            return "replayed"
        digest = f", {self.collected} collected for digests" if self.collected else ""
        return f"{self.queued} queued, {self.failed} failed, {self.skipped} skipped{digest}"


class Notifier:
    """Fans events out. Built on the worker's log (``get_assembly().log``)."""

    def __init__(self, log: DeliveryLog) -> None:
        self.log = log
        self.events = EventStore(log.engine)
        self.subscriptions = SubscriptionStore(log.engine)
        self.templates = TemplateStore(log.engine)
        self.digests = DigestStore(log.engine)

    def fan_out(self, event: Event, publisher: Publisher) -> FanOut:
        """Make one delivery per active subscription, record the event and what it made,
        publish them, and mark the event fanned out.

        Raises:
            PublishError: the broker stayed unreachable; run again (nothing is sent twice).
        """
        if self.events.fanned_out(event.id):
            logger.info("event %s was fanned out already; nothing to do", event.id)
            return FanOut(event.id, replayed=True)
        variables = variables_of(event)
        templates: dict[str, Template | None] = {}
        outgoing: list[Outgoing] = []
        outcomes: list[EventDelivery] = []
        for subscription in self.subscriptions.active(event.name):
            delivery_id = fanout_delivery_id(event.id, subscription.id)
            # The address as far as it got: rendered, or its template if that failed.
            address = subscription.address
            try:
                if held := held_by_itself(event.name, event.context, subscription.channel):
                    outcomes.append(_outcome(subscription, delivery_id, "skipped", held))
                    continue
                if not subscription.matches(variables):
                    outcomes.append(
                        _outcome(
                            subscription, delivery_id, "skipped", f"filter {subscription.filter}"
                        )
                    )
                    continue
                if subscription.digest is not None and event.test:
                    outcomes.append(
                        _outcome(subscription, delivery_id, "skipped", _TEST_NOT_DIGESTED)
                    )
                    continue
                if subscription.digest is not None:
                    outcomes.append(self._collect(event, subscription, subscription.digest))
                    continue
                address = subscription.address_for(variables)
                envelope = self.envelope(
                    subscription,
                    delivery_id,
                    address,
                    variables,
                    data={"event": event.name, "event_id": event.id, **event.context},
                    message=event.name,
                    category=event.category or subscription.category,
                    settings=publisher.settings,
                    templates=templates,
                    traceparent=event.traceparent,
                    owner=event.owner,
                    test=event.test,
                )
            except RenderError as exc:
                reason = f"could not render for event {event.name} ({event.id}): {exc}"
                self.log.reject(
                    delivery_id,
                    channel=subscription.channel,
                    address=address,
                    reason=reason,
                    owner=event.owner,
                    test=event.test,
                )
                outcomes.append(
                    EventDelivery(
                        subscription.id,
                        delivery_id,
                        subscription.channel,
                        address,
                        "failed",
                        reason,
                    )
                )
                continue
            outgoing.append((envelope, None))
            outcomes.append(
                EventDelivery(
                    subscription.id, delivery_id, envelope.channel, envelope.address, "queued"
                )
            )
        # Recorded before publishing, so `delivery status EVENT` lists every delivery even
        # before a worker has claimed it.
        self.events.record(event, outcomes)
        if outgoing:
            publisher.publish_envelopes(outgoing, batch=True)
        self.events.mark_fanned_out(event.id)
        counts = {kind: sum(o.outcome == kind for o in outcomes) for kind in _KINDS}
        logger.info(
            "event %s (%s): %d queued, %d failed, %d skipped, %d collected for digests",
            event.id,
            event.name,
            counts["queued"],
            counts["failed"],
            counts["skipped"],
            counts["collected"],
        )
        return FanOut(
            event.id,
            counts["queued"],
            counts["failed"],
            counts["skipped"],
            collected=counts["collected"],
        )

    def _collect(self, event: Event, subscription: Subscription, digest: str) -> EventDelivery:
        """Put the event in the digest subscription's current window (once, however often
        it is replayed); the delivery it will join is named in the outcome."""
        period = period_seconds(digest)
        start = self.digests.collect(subscription.id, event, period=period, now=utcnow())
        closes = as_datetime(start + period).isoformat()
        return _outcome(
            subscription,
            digest_delivery_id(subscription.id, start),
            "collected",
            f"digest {digest}: sent when its window closes at {closes}",
        )

    def envelope(
        self,
        subscription: Subscription,
        delivery_id: str,
        address: str,
        variables: Mapping[str, Any],
        *,
        data: dict[str, Any],
        message: str,
        category: str | None,
        settings: Settings,
        templates: dict[str, Template | None],
        traceparent: str | None = None,
        owner: str | None = None,
        test: bool = False,
    ) -> Envelope:
        """The subscription's delivery to ``address``, its payload rendered with
        ``variables`` and ``{{ unsubscribe_url }}`` (without a template, ``message`` and
        ``data`` are the payload). ``owner`` and ``test``: the API key whose event made it,
        and whether that is a test key (no provider is called).

        Raises:
            RenderError: the template failed on this context, or the result is invalid.
        """
        payload: Payload
        if subscription.template is None:
            # The uniform payload of the seed's brokers: the event and its context.
            payload = payload_of(message=message, data=data)
        else:
            if subscription.template not in templates:
                templates[subscription.template] = self.templates.get(subscription.template)
            template = templates[subscription.template]
            if template is None:
                raise RenderError(f"template {subscription.template!r} no longer exists")
            link = unsubscribe_link(
                settings, address=address, channel=subscription.channel, category=category
            )
            payload = template.render({**variables, "unsubscribe_url": link}, data=data)
        try:
            return Envelope(
                id=delivery_id,
                channel=subscription.channel,
                address=address,
                payload=payload,
                category=category,
                subscription=subscription.id,
                per_recipient=subscription.per_recipient,
                traceparent=traceparent,
                owner=owner,
                test=test,
            )
        except ValidationError as exc:
            raise RenderError("; ".join(explain(exc, limit=3))) from None


_KINDS = ("queued", "failed", "skipped", "collected")
#: Why a test key's event makes nothing for a digest subscription.
_TEST_NOT_DIGESTED = "a test key's event joins no digest (a digest is sent for real)"


def _outcome(subscription: Subscription, delivery_id: str, kind: str, reason: str) -> EventDelivery:
    return EventDelivery(
        subscription.id, delivery_id, subscription.channel, subscription.address, kind, reason
    )
