"""Subscriptions: an address on a channel, subscribed to an event, optionally templated and
filtered (the Oberon shape: every service a repository enabled gets the push)."""

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import sessionmaker

from delivery.clock import utcnow
from delivery.errors import ConfigurationError, RenderError, TemplateRefused
from delivery.log.tables import ChannelRow
from delivery.notifications.periods import MIN_DIGEST, check_period
from delivery.notifications.sandbox import TEXT, evaluate, render
from delivery.notifications.tables import SubscriptionRow, TemplateRow
from schemas.events import EVENT_NAME_PATTERN, MAX_EVENT_NAME
from schemas.messages import Category, PerRecipient

_CATEGORY: TypeAdapter[str] = TypeAdapter(Category)
_PER_RECIPIENT: TypeAdapter[str] = TypeAdapter(PerRecipient)


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    event: str
    channel: str
    address: str
    template: str | None = None
    filter: str | None = None
    paused: bool = False
    created_at: datetime | None = None
    #: The deliveries' category, unless ``notify`` names one.
    category: str | None = None
    #: At most N deliveries per address per period (``3/h``); the worker enforces it.
    per_recipient: str | None = None
    #: A digest window (``1h``): None sends each event on its own.
    digest: str | None = None

    def matches(self, variables: Mapping[str, Any]) -> bool:
        """Whether the filter lets this event through (no filter: always).

        Raises:
            RenderError: the filter failed on these variables.
        """
        if self.filter is None:
            return True
        try:
            return bool(evaluate(TEXT.expression(self.filter), variables))
        except (RenderError, TemplateRefused) as exc:
            raise RenderError(f"filter {self.filter!r}: {exc}") from None

    def address_for(self, variables: Mapping[str, Any]) -> str:
        """The address, rendered with the event's context (a plain one is itself).

        Raises:
            RenderError: it failed on these variables, or rendered empty.
        """
        try:
            address = render(TEXT.template(self.address), variables).strip()
        except (RenderError, TemplateRefused) as exc:
            raise RenderError(f"address {self.address!r}: {exc}") from None
        if not address:
            raise RenderError(f"address {self.address!r} rendered empty")
        return address

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "channel": self.channel,
            "address": self.address,
            "template": self.template,
            "filter": self.filter,
            "paused": self.paused,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "category": self.category,
            "per_recipient": self.per_recipient,
            "digest": self.digest,
        }


class SubscriptionStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add(
        self,
        event: str,
        channel: str,
        address: str,
        *,
        template: str | None = None,
        filter: str | None = None,
        category: str | None = None,
        per_recipient: str | None = None,
        digest: str | None = None,
        shortest_digest: int = MIN_DIGEST,
    ) -> Subscription:
        """Check and store a subscription.

        ``shortest_digest`` is the shortest digest window allowed, in seconds (tests
        lower it; people get a minute).

        Raises:
            ConfigurationError: a bad event name, category, throttle or digest window, or
                no such channel or template.
            TemplateRefused: the address or filter does not compile.
        """
        if len(event) > MAX_EVENT_NAME or not re.match(EVENT_NAME_PATTERN, event):
            raise ConfigurationError(
                f"event name {event!r} must be dotted lower-case words such as 'order.shipped'"
            )
        if not address.strip():
            raise ConfigurationError("the address is empty")
        try:
            TEXT.template(address)
        except TemplateRefused as exc:
            raise TemplateRefused(f"address: {exc}", lineno=exc.lineno) from None
        if filter is not None:
            try:
                TEXT.expression(filter)
            except TemplateRefused as exc:
                raise TemplateRefused(f"filter: {exc}", lineno=exc.lineno) from None
        _check_options(category, per_recipient, digest, shortest_digest)
        row = SubscriptionRow(
            id=str(uuid.uuid4()),
            event=event,
            channel=channel,
            address=address.strip(),
            template=template,
            filter=filter,
            paused=False,
            created_at=utcnow(),
            category=category,
            per_recipient=per_recipient,
            digest=digest,
        )
        with self._sessions.begin() as session:
            if session.get(ChannelRow, channel) is None:
                raise ConfigurationError(f"no channel named {channel!r}; add it first")
            if template is not None and session.get(TemplateRow, template) is None:
                raise ConfigurationError(f"no template named {template!r}; add it first")
            session.add(row)
        return _subscription(row)

    def all(self, *, event: str | None = None) -> list[Subscription]:
        query = select(SubscriptionRow).order_by(SubscriptionRow.event, SubscriptionRow.created_at)
        if event is not None:
            query = query.where(SubscriptionRow.event == event)
        with self._sessions() as session:
            return [_subscription(row) for row in session.scalars(query).all()]

    def get(self, subscription_id: str) -> Subscription | None:
        with self._sessions() as session:
            row = session.get(SubscriptionRow, subscription_id)
            return _subscription(row) if row is not None else None

    def active(self, event: str) -> list[Subscription]:
        """The event's subscriptions that are not paused, in a fixed order."""
        query = (
            select(SubscriptionRow)
            .where(SubscriptionRow.event == event, SubscriptionRow.paused.is_(False))
            .order_by(SubscriptionRow.id)
        )
        with self._sessions() as session:
            return [_subscription(row) for row in session.scalars(query).all()]

    def set_paused(self, subscription_id: str, paused: bool) -> bool:
        """Pause or resume a subscription. False if there is none with that id."""
        with self._sessions.begin() as session:
            return bool(
                session.execute(
                    update(SubscriptionRow)
                    .where(SubscriptionRow.id == subscription_id)
                    .values(paused=paused)
                ).rowcount  # type: ignore[attr-defined]
            )

    def remove(self, subscription_id: str) -> bool:
        with self._sessions.begin() as session:
            return bool(
                session.execute(
                    delete(SubscriptionRow).where(SubscriptionRow.id == subscription_id)
                ).rowcount  # type: ignore[attr-defined]
            )


def _check_options(
    category: str | None, per_recipient: str | None, digest: str | None, shortest_digest: int
) -> None:
    """Refuse a bad category, throttle or digest window before anything is stored.

    Raises:
        ConfigurationError: what is wrong, in words a person can act on.
    """
    checks: list[tuple[str, str | None, TypeAdapter[str]]] = [
        ("category", category, _CATEGORY),
        ("per-recipient", per_recipient, _PER_RECIPIENT),
    ]
    for name, value, adapter in checks:
        if value is None:
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigurationError(f"{name}: {reason}") from None
    if digest is not None:
        try:
            check_period(digest, shortest=shortest_digest)
        except ValueError as exc:
            raise ConfigurationError(f"digest: {exc}") from None


def _subscription(row: SubscriptionRow) -> Subscription:
    return Subscription(
        id=row.id,
        event=row.event,
        channel=row.channel,
        address=row.address,
        template=row.template,
        filter=row.filter,
        paused=row.paused,
        created_at=row.created_at,
        category=row.category,
        per_recipient=row.per_recipient,
        digest=row.digest,
    )
