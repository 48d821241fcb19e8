"""The HTTP service: API keys; indexes the metrics scrape reads.

Revision ID: 0003
Revises: 0004
Create Date: 2026-12-02

Chain position 5 of 6: 0001 → 0002 → 0005 → 0004 → 0003 → 0006. The ids are not in chain order;
databases record them, so they stay, and the file name starts with the position.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_id", name=op.f("uq_api_keys_key_id")),
    )
    # Every figure of GET /metrics comes from the log: these let each query read an index
    # instead of the table (counts by channel and status, the oldest waiting delivery,
    # attempts by outcome and their duration buckets).
    op.create_index("ix_deliveries_channel_status", "deliveries", ["channel", "status"])
    op.create_index("ix_deliveries_status_created", "deliveries", ["status", "created_at"])
    op.create_index("ix_attempts_outcome_duration", "attempts", ["outcome", "duration_ms"])


def downgrade() -> None:
    op.drop_index("ix_attempts_outcome_duration", table_name="attempts")
    op.drop_index("ix_deliveries_status_created", table_name="deliveries")
    op.drop_index("ix_deliveries_channel_status", table_name="deliveries")
    op.drop_table("api_keys")
