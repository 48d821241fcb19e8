"""Periodic jobs the workers take turns at (the sweep), so that no beat is needed.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-06

Chain position 6 of 6: 0001 → 0002 → 0005 → 0004 → 0003 → 0006. The ids are not in chain order;
databases record them, so they stay, and the file name starts with the position.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "periodic_jobs",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("next_run_at", UTCDateTime(), nullable=False),
        sa.Column("last_run_by", sa.String(255), nullable=True),
        sa.Column("last_run_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_periodic_jobs")),
    )


def downgrade() -> None:
    op.drop_table("periodic_jobs")
