"""Categories on deliveries and subscriptions; digests (the recipients issue).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Chain position 7 of 9: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → 0007 → 0008 → 0009.

Adds ``deliveries.category``; a subscription's ``category``, ``per_recipient`` throttle and
``digest`` window; and ``digest_items``, the events waiting for their window to close.
Every new column is nullable, so existing rows need no default.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("category", sa.String(32), nullable=True))
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("category", sa.String(32), nullable=True))
        batch.add_column(sa.Column("per_recipient", sa.String(32), nullable=True))
        batch.add_column(sa.Column("digest", sa.String(16), nullable=True))
    op.create_table(
        "digest_items",
        sa.Column("subscription_id", sa.String(36), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("category", sa.String(32), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("delivery_id", sa.String(64), nullable=True),
        sa.Column("claimed_at", UTCDateTime(), nullable=True),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("subscription_id", "event_id", name=op.f("pk_digest_items")),
    )
    op.create_index("ix_digest_items_open", "digest_items", ["delivery_id", "window_start"])
    op.create_index("ix_digest_items_published", "digest_items", ["published_at", "claimed_at"])


def downgrade() -> None:
    op.drop_index("ix_digest_items_published", "digest_items")
    op.drop_index("ix_digest_items_open", "digest_items")
    op.drop_table("digest_items")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("digest")
        batch.drop_column("per_recipient")
        batch.drop_column("category")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("category")
