"""Per-recipient throttles on channels and subscriptions.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

Chain position 9 of 9: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → 0007 → 0008 → 0009.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("per_recipient", sa.String(32), nullable=True))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("subscription", sa.String(64), nullable=True))
        batch.add_column(sa.Column("per_recipient", sa.String(32), nullable=True))
    op.create_table(
        "recipient_sends",
        sa.Column("throttle", sa.String(128), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("delivery_id", sa.String(64), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint(
            "throttle", "address", "delivery_id", name=op.f("pk_recipient_sends")
        ),
    )
    op.create_index(
        "ix_recipient_sends_key_sent", "recipient_sends", ["throttle", "address", "sent_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_recipient_sends_key_sent", table_name="recipient_sends")
    op.drop_table("recipient_sends")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("per_recipient")
        batch.drop_column("subscription")
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("per_recipient")
