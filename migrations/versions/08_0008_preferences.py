"""Recipients' preferences, time zones and quiet hours; unsubscribes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

Chain position 8 of 9: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → 0007 → 0008 → 0009.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recipient_preferences",
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=True),
        sa.Column("quiet", sa.String(11), nullable=True),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_recipient_preferences")),
    )


def downgrade() -> None:
    op.drop_table("recipient_preferences")
