"""Inbound: backends, messages and their handling; receipts; suppression lists.

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-02

Chain position 3 of 6: 0001 → 0002 → 0005 → 0004 → 0003 → 0006. The ids are not in chain order;
databases record them, so they stay, and the file name starts with the position.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbound_backends",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_inbound_backends")),
    )
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("identity", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("provider_id", sa.String(255), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("routed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_messages")),
        sa.UniqueConstraint("backend", "provider_id", name=op.f("uq_inbound_messages_backend")),
    )
    op.create_index(
        "ix_inbound_messages_backend_received", "inbound_messages", ["backend", "received_at"]
    )
    op.create_index("ix_inbound_messages_received", "inbound_messages", ["received_at"])
    op.create_table(
        "inbound_handling",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("handler", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["inbound_messages.id"],
            name=op.f("fk_inbound_handling_message_id_inbound_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_handling")),
        sa.UniqueConstraint("message_id", "handler", name=op.f("uq_inbound_handling_message_id")),
    )
    op.create_index("ix_inbound_handling_message_id", "inbound_handling", ["message_id"])
    op.create_table(
        "receipts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("delivery_id", sa.String(64), nullable=True),
        sa.Column("provider_ref", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider_status", sa.String(32), nullable=False),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_receipts_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipts")),
        sa.UniqueConstraint(
            "channel", "provider_ref", "provider_status", name=op.f("uq_receipts_channel")
        ),
    )
    op.create_index("ix_receipts_delivery_id", "receipts", ["delivery_id"])
    op.create_table(
        "suppressions",
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("channel", "address", name=op.f("pk_suppressions")),
    )
    # Receipts name a delivery by the provider's reference (Twilio's message SID).
    op.create_index("ix_deliveries_provider_ref", "deliveries", ["provider_ref"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_provider_ref", table_name="deliveries")
    op.drop_table("suppressions")
    op.drop_index("ix_receipts_delivery_id", table_name="receipts")
    op.drop_table("receipts")
    op.drop_index("ix_inbound_handling_message_id", table_name="inbound_handling")
    op.drop_table("inbound_handling")
    op.drop_index("ix_inbound_messages_received", table_name="inbound_messages")
    op.drop_index("ix_inbound_messages_backend_received", table_name="inbound_messages")
    op.drop_table("inbound_messages")
    op.drop_table("inbound_backends")
