"""Reliability: the sweep's marker and the circuit breaker's state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Chain position 2 of 6: 0001 → 0002 → 0005 → 0004 → 0003 → 0006. The ids are not in chain order;
databases record them, so they stay, and the file name starts with the position.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("swept_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("channels") as batch:
        batch.add_column(
            sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("breaker_open_until", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("breaker_open_until")
        batch.drop_column("consecutive_failures")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("swept_at")
