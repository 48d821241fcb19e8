"""The delivery log's tables. Alembic (``migrations/``) creates them; the code only reads this."""

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import false, text


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the delivery log; use UTC-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Status(enum.StrEnum):
    QUEUED = "queued"  # reopened by `delivery retry`, waiting for a worker to claim it
    SENDING = "sending"  # claimed by a worker, attempt under way
    RETRYING = "retrying"  # an attempt failed; another is scheduled
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up, or could never be sent
    CONFIRMED = "confirmed"  # delivered, and a receipt says the handset or mailbox has it
    BOUNCED = "bounced"  # delivered, and a receipt says the provider gave up afterwards
    CANCELLED = "cancelled"  # cancelled before it was sent: never sent (``cancel``)
    SKIPPED = "skipped"  # never sent: the recipient's preferences or a throttle said no
    SCHEDULED = "scheduled"  # waits in the log until a time (the recipient's quiet hours)
    EXPIRED = "expired"  # its ttl passed before it could be sent: never sent late
    ERASED = "erased"  # its address was erased (``delivery erase``) before it was sent


#: Statuses of deliveries that wait in the log for ``next_attempt_at`` (the sweep sends them).
WAITING_IN_LOG = (Status.RETRYING, Status.SCHEDULED)

#: Statuses a delivery never leaves by itself: no worker sends it again.
FINAL_STATUSES = frozenset(
    {
        Status.DELIVERED,
        Status.FAILED,
        Status.CONFIRMED,
        Status.BOUNCED,
        Status.CANCELLED,
        Status.SKIPPED,
        Status.EXPIRED,
        Status.ERASED,
    }
)


