"""HTTP keys own their events; test keys publish them (issue 27).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

Chain position 12 of 12: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → 0007 → 0008 → 0009 → 0010
→ 0011 → 0012.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("test", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("digest_items") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("digest_items") as batch:
        batch.drop_column("owner")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("test")
        batch.drop_column("owner")
