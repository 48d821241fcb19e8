"""Notifications: templates, subscriptions, events and their deliveries; channel fallbacks.

Revision ID: 0004
Revises: 0005
Create Date: 2026-12-02

Chain position 4 of 6: 0001 → 0002 → 0005 → 0004 → 0003 → 0006. The ids are not in chain order;
databases record them, so they stay, and the file name starts with the position.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.log.tables import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_templates")),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("event", sa.String(128), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("template", sa.String(64), nullable=True),
        sa.Column("filter", sa.Text(), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_index("ix_subscriptions_event", "subscriptions", ["event"])
    op.create_table(
        "events",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("fanned_out_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_received", "events", ["received_at"])
    op.create_table(
        "event_deliveries",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("subscription_id", sa.String(36), nullable=False),
        sa.Column("delivery_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "subscription_id", name=op.f("pk_event_deliveries")),
    )
    op.create_index("ix_event_deliveries_delivery_id", "event_deliveries", ["delivery_id"])
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("fallback", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("fallback")
    op.drop_index("ix_event_deliveries_delivery_id", "event_deliveries")
    op.drop_table("event_deliveries")
    op.drop_index("ix_events_received", "events")
    op.drop_table("events")
    op.drop_index("ix_subscriptions_event", "subscriptions")
    op.drop_table("subscriptions")
    op.drop_table("templates")
