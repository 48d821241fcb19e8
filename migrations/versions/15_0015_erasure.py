"""Erasure: the keyed hash that keeps an erased address suppressed.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Chain position 15 of 15: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → … → 0014 → 0015.

An erased address stays on a suppression list as ``erased:`` and its keyed hash, in the
``suppressions`` table as it is (no change of schema there). This revision adds the record
of erasures, by the same hash: when, and what went, indexed by when (a worker asks for the
erasures since each task message was published).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("erased_at", UTCDateTime(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("address_hash", name=op.f("pk_erasures")),
    )
    # A worker asks for the erasures since a task message was published, once per task.
    op.create_index("ix_erasures_erased_at", "erasures", ["erased_at"])


def downgrade() -> None:
    op.drop_index("ix_erasures_erased_at", table_name="erasures")
    op.drop_table("erasures")
