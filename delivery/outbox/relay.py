"""The relay: publishes committed outbox rows, oldest first, and removes them once the
broker has them.

At least once, never twice delivered: a row is deleted only after the publisher returned
(the broker has the task message), so a relay killed at any moment leaves the row to be
published again; the copy carries the same delivery id, which the workers' log recognises
and sends once.

Several relays on one database: on PostgreSQL (and any database with ``SKIP LOCKED``) each
takes its rows with ``SELECT … FOR UPDATE SKIP LOCKED`` and holds them until it has
published and deleted them, so no two relays publish one row at the same time. SQLite has
no row locks and one writer at a time: there the rows are read, published and then deleted
in separate short transactions, so the application is never kept waiting on a broker, and
two relays could publish a row twice (harmless: the ids are fixed) — run one.
"""

import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError

from delivery.errors import PublishError
from delivery.outbox.table import TABLE
from delivery.producer.publisher import Outgoing
from schemas import Envelope

logger = logging.getLogger(__name__)

#: Rows per batch: one SELECT, one pipelined publish and one DELETE each.
DEFAULT_BATCH = 500
#: Seconds between looks at an empty outbox.
DEFAULT_INTERVAL = 1.0
#: The longest wait between tries while the database or the broker is away.
MAX_BACKOFF = 30.0
#: Seconds between two warnings that the database or the broker is away.
QUIET_FOR = 60.0


class Publishes(Protocol):
    """What the relay needs of a publisher (``delivery.producer.Publisher``)."""

    def publish_envelopes(self, outgoing: Sequence[Outgoing], *, batch: bool = False) -> None: ...


class Relay:
    """Moves committed rows from one database's outbox to the broker."""

    def __init__(self, engine: Engine, publisher: Publishes, *, batch: int = DEFAULT_BATCH) -> None:
        self.engine = engine
        self.publisher = publisher
        self.batch = batch
        #: Whether the database can lock rows and skip those locked (not SQLite).
        self.locks_rows = engine.dialect.name != "sqlite"
        self._warned_at = -QUIET_FOR
        #: Rows this version cannot read, left in place (see ``_publish``).
        self._unreadable: set[int] = set()

    @property
    def where(self) -> str:
        """The database, as shown in logs: its password masked."""
        return self.engine.url.render_as_string(hide_password=True)

    def relay_once(self) -> int:
        """Publish the oldest committed rows (up to ``batch``) and delete them; how many.

        Raises:
            PublishError: the broker could not take them; they stay, to be tried again.
            sqlalchemy.exc.SQLAlchemyError: the database failed; what was not deleted stays.
        """
        return self._relay_batch()[1]

    def _relay_batch(self) -> tuple[int, int]:
        """One batch: how many rows were read, and how many published and deleted."""
        if self.locks_rows:
            # Locked until this transaction ends: other relays skip them meanwhile, and a
            # relay that dies releases them with its connection.
            with self.engine.begin() as connection:
                rows = self._oldest(connection)
                published = self._publish(rows) if rows else []
                if published:
                    self._delete(connection, published)
                return len(rows), len(published)
        with self.engine.begin() as connection:
            rows = self._oldest(connection)
        published = self._publish(rows) if rows else []
        if published:
            with self.engine.begin() as connection:
                self._delete(connection, published)
        return len(rows), len(published)

    def drain(self) -> int:
        """Relay batches until the outbox is empty; how many rows in all.

        Raises:
            PublishError: the broker could not take a batch; it stays.
            sqlalchemy.exc.SQLAlchemyError: the database failed.
        """
        total = 0
        while True:
            read, moved = self._relay_batch()
            total += moved
            if read < self.batch:
                return total

    def run(self, stop: threading.Event, *, interval: float = DEFAULT_INTERVAL) -> None:
        """Relay until ``stop`` is set: drain, wait ``interval``, drain again. While the
        database or the broker is away, wait longer each time (up to ``MAX_BACKOFF``) and
        say so now and then, never more."""
        pause = interval
        while not stop.is_set():
            try:
                self.drain()
            except (SQLAlchemyError, PublishError) as exc:
                self._warn(exc)
                pause = min(max(pause * 2, interval), MAX_BACKOFF)
            except Exception:  # a bug must not end the relay: the rows are still there
                logger.exception("the outbox relay for %s failed; trying again", self.where)
                pause = min(max(pause * 2, interval), MAX_BACKOFF)
            else:
                pause = interval
            stop.wait(pause)

    def _oldest(self, connection: Connection) -> Sequence[Any]:
        t = TABLE
        query = select(t.c.id, t.c.delivery_id, t.c.envelope, t.c.countdown, t.c.created_at)
        # Id order: the nearest to commit order there is (see outbox_table).
        if self._unreadable:
            query = query.where(t.c.id.not_in(self._unreadable))
        query = query.order_by(t.c.id).limit(self.batch)
        if self.locks_rows:
            query = query.with_for_update(skip_locked=True)
        return connection.execute(query).all()

    def _publish(self, rows: Sequence[Any]) -> list[int]:
        """Publish what this version can read of ``rows``; the ids published."""
        now = datetime.now(UTC)
        outgoing: list[Outgoing] = []
        published: list[int] = []
        for row in rows:
            try:
                envelope = Envelope.model_validate_json(row.envelope)
            except ValidationError as exc:
                # Not a task message this version can read (a hand-edited row, or an
                # application on a newer delivery than this relay): left where it is, for
                # a relay that can read it, and passed over from now on so that it holds
                # up no row behind it. Said loudly, once, with what identifies it.
                self._unreadable.add(row.id)
                logger.error(
                    "outbox row %s (delivery %s) in %s is not a task message this version "
                    "can read; left in place: %s",
                    row.id,
                    row.delivery_id,
                    self.where,
                    exc.errors(include_input=False, include_url=False)[:3],
                )
                continue
            outgoing.append((envelope, _remaining(row.countdown, row.created_at, now)))
            published.append(row.id)
        if outgoing:
            self.publisher.publish_envelopes(outgoing, batch=True)
        return published

    @staticmethod
    def _delete(connection: Connection, ids: list[int]) -> None:
        connection.execute(delete(TABLE).where(TABLE.c.id.in_(ids)))

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= QUIET_FOR:
            self._warned_at = now
            what = "broker" if isinstance(exc, PublishError) else "database"
            logger.warning(
                "outbox relay for %s: the %s is away (%s); trying again",
                self.where,
                what,
                type(exc).__name__,
            )


def _remaining(countdown: float | None, created_at: datetime, now: datetime) -> float | None:
    """What is left of a countdown that started when the row was written (None: none)."""
    if not countdown:
        return None
    if created_at.tzinfo is None:  # SQLite gives back naive datetimes; they were UTC
        created_at = created_at.replace(tzinfo=UTC)
    left = countdown - (now - created_at).total_seconds()
    return left if left > 0 else None
