"""Deliveries that expire: a deadline from ttl (issue 25).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Chain position 11 of 11: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → 0007 → 0008 → 0009 → 0010 → 0011.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("expires_at")