class Outcome(enum.StrEnum):
    """How an attempt ended. An attempt is recorded when it ends; the claim counts it as
    it starts, so one a crash cut short is recorded as ``interrupted`` by the worker that
    takes the delivery over."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the worker died mid-attempt; the provider may have it
    SKIPPED = "skipped"  # not sent: a gate refused it for the recipient (never a failure)
    EXPIRED = "expired"  # not sent: its ttl had passed


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ChannelRow(Base):
    __tablename__ = "channels"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    dispatcher: Mapped[str] = mapped_column(String(64))
    #: Non-secret config fields, as JSON.
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: Secret config fields: a Fernet token over their JSON, or None when there are none.
    secrets: Mapped[str | None] = mapped_column(Text)
    retry_schedule: Mapped[list[float] | None] = mapped_column(JSON)
    rate_limit: Mapped[str | None] = mapped_column(String(32))
    #: Paused by a person (`delivery channels pause`): deliveries wait, nothing is sent.
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Failed attempts in a row; the circuit breaker opens at DELIVERY_BREAKER_THRESHOLD.
    # The server default is migration 0002's, which added the column to existing rows.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: While set, the breaker is open: deliveries wait until then, when one probe goes.
    breaker_open_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The backup channel a delivery moves to when this one's provider is down.
    fallback: Mapped[str | None] = mapped_column(String(64))
    #: At most this many deliveries per address and period (``3/h``); more are skipped
    #: (migration 0009).
    per_recipient: Mapped[str | None] = mapped_column(String(32))
    #: Seconds a delivery waits for a receipt before it is looked up (None: 72 h; 0016).
    receipt_timeout: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


#: Only deliveries an API key sent (a partial index): those from Python pay nothing for it.
OWNED: dict[str, Any] = {
    f"{dialect}_where": text("owner IS NOT NULL") for dialect in ("sqlite", "postgresql")
}
#: Only delivered deliveries (a partial index): they leave it when a receipt moves them on.
AWAITING: dict[str, Any] = {
    f"{dialect}_where": text("status = 'delivered'") for dialect in ("sqlite", "postgresql")
}


class DeliveryRow(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_deliveries_channel_created", "channel", "created_at"),
        Index("ix_deliveries_created", "created_at"),
        # Receipts name a delivery by the provider's reference (migration 0005).
        Index("ix_deliveries_provider_ref", "provider_ref"),
        # The listing by channel and status, newest first, reads the index (migration
        # 0014; it replaced 0003's (channel, status), which scrapes no longer group by).
        Index("ix_deliveries_channel_status_created", "channel", "status", "created_at"),
        # The oldest waiting delivery per status in one index step (migration 0003); the
        # deliveries not yet ended, and the purge's oldest final ones, by status.
        Index("ix_deliveries_status_created", "status", "created_at"),
        # A key's own deliveries, newest first (migration 0010): its listing reads the index.
        Index("ix_deliveries_owner_created", "owner", "created_at"),
        # And those in one status (migration 0014): only deliveries an API key sent.
        Index("ix_deliveries_owner_status_created", "owner", "status", "created_at", **OWNED),
        # Delivered, no receipt yet, by channel and age: the receipt look-ups (0016).
        Index("ix_deliveries_awaiting_receipt", "channel", "delivered_at", "id", **AWAITING),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    dispatcher: Mapped[str | None] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Attempts made before the latest replay; the retry policy counts from here.
    attempt_base: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the sweep last re-enqueued this delivery (so it does not do so every pass).
    swept_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_ref: Mapped[str | None] = mapped_column(String(255))
    #: ``security``, ``marketing``…: what preferences and unsubscribe links act on
    #: (migration 0007). Written with the row when the delivery is first claimed.
    category: Mapped[str | None] = mapped_column(String(32))
    #: The name of the API key that sent it (migration 0010); None: sent from Python or
    #: the command line. A key reads and acts only on its own.
    owner: Mapped[str | None] = mapped_column(String(64))
    #: Sent with a test key (migration 0010): it goes the whole way, but no provider is
    #: called.
    test: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The subscription a fanned-out delivery came from, and its per-recipient throttle
    #: (migration 0009): a delivery sent again from the log is throttled as the first time.
    subscription: Mapped[str | None] = mapped_column(String(64))
    per_recipient: Mapped[str | None] = mapped_column(String(32))
    #: Not to be sent after this (the producer's ``ttl``; migration 0011).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AttemptRow(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("delivery_id", "number"),
        # Metrics scrapes (migration 0003): attempts by outcome and their durations
        # from the index alone.
        Index("ix_attempts_outcome_duration", "outcome", "duration_ms"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    provider_ref: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    worker: Mapped[str | None] = mapped_column(String(255))


class ApiKeyRow(Base):
    """An API key of ``delivery serve`` (migration 0003). Only a hash of the key is kept."""

    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The key's public part, which finds the row without comparing secrets.
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    #: SHA-256 of the whole key, hex: the key is high-entropy, so no slow hash is needed.
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Sees and acts on every delivery, not only its own (migration 0010).
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Its deliveries call no provider (migration 0010).
    test: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class PeriodicJobRow(Base):
    """When a site-wide periodic job (the sweep) next runs, and who ran it last (migration
    0006). Every worker looks now and then; the one whose update moves ``next_run_at`` on
    runs it, so a job runs once per interval whatever the number of workers, with no beat."""

    __tablename__ = "periodic_jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_run_by: Mapped[str | None] = mapped_column(String(255))
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RecipientSendRow(Base):
    """One delivery counted against a per-recipient throttle (migration 0009): the
    throttle counts the rows of its key within its period. Keyed by delivery, so a retry
    or a copy of the message counts once."""

    __tablename__ = "recipient_sends"
    __table_args__ = (
        Index("ix_recipient_sends_key_sent", "throttle", "address", "sent_at"),
        # The purge deletes a delivery's rows by its id (migration 0014).
        Index("ix_recipient_sends_delivery_id", "delivery_id"),
    )

    #: What the limit belongs to: ``channel:NAME`` or ``subscription:ID``.
    throttle: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: SHA-256 of the address, hex: any length of address fits, and none is kept here.
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RateScheduleRow(Base):
    """When a rate limit's next slot is free (migration 0013): a channel's ``--rate-limit``
    or an API key's, shared through the log where the broker is not Redis."""

    __tablename__ = "rate_schedules"

    #: The channel's name, or ``api-key:NAME``.
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: Seconds since the epoch.
    next_slot: Mapped[float] = mapped_column(Float)


class ErasureRow(Base):
    """An address erased (``delivery erase``; migration 0015), known only by its keyed hash:
    when, and how many rows of each kind went. Erasing it again adds to the counts."""

    __tablename__ = "erasures"
    # A worker asks for the erasures since a task message was published, once per task.
    __table_args__ = (Index("ix_erasures_erased_at", "erased_at"),)

    #: ``delivery.recipients.address_hash.keyed_hash`` of the address, hex.
    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: ``{"deliveries": n, "attempts": n, …}``: what the last erasure of it removed.
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
