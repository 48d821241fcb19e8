"""The notification tables: templates, subscriptions, events and what each event made.

On the log's ``Base``, so the one Alembic history (``migrations/``) creates them.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

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
