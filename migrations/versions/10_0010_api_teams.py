"""HTTP keys own their deliveries; admin and test keys (issue 27).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Chain position 10 of 11: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → 0007 → 0008 → 0009 → 0010 → 0011.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("test", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_deliveries_owner_created", "deliveries", ["owner", "created_at"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("test", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("test")
        batch.drop_column("admin")
    op.drop_index("ix_deliveries_owner_created", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("test")
        batch.drop_column("owner")
