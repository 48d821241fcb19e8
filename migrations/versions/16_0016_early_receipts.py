"""Receipts that arrive before the provider's reference is recorded.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

Chain position 16 of 16: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → … → 0015 → 0016.

Early receipts are kept until their reference is recorded; each channel gets a receipt
timeout, after which deliveries still without a receipt are looked up at the provider;
a partial index finds those deliveries without reading the rest of history.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DELIVERED = sa.text("status = 'delivered'")


def upgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("receipt_timeout", sa.Float(), nullable=True))
    op.create_index(
        "ix_deliveries_awaiting_receipt",
        "deliveries",
        ["channel", "delivered_at", "id"],
        sqlite_where=_DELIVERED,
        postgresql_where=_DELIVERED,
    )
    op.create_table(
        "early_receipts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("provider_ref", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider_status", sa.String(32), nullable=False),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("address", sa.String(320), nullable=True),
        sa.Column("permanent", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_early_receipts")),
        sa.UniqueConstraint(
            "channel",
            "provider_ref",
            "provider_status",
            name=op.f("uq_early_receipts_channel"),
        ),
    )
    op.create_index("ix_early_receipts_provider_ref", "early_receipts", ["provider_ref"])
    op.create_index("ix_early_receipts_received", "early_receipts", ["received_at"])
    op.create_table(
        "receipt_lookups",
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=False),
        sa.Column("delivery_id", sa.String(64), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("channel", name=op.f("pk_receipt_lookups")),
    )


def downgrade() -> None:
    op.drop_table("receipt_lookups")
    op.drop_index("ix_early_receipts_received", table_name="early_receipts")
    op.drop_index("ix_early_receipts_provider_ref", table_name="early_receipts")
    op.drop_table("early_receipts")
    op.drop_index("ix_deliveries_awaiting_receipt", table_name="deliveries")
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("receipt_timeout")
