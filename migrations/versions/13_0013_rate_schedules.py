"""Rate limits shared through the log where the broker is not Redis.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

Chain position 13 of 13: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → … → 0012 → 0013.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_schedules",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("next_slot", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_rate_schedules")),
    )


def downgrade() -> None:
    op.drop_table("rate_schedules")
