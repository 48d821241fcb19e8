"""The notification tables: templates, subscriptions, events and what each event made.

On the log's ``Base``, so the one Alembic history (``migrations/``) creates them.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import false

from delivery.log.tables import Base, UTCDateTime


class TemplateRow(Base):
    __tablename__ = "templates"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SubscriptionRow(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_event", "event"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(64))
    #: A template rendered with the event's context (a plain address renders as itself).
    address: Mapped[str] = mapped_column(Text)
    template: Mapped[str | None] = mapped_column(String(64))
    #: A sandboxed Jinja expression; a falsy result skips the subscription for that event.
    filter: Mapped[str | None] = mapped_column(Text)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The deliveries' category, unless ``notify`` names one (migration 0007).
    category: Mapped[str | None] = mapped_column(String(32))
    #: At most N deliveries per address per period (``3/h``), enforced by the worker.
    per_recipient: Mapped[str | None] = mapped_column(String(32))
    #: A digest window (``1h``): the events of each window become one delivery.
    digest: Mapped[str | None] = mapped_column(String(16))


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_received", "received_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    context: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Set once every subscription's delivery is recorded and published.
    fanned_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The name of the API key that published it (migration 0012); None: Python or the
    #: command line. A key reads only its own events.
    owner: Mapped[str | None] = mapped_column(String(64))
    #: Published with a test key (migration 0012): its deliveries call no provider.
    test: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class EventDeliveryRow(Base):
    """What one event did for one subscription: a delivery queued, failed, or skipped."""

    __tablename__ = "event_deliveries"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: Derived from the event and the subscription: the same on every replay.
    delivery_id: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(Text)
    #: queued (a delivery was made), failed (it could not be rendered) or skipped (filter).
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DigestItemRow(Base):
    """One event waiting in a digest subscription's window (migration 0007).

    The key is ``(subscription, event)``, so a replayed event adds nothing twice. When the
    window has closed, the items are claimed for one delivery (``delivery_id``) in one
    statement, then published; ``published_at`` says the delivery reached the broker, so a
    worker that died in between is followed by another that publishes it again.
    """

    __tablename__ = "digest_items"
    __table_args__ = (
        Index("ix_digest_items_open", "delivery_id", "window_start"),
        Index("ix_digest_items_published", "published_at", "claimed_at"),
    )

    subscription_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The window's start, whole seconds since the epoch: every worker computes the same.
    window_start: Mapped[int] = mapped_column(BigInteger)
    context: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The category ``notify`` gave the event, if any.
    category: Mapped[str | None] = mapped_column(String(32))
    #: The API key that published the event (migration 0012): a window's delivery is that
    #: key's only if every event in it is.
    owner: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivery_id: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
