"""Counts that survive purging: daily roll-ups of deliveries and attempts.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Chain position 14 of 14: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → … → 0013 → 0014.

``counts`` holds what ``/metrics`` and ``delivery stats`` read instead of scanning the log
(``delivery.log.counts``). Existing deliveries and attempts are counted into it once, here,
so the counters go on from where the log's figures stood. ``recipient_sends`` gets an index
by delivery, which the purge deletes by; the listing by channel and status gets
``(channel, status, created_at)`` in place of 0003's ``(channel, status)``, and an API
key's listing by status ``(owner, status, created_at)`` over the deliveries keys sent.
"""

from collections.abc import Sequence
from datetime import date

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The day of the rows that hold everything older than the daily rows (``counts.BEFORE``).
BEFORE = date(1970, 1, 1)
#: Final statuses at the time of this migration (``tables.FINAL_STATUSES``).
FINAL = ("delivered", "failed", "confirmed", "bounced", "cancelled", "skipped", "expired")
#: Rows of the partial index by owner: deliveries an API key sent.
_OWNED = sa.text("owner IS NOT NULL")
#: Duration bucket bounds, milliseconds (``counts.DURATION_BUCKETS``).
BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


def upgrade() -> None:
    counts = op.create_table(
        "counts",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("bucket", sa.SmallInteger(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "kind", "channel", "label", "bucket", "shard", name=op.f("pk_counts")
        ),
    )
    with op.batch_alter_table("recipient_sends") as batch:
        batch.create_index("ix_recipient_sends_delivery_id", ["delivery_id"])
    # The listing by channel and status reads this instead of filtering one of them; the
    # scrapes that grouped by (channel, status) read the counts now.
    op.create_index(
        "ix_deliveries_channel_status_created", "deliveries", ["channel", "status", "created_at"]
    )
    op.drop_index("ix_deliveries_channel_status", table_name="deliveries")
    # An API key's listing in one status; only deliveries a key sent are in it.
    op.create_index(
        "ix_deliveries_owner_status_created",
        "deliveries",
        ["owner", "status", "created_at"],
        sqlite_where=_OWNED,
        postgresql_where=_OWNED,
    )
    _count_what_the_log_holds(counts)


def _count_what_the_log_holds(counts: sa.Table) -> None:
    """The log's figures so far, as the ``BEFORE`` rows: one grouped scan each, once."""
    deliveries = sa.table("deliveries", sa.column("channel"), sa.column("status"))
    attempts = sa.table("attempts", sa.column("outcome"), sa.column("duration_ms"))
    bucket = sa.case(
        *((attempts.c.duration_ms <= bound, index) for index, bound in enumerate(BOUNDS_MS)),
        else_=len(BOUNDS_MS),
    )
    connection = op.get_bind()
    rows = [
        {"day": BEFORE, "kind": "delivery", "channel": channel[:64], "label": status,
         "bucket": 0, "shard": 0, "count": count, "total_ms": 0.0}
        for channel, status, count in connection.execute(
            sa.select(deliveries.c.channel, deliveries.c.status, sa.func.count())
            .where(deliveries.c.status.in_(FINAL))
            .group_by(deliveries.c.channel, deliveries.c.status)
        )
    ]  # fmt: skip
    rows += [
        {"day": BEFORE, "kind": "attempt", "channel": "", "label": outcome, "bucket": index,
         "shard": 0, "count": count, "total_ms": float(total or 0.0)}
        for outcome, index, count, total in connection.execute(
            sa.select(
                attempts.c.outcome, bucket, sa.func.count(), sa.func.sum(attempts.c.duration_ms)
            ).group_by(attempts.c.outcome, bucket)
        )
    ]  # fmt: skip
    if rows:
        op.bulk_insert(counts, rows)


def downgrade() -> None:
    op.drop_index("ix_deliveries_owner_status_created", table_name="deliveries")
    op.create_index("ix_deliveries_channel_status", "deliveries", ["channel", "status"])
    op.drop_index("ix_deliveries_channel_status_created", table_name="deliveries")
    with op.batch_alter_table("recipient_sends") as batch:
        batch.drop_index("ix_recipient_sends_delivery_id")
    op.drop_table("counts")
