"""Filling a log fast, through the store (not the broker): what the retention tests and
bench section 12 (a log that runs for years) start from.

Each chunk is claimed in one transaction and finished in another, as a worker's batch is,
so every row a real delivery leaves (the delivery, its attempt, the counts) is there.
"""

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    TypeDecorator,
    any_,
    bindparam,
    cast,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from delivery.clock import utcnow
from delivery.log import AttemptResult, DeliveryLog, Finished
from delivery.log.tables import Outcome
from schemas import Envelope, Payload

#: Deliveries per transaction, as the workers' batches.
CHUNK = 500


def seed(
    log: DeliveryLog,
    count: int,
    *,
    at: datetime | None = None,
    channel: str = "hooks",
    outcomes: Sequence[Outcome | None] = (Outcome.DELIVERED,),
    prefix: str | None = None,
    duration_ms: float = 20.0,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Record ``count`` deliveries made at ``at`` (default now) and a millisecond apart per
    transaction, each claimed and, in turn through ``outcomes``, finished with that outcome
    (None: left ``sending``). Ids are random UUIDs, as the producer's look, or
    ``PREFIX-n`` when a prefix is given. ``progress`` is called with the number recorded
    so far after each chunk. Returns the ids."""
    first = at or utcnow()
    ids: list[str] = []
    for start in range(0, count, chunk):
        at = first + timedelta(milliseconds=start)
        envelopes = [
            Envelope(
                id=f"{prefix}-{n:09d}" if prefix else str(uuid.uuid4()),
                channel=channel,
                address=f"https://example.com/{n}",
                payload=Payload(message=f"message {n}"),
            )
            for n in range(start, min(count, start + chunk))
        ]
        claims = log.claim_many(envelopes, lease=3600, now=at)
        ended = []
        for n, claim in enumerate(claims, start):
            outcome = outcomes[n % len(outcomes)]
            if outcome is None:
                continue
            retry = at + timedelta(hours=1) if outcome is Outcome.RETRY else None
            result = AttemptResult(outcome, at, duration_ms, next_attempt_at=retry)
            ended.append(Finished(claim, result, dispatcher="webhook"))
        log.finish_many(ended, worker="seed")
        ids += [e.id for e in envelopes]
        if progress is not None:
            progress(len(ids))
    return ids


def copy_deliveries(engine: Engine, ids: Sequence[str], copies: range, *, step: timedelta) -> int:
    """On PostgreSQL, repeat the deliveries ``ids`` (seeded through the store, above) and
    every row keyed to them once for each ``n`` in ``copies``: copy ``n`` of a delivery
    has the id ``md5(id/n)`` (shaped as a UUID, as the producer's) and every time moved
    ``n * step`` into the past. One transaction; returns the deliveries added.

    The store takes some milliseconds per delivery (1,000/s on a busy 2-core machine:
    a quarter of an hour for a million); PostgreSQL copies rows it already has at a
    hundred times that, and the copies are what the store wrote, row for row."""
    from delivery.log.tables import DeliveryRow
    from delivery.retention.purge import keyed_to_deliveries

    deliveries = DeliveryRow.__table__
    assert isinstance(deliveries, Table)
    series = func.generate_series(copies.start, copies.stop - 1).table_valued("n").render_derived()
    n = series.c.n
    # One array parameter, not one parameter per id.
    wanted = bindparam("wanted", list(ids), type_=ARRAY(String))

    def new_id(column: ColumnElement[str]) -> ColumnElement[str]:
        return cast(cast(func.md5(column + "/" + cast(n, String)), UUID), String)

    with engine.begin() as connection:
        for table, key in [
            (deliveries, deliveries.c.id),
            *((c.table, c) for c in keyed_to_deliveries()),
        ]:
            assert isinstance(table, Table)
            columns = [c for c in table.columns if not _generated(c)]
            values = [
                new_id(c)
                if c is key
                else c - func.make_interval(0, 0, 0, 0, 0, 0, n * step.total_seconds())
                if _is_time(c)
                else c
                for c in columns
            ]
            query = (
                select(*values).select_from(table.join(series, true())).where(key == any_(wanted))
            )
            connection.execute(insert(table).from_select(columns, query))
    return len(ids) * len(copies)


def _generated(column: Column[Any]) -> bool:
    """A surrogate key the database numbers itself (the attempts' ``id``)."""
    table = column.table
    return bool(
        column.primary_key
        and len(table.primary_key.columns) == 1
        and isinstance(column.type, Integer)
        and column.autoincrement in (True, "auto")
    )


def _is_time(column: Column[Any]) -> bool:
    kind = column.type
    impl = kind.impl if isinstance(kind, TypeDecorator) else kind
    return isinstance(impl, DateTime)


#: A row of ``counts`` by its key, and what it holds: (count, total_ms).
Counts = dict[tuple[Any, ...], tuple[int, float]]


def read_counts(engine: Engine) -> Counts:
    """Every row of the log's counts (a few hundred), by primary key."""
    from delivery.log.counts import CountRow

    table = CountRow.__table__
    assert isinstance(table, Table)
    keys = list(table.primary_key.columns)
    with engine.connect() as connection:
        rows = connection.execute(select(*keys, table.c.count, table.c.total_ms)).all()
    return {tuple(row[: len(keys)]): (int(row[-2]), float(row[-1])) for row in rows}


def add_counts(engine: Engine, before: Counts, after: Counts, times: float) -> None:
    """Add ``times`` over what the counts gained from ``before`` to ``after``: copies of
    seeded deliveries are counted as the store counted the originals, so ``/metrics`` and
    ``delivery stats`` agree with the log."""
    from delivery.log.counts import CountRow

    table = CountRow.__table__
    assert isinstance(table, Table)
    keys = list(table.primary_key.columns)
    with engine.begin() as connection:
        for key, (count, total_ms) in after.items():
            was_count, was_ms = before.get(key, (0, 0.0))
            if count == was_count:
                continue
            connection.execute(
                update(table)
                .where(*(c == v for c, v in zip(keys, key, strict=True)))
                .values(
                    count=table.c.count + round((count - was_count) * times),
                    total_ms=table.c.total_ms + (total_ms - was_ms) * times,
                )
            )
