"""Counts that never go down: deliveries ended and attempts made, counted as they happen.

``/metrics`` used to count the log at scrape time, which cost more with every delivery kept
(113 ms after 100,000 on PostgreSQL) and dropped when old deliveries were purged. Instead,
the transaction that records attempts and moves deliveries on also adds to a few rows of
``counts``: one upsert per (kind, channel, label, bucket) per batch, never one per
delivery. A scrape sums a few hundred rows whatever the size of the log, and purging
removes deliveries but no count.

Rows are keyed by UTC day and by a shard picked at random per transaction, so that
concurrent batches on PostgreSQL seldom wait for each other's row lock (one hot row per
status would serialise every worker's commits). The daily job (``compact``) folds each
day's shards into one row, and days older than ``DAILY_FOR`` into one row per key dated
``BEFORE``: the table stays at a few hundred rows however long the log runs.
"""

import random
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Date,
    Float,
    SmallInteger,
    String,
    bindparam,
    delete,
    func,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from delivery.log.database import upsert_insert
from delivery.log.tables import Base, ChannelRow

#: Attempt duration buckets, seconds: a webhook answers in milliseconds, SMTP may take ten.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Shards per key and day: how many concurrent transactions seldom wait for one another.
SHARDS = 16
#: Days kept one row per key, after compaction (what ``delivery stats`` can show per day).
DAILY_FOR = 7
#: The day of the rows that hold everything older than ``DAILY_FOR`` days.
BEFORE = date(1970, 1, 1)
#: What a row counts.
DELIVERY, ATTEMPT = "delivery", "attempt"
#: The channel label of deliveries on no configured channel: a name a malformed message
#: made up, a channel since removed, a delivery cancelled before the log knew it. No
#: channel can be named so (names begin with a letter or digit), and folding them into one
#: keeps the labels, and the table, from growing with whatever names clients send.
UNKNOWN_CHANNEL = "-"


class CountRow(Base):
    """A count of deliveries that ended in a status, or of attempts with an outcome and a
    duration bucket, on one day (migration 0014)."""

    __tablename__ = "counts"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    #: ``delivery`` (label: the final status) or ``attempt`` (label: the outcome).
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    #: The delivery's channel; empty for attempts, which are counted by outcome only.
    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(16), primary_key=True)
    #: Attempts: the index of the first bound in ``DURATION_BUCKETS`` the duration is
    #: within (``len(DURATION_BUCKETS)``: longer than all). Deliveries: 0.
    bucket: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    #: Attempts: the sum of their durations, milliseconds.
    total_ms: Mapped[float] = mapped_column(Float)


#: (kind, channel, label, bucket)
Key = tuple[str, str, str, int]


@dataclass
class Tally:
    """What one transaction adds: counts and summed durations by key."""

    counts: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    total_ms: dict[Key, float] = field(default_factory=lambda: defaultdict(float))

    def ended(self, channel: str, status: str) -> None:
        self.counts[(DELIVERY, channel[:64], str(status), 0)] += 1

    def attempt(self, outcome: str, duration_ms: float) -> None:
        key = (ATTEMPT, "", str(outcome), bucket_of(duration_ms))
        self.counts[key] += 1
        self.total_ms[key] += duration_ms

    def __bool__(self) -> bool:
        return bool(self.counts)


def bucket_of(duration_ms: float) -> int:
    """The index of the first duration bucket ``duration_ms`` falls within."""
    seconds = duration_ms / 1000
    for index, bound in enumerate(DURATION_BUCKETS):
        if seconds <= bound:
            return index
    return len(DURATION_BUCKETS)


class Counter:
    """Adds to the counts inside a caller's transaction (``insert`` is the dialect's own,
    which has ON CONFLICT on both backends)."""

    def __init__(self, insert: Any) -> None:
        statement = insert(CountRow).values(
            day=bindparam("p_day"), kind=bindparam("p_kind"), channel=bindparam("p_channel"),
            label=bindparam("p_label"), bucket=bindparam("p_bucket"), shard=bindparam("p_shard"),
            count=bindparam("p_count"), total_ms=bindparam("p_total_ms"),
        )  # fmt: skip
        self._add = statement.on_conflict_do_update(
            index_elements=["day", "kind", "channel", "label", "bucket", "shard"],
            set_={
                "count": CountRow.count + statement.excluded.count,
                "total_ms": CountRow.total_ms + statement.excluded.total_ms,
            },
        )

    def add(
        self, connection: Connection, tally: Tally, *, now: datetime, shard: int | None = None
    ) -> None:
        """Add ``tally`` to today's counts (one shard, picked at random unless given)."""
        if not tally:
            return
        self.add_rows(connection, now.date(), tally.counts, tally.total_ms, shard=shard)

    def add_rows(
        self,
        connection: Connection,
        day: date,
        counts: Mapping[Key, int],
        total_ms: Mapping[Key, float],
        *,
        shard: int | None = None,
    ) -> None:
        chosen = random.randrange(SHARDS) if shard is None else shard
        # In key order, so two transactions adding to the same rows lock them in one
        # order and cannot deadlock (PostgreSQL).
        rows = [
            {"p_day": day, "p_kind": key[0], "p_channel": key[1], "p_label": key[2],
             "p_bucket": key[3], "p_shard": chosen, "p_count": counts[key],
             "p_total_ms": float(total_ms.get(key, 0.0))}
            for key in sorted(counts)
        ]  # fmt: skip
        connection.execute(self._add, rows)


