"""The tables behind receipts that always land (migration ``0016``).

On the log's ``Base``, so the one Alembic history (``migrations/``) creates them.

* ``early_receipts``: a provider's status callback that named a reference no delivery has
  yet (the worker records Twilio's message SID only once Twilio has answered the send,
  and Twilio may call back first). Matched and removed as soon as the reference is
  recorded; unmatched ones are dropped after ``EARLY_RECEIPT_LIFETIME``.
* ``receipt_lookups``: per channel, how far the timeout look-ups have gone through the
  deliveries still without a receipt (by ``delivered_at``, then id), so no delivery is
  looked up twice and no run scans history.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from delivery.log.tables import Base, UTCDateTime


class EarlyReceiptRow(Base):
    __tablename__ = "early_receipts"
    __table_args__ = (
        # A provider's retry of one callback is kept once, as the receipts table does.
        UniqueConstraint("channel", "provider_ref", "provider_status"),
        # Matching looks a recorded reference up; the clean-up drops the oldest.
        Index("ix_early_receipts_provider_ref", "provider_ref"),
        Index("ix_early_receipts_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(64))
    provider_ref: Mapped[str] = mapped_column(String(255))
    #: What the receipt means here: confirmed, bounced or pending.
    status: Mapped[str] = mapped_column(String(16))
    #: The provider's own word for it (Twilio's MessageStatus).
    provider_status: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(32))
    #: The recipient as the provider names it (Twilio's ``To``), for the suppression list:
    #: an erasure of the address removes the row.
    address: Mapped[str | None] = mapped_column(String(320))
    #: A permanent bounce: the address is suppressed once the receipt is matched.
    permanent: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReceiptLookupRow(Base):
    __tablename__ = "receipt_lookups"

    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The last delivery looked at: its ``delivered_at``, then its id (ties are broken by id).
    delivered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivery_id: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
