"""The recipients' table: one row of preferences per address (migration ``0008``).

On the log's ``Base``, so the one Alembic history (``migrations/``) creates it. One row per
address, rules kept as JSON in it, so the worker reads a whole batch's preferences with one
primary-key ``IN`` query and a change rewrites one row in one transaction.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from delivery.log.tables import Base, UTCDateTime


class RecipientPreferencesRow(Base):
    __tablename__ = "recipient_preferences"

    #: ``delivery.recipients.preference_key`` of the address.
    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    #: An IANA name (``Europe/London``); quiet hours are read in UTC without one.
    timezone: Mapped[str | None] = mapped_column(String(64))
    #: ``HH:MM-HH:MM`` local time, or None.
    quiet: Mapped[str | None] = mapped_column(String(11))
    #: ``[{"channel": …, "category": …, "enabled": …}]``; None stands for "any".
    rules: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
