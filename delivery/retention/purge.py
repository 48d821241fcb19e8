"""Purging deliveries that ended long ago, a few hundred per transaction.

Each batch locks the oldest final deliveries past the cutoff (``FOR UPDATE SKIP LOCKED``
on PostgreSQL, so a ``delivery retry`` or a receipt that holds one is passed over, not
waited for), deletes the rows of every table keyed to them, then the deliveries, and
commits. A transaction is over in milliseconds, so workers recording attempts wait for
at most one batch; on SQLite, whose writers take turns, a short pause between batches
gives them theirs. Nothing is counted here: the counts were kept as the work happened.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Index,
    PrimaryKeyConstraint,
    Table,
    UniqueConstraint,
    and_,
    delete,
    func,
    or_,
    select,
)

# Every module that declares tables keyed to a delivery, so that the metadata holds them.
import delivery.log.inbound
import delivery.notifications.tables
import delivery.recipients.tables  # noqa: F401
from delivery.clock import utcnow
from delivery.log.base import LogBase
from delivery.log.counts import Compaction, Counter, compact
from delivery.log.tables import FINAL_STATUSES, Base, DeliveryRow

#: Deliveries per transaction: small enough that no worker waits long for one.
BATCH = 500
#: Seconds between two batches, so that writers waiting their turn get it (SQLite).
PAUSE = 0.02


@dataclass
class PurgeReport:
    """What a purge removed (or, dry, would remove): rows per table."""

    cutoff: datetime
    older_than_days: float
    dry_run: bool
    rows: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    compaction: Compaction | None = None

    @property
    def deliveries(self) -> int:
        return self.rows.get(DeliveryRow.__tablename__, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "older_than_days": self.older_than_days,
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "deliveries": self.deliveries,
            "rows": dict(sorted(self.rows.items())),
            "batches": self.batches,
        }


def keyed_to_deliveries() -> list[Column[Any]]:
    """The ``delivery_id`` column of every table whose rows belong to a delivery
    (attempts, receipts, throttle counts, events' and digests' deliveries…), in a stable
    order. Such a table is indexed by delivery, which is also what lets a batch delete
    from it without a scan; a ``delivery_id`` no index begins with is something else (the
    receipt look-ups' cursor, which names the last delivery it passed), and is left alone.
    """
    deliveries = DeliveryRow.__table__
    found = []
    for table in Base.metadata.sorted_tables:
        if table is deliveries or not isinstance(table, Table):
            continue
        column = table.c.get("delivery_id")
        if column is not None and _indexed_by(table, column):
            found.append(column)
    return sorted(found, key=lambda c: c.table.name)


def _indexed_by(table: Table, column: Column[Any]) -> bool:
    """Whether an index, the primary key or a unique constraint begins with ``column``."""
    keys: list[Index | PrimaryKeyConstraint | UniqueConstraint] = [
        *table.indexes,
        table.primary_key,
        *(c for c in table.constraints if isinstance(c, UniqueConstraint)),
    ]
    return any(next(iter(key.columns), None) is column for key in keys)


class Retention(LogBase):
    """Purges the log's old, final deliveries."""

    def purge(
        self,
        *,
        older_than: float,
        dry_run: bool = False,
        now: datetime | None = None,
        batch: int = BATCH,
        pause: float = PAUSE,
    ) -> PurgeReport:
        """Remove the deliveries in a final status created and last changed more than
        ``older_than`` days ago, with every row keyed to them; a dry run counts them and
        changes nothing. Then the counts are compacted."""
        now = now or utcnow()
        cutoff = now - timedelta(days=older_than)
        report = PurgeReport(cutoff=cutoff, older_than_days=older_than, dry_run=dry_run)
        children = keyed_to_deliveries()
        if dry_run:
            self._count(report, children, batch)
            return report
        while True:
            with self._write() as connection:
                removed = self._purge_batch(connection, children, cutoff, batch, report)
            if not removed:
                break
            report.batches += 1
            if pause:
                time.sleep(pause)
        report.compaction = self.compact_counts(now=now)
        return report

    def compact_counts(self, *, now: datetime | None = None) -> Compaction:
        """Fold the counts' past days and shards (``delivery.log.counts.compact``)."""
        with self._write() as connection:
            return compact(Counter(self._insert), connection, today=(now or utcnow()).date())

    def _purge_batch(
        self,
        connection: Connection,
        children: Sequence[Column[Any]],
        cutoff: datetime,
        batch: int,
        report: PurgeReport,
    ) -> int:
        d = DeliveryRow
        ids = list(
            connection.scalars(
                select(d.id)
                .where(_purgeable(cutoff))
                .order_by(d.created_at, d.id)
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
        )
        if not ids:
            return 0
        for column in children:
            deleted = connection.execute(column.table.delete().where(column.in_(ids))).rowcount
            _add(report, column.table.name, deleted)
        # The status again: on SQLite nothing locked the rows between the two statements
        # (this process's write lock and SQLite's own single writer did instead).
        removed: int = connection.execute(
            delete(d).where(d.id.in_(ids), d.status.in_(FINAL_STATUSES))
        ).rowcount
        _add(report, d.__tablename__, removed)
        return removed

    def _count(self, report: PurgeReport, children: Sequence[Column[Any]], batch: int) -> None:
        """What a purge would remove, read in the same batches (keyset, by age)."""
        d = DeliveryRow
        after: tuple[datetime, str] | None = None
        while True:
            query = (
                select(d.created_at, d.id)
                .where(_purgeable(report.cutoff))
                .order_by(d.created_at, d.id)
                .limit(batch)
            )
            if after is not None:
                query = query.where(
                    # Implied by the OR, but the index can start only from this: without it
                    # each batch walked again past every one before it.
                    d.created_at >= after[0],
                    or_(d.created_at > after[0], and_(d.created_at == after[0], d.id > after[1])),
                )
            with self.engine.connect() as connection:
                rows = connection.execute(query).all()
                if not rows:
                    return
                ids = [row.id for row in rows]
                for column in children:
                    found = connection.scalar(
                        select(func.count()).select_from(column.table).where(column.in_(ids))
                    )
                    _add(report, column.table.name, int(found or 0))
            _add(report, d.__tablename__, len(ids))
            report.batches += 1
            after = (rows[-1].created_at, rows[-1].id)


def _purgeable(cutoff: datetime) -> Any:
    # (status, created_at) is indexed; a delivery made long ago that ended only lately
    # (a long countdown, retries over days) waits until it too is old.
    d = DeliveryRow
    return and_(d.status.in_(FINAL_STATUSES), d.created_at < cutoff, d.updated_at < cutoff)


def _add(report: PurgeReport, table: str, count: int) -> None:
    report.rows[table] = report.rows.get(table, 0) + max(count, 0)
