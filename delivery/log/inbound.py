"""The log's tables for what comes back: inbound backends and messages, what handled them,
providers' delivery receipts and the channels' suppression lists (migration ``0005``)."""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from delivery.log.tables import Base, UTCDateTime


class InboundBackendRow(Base):
    """A configured inbound backend: requests reach it at ``/inbound/NAME``."""

    __tablename__ = "inbound_backends"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    #: Non-secret config fields, as JSON.
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: Secret config fields: a Fernet token over their JSON, or None when there are none.
    secrets: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class InboundMessageRow(Base):
    """A message a backend accepted. A provider's retry names the same provider id and is
    not a second message."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("backend", "provider_id"),
        Index("ix_inbound_messages_backend_received", "backend", "received_at"),
        Index("ix_inbound_messages_received", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    backend: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    identity: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON)
    provider_id: Mapped[str | None] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: received, handled, unhandled, retrying or failed (``delivery.inbound.inbox``).
    status: Mapped[str] = mapped_column(String(16))
    routed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class InboundHandlingRow(Base):
    """What one handler made of one message."""

    __tablename__ = "inbound_handling"
    __table_args__ = (UniqueConstraint("message_id", "handler"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("inbound_messages.id", ondelete="CASCADE"), index=True
    )
    handler: Mapped[str] = mapped_column(String(64))
    #: handled, retry or failed.
    outcome: Mapped[str] = mapped_column(String(16))
    #: What came of it: the handler's own summary, or the error.
    result: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReceiptRow(Base):
    """A provider's status callback about a message it accepted."""

    __tablename__ = "receipts"
    __table_args__ = (UniqueConstraint("channel", "provider_ref", "provider_status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(64))
    #: None when no delivery has this provider reference (recorded all the same).
    delivery_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    provider_ref: Mapped[str] = mapped_column(String(255))
    #: What the receipt means here: confirmed, bounced or pending.
    status: Mapped[str] = mapped_column(String(16))
    #: The provider's own word for it (Twilio's MessageStatus).
    provider_status: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class SuppressionRow(Base):
    """An address a channel no longer sends to (an opt-out, a permanent bounce)."""

    __tablename__ = "suppressions"

    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64))
    #: Where it came from: a provider reference, an inbound message id, a person.
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