@dataclass(frozen=True, slots=True)
class Totals:
    """Every count since the log began: what ``/metrics`` and ``delivery stats`` show."""

    #: (channel, status) → deliveries that ended so.
    ended: dict[tuple[str, str], int]
    #: outcome → counts per duration bucket (not cumulative; the last is beyond them all).
    attempts: dict[str, list[int]]
    #: outcome → summed durations, milliseconds.
    attempt_ms: dict[str, float]

    def attempt_count(self, outcome: str) -> int:
        return sum(self.attempts.get(outcome, ()))


_TOTALS = select(
    CountRow.kind,
    CountRow.channel,
    CountRow.label,
    CountRow.bucket,
    func.sum(CountRow.count),
    func.sum(CountRow.total_ms),
).group_by(CountRow.kind, CountRow.channel, CountRow.label, CountRow.bucket)


def totals(connection: Connection, *, channels: Collection[str] | None = None) -> Totals:
    """The sums over every day and shard: one grouped read of a small table. Given the
    configured ``channels``, deliveries on any other are counted as ``UNKNOWN_CHANNEL``."""
    ended: dict[tuple[str, str], int] = {}
    attempts: dict[str, list[int]] = {}
    attempt_ms: dict[str, float] = defaultdict(float)
    for kind, channel, label, bucket, count, total_ms in connection.execute(_TOTALS):
        if kind == DELIVERY:
            if channels is not None and channel not in channels:
                channel = UNKNOWN_CHANNEL
            ended[(channel, label)] = ended.get((channel, label), 0) + int(count)
        elif kind == ATTEMPT and 0 <= bucket <= len(DURATION_BUCKETS):
            buckets = attempts.setdefault(label, [0] * (len(DURATION_BUCKETS) + 1))
            buckets[bucket] += int(count)
            attempt_ms[label] += float(total_ms or 0.0)
    return Totals(ended, attempts, dict(attempt_ms))


@dataclass(frozen=True, slots=True)
class Compaction:
    """What ``compact`` did: rows read and folded, rows they became."""

    removed: int
    written: int


def compact(counter: Counter, connection: Connection, *, today: date) -> Compaction:
    """Fold the shards of each day before yesterday into one row per key, and the days
    older than ``DAILY_FOR`` into the ``BEFORE`` row, and deliveries on channels not
    configured into ``UNKNOWN_CHANNEL``; the sums stay as they were.

    Rows are deleted with RETURNING and what was returned is written back, so a count a
    worker adds meanwhile (a batch recorded across midnight) is either folded or left for
    the next time, never lost.
    """
    settled = today - timedelta(days=1)
    daily_from = today - timedelta(days=DAILY_FOR)
    c = CountRow
    known = {*connection.scalars(select(ChannelRow.name)), UNKNOWN_CHANNEL}
    already = (c.shard == 0) & ((c.day >= daily_from) | (c.day == BEFORE))
    stray = (c.kind == DELIVERY) & c.channel.not_in(known)
    removed = connection.execute(
        delete(c)
        .where(c.day < settled, ~already | stray)
        .returning(c.day, c.kind, c.channel, c.label, c.bucket, c.count, c.total_ms)
    ).all()
    folded: dict[date, tuple[dict[Key, int], dict[Key, float]]] = {}
    for day, kind, channel, label, bucket, count, total_ms in removed:
        into = day if day >= daily_from else BEFORE
        counts, sums = folded.setdefault(into, (defaultdict(int), defaultdict(float)))
        if kind == DELIVERY and channel not in known:
            channel = UNKNOWN_CHANNEL
        key = (kind, channel, label, bucket)
        counts[key] += count
        sums[key] += total_ms
    written = 0
    for day in sorted(folded):
        counts, sums = folded[day]
        counter.add_rows(connection, day, counts, sums, shard=0)
        written += len(counts)
    return Compaction(removed=len(removed), written=written)


def count_ended(connection: Connection, ended: Iterable[tuple[str, str]], *, now: datetime) -> None:
    """Count deliveries that ended, as ``(channel, status)`` pairs, in ``connection``'s
    transaction: for writers outside the store (receipts, erasure)."""
    Counter(upsert_insert(connection.dialect.name)).add(connection, tally_of(ended), now=now)


def tally_of(ended: Iterable[tuple[str, str]]) -> Tally:
    """A tally of deliveries that ended, as ``(channel, status)`` pairs."""
    tally = Tally()
    for channel, status in ended:
        tally.ended(channel, status)
    return tally
