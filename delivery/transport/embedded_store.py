"""The embedded broker's SQLite file: queues, bindings, consumers, and what was set aside.

One file (``DELIVERY_HOME/broker.sqlite3``), shared by every process on the machine, in
WAL mode: readers never wait, writers take turns, and every write here is one short
transaction. It is not the delivery log's file, so broker traffic never waits on the
log's write lock, nor the log on it.

A message is a row. It stays until it is acknowledged: taking it only writes the taker's
consumer id in ``owner`` (``BEGIN IMMEDIATE``, the oldest unowned rows of the queue), and
putting it back clears ``owner``, so a message is never copied. Each consumer keeps a
heartbeat row; the rows owned by a consumer whose heartbeat stopped are put back by the
next housekeeping of any live process (``housekeep``).

This module knows nothing of kombu: the API reads queue depths with it, and tests drive it
directly.
"""

import logging
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

#: The file under ``DELIVERY_HOME``.
FILE_NAME = "broker.sqlite3"
#: Seconds a writer waits for another's transaction before giving up (they take
#: milliseconds; this is for a machine that is stalled).
BUSY_TIMEOUT = 30.0
#: A consumer whose heartbeat is older than this is dead: its messages go back.
HEARTBEAT_EXPIRES = 20.0
#: How often each process renews its consumers' heartbeats and offers to housekeep.
HEARTBEAT_EVERY = 2.0
#: Housekeeping runs at most this often, whichever process does it.
HOUSEKEEP_EVERY = 2.0
#: Messages on queues that are not task queues (Celery's remote-control replies and
#: broadcasts, task events) are dropped this old: what they answered is long over, and a
#: Flower or ``celery inspect`` that went away would leave them to pile up for ever.
TRANSIENT_MAX_AGE = 300.0
#: ... or this old, once no binding routes to their queue any more (their reader is gone).
UNBOUND_MAX_AGE = 30.0
#: Items set aside: the newest are kept.
SET_ASIDE_KEEP = 10_000
#: Bytes the WAL file is cut back to once checkpointed.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
#: The largest payload read into memory; larger rows are set aside without being read.
MAX_PAYLOAD = 256 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    -- AUTOINCREMENT: an id is never reused, so a late acknowledgement (by row id) can
    -- never remove another message.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload,
    owner TEXT,
    transient INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL DEFAULT (strftime('%s', 'now'))
);
CREATE INDEX IF NOT EXISTS message_ready ON message (queue, id) WHERE owner IS NULL;
CREATE INDEX IF NOT EXISTS message_owned ON message (owner) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS message_transient ON message (created_at) WHERE transient = 1;
CREATE TABLE IF NOT EXISTS binding (
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    pattern TEXT NOT NULL,
    queue TEXT NOT NULL,
    -- The consumer that bound a transient queue: the binding goes when it dies.
    owner TEXT,
    PRIMARY KEY (exchange, routing_key, pattern, queue)
);
CREATE INDEX IF NOT EXISTS binding_queue ON binding (queue);
CREATE TABLE IF NOT EXISTS consumer (
    id TEXT PRIMARY KEY,
    alive_at REAL NOT NULL,
    pid INTEGER,
    host TEXT
);
CREATE TABLE IF NOT EXISTS set_aside (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    queue TEXT,
    reason TEXT NOT NULL,
    item
);
CREATE TABLE IF NOT EXISTS housekeeping (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    done_at REAL NOT NULL
);
"""

#: Not a task queue: what is on it is dropped when old (see TRANSIENT_MAX_AGE).
_TRANSIENT_SUFFIXES = ("pidbox",)
_TRANSIENT_PREFIXES = ("celeryev.",)


def is_task_queue(queue: str) -> bool:
    """Task queues hold Celery task messages only, and keep them however long they wait.
    The others are Celery's: remote control (``<host>.celery.pidbox`` broadcasts and
    ``<id>.reply.celery.pidbox`` replies) and task events (``celeryev.<id>``, Flower's)."""
    return not (queue.endswith(_TRANSIENT_SUFFIXES) or queue.startswith(_TRANSIENT_PREFIXES))


def broker_file(home: Path) -> Path:
    return home / FILE_NAME


@dataclass(frozen=True, slots=True)
class Taken:
    """A row taken off a queue: its payload as stored (any SQLite type, None when it was
    too large to read), and its size."""

    id: int
    payload: Any
    size: int
    #: Larger than MAX_PAYLOAD: left unread (``payload`` is None).
    too_large: bool = False


@dataclass(frozen=True, slots=True)
class Housekeeping:
    dead_consumers: int = 0
    released: int = 0
    bindings_dropped: int = 0
    messages_dropped: int = 0


class QueueFile:
    """The broker file, as one process sees it: a connection per thread, and a heartbeat
    thread for this process's consumers. One instance per path and process (``open``)."""

    _instances: ClassVar[dict[Path, "QueueFile"]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path, *, heartbeat_expires: float = HEARTBEAT_EXPIRES) -> None:
        self.path = path
        self.heartbeat_expires = heartbeat_expires
        self._local = threading.local()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        #: Live consumer ids of this process, whose heartbeats the thread renews.
        self._consumers: set[str] = set()
        self._heart: threading.Thread | None = None
        self._stop = threading.Event()
        self._create()

    @classmethod
    def open(cls, path: Path | str, *, heartbeat_expires: float | None = None) -> "QueueFile":
        """The process's instance for ``path``, created (with its file) if need be."""
        resolved = Path(path).resolve()
        with cls._instances_lock:
            instance = cls._instances.get(resolved)
            if instance is None or instance._pid != os.getpid():
                instance = cls._instances[resolved] = cls(
                    resolved, heartbeat_expires=heartbeat_expires or HEARTBEAT_EXPIRES
                )
            elif heartbeat_expires is not None:
                instance.heartbeat_expires = heartbeat_expires
            return instance

    # -- connections ------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit: transactions are explicit)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None or getattr(self._local, "pid", None) != os.getpid():
            # A forked child never uses its parent's connection.
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            # WAL makes commits durable at the next checkpoint rather than each one: a
            # power cut may lose the last moments, a killed process loses nothing.
            connection.execute("PRAGMA synchronous = NORMAL")
            # After a burst the WAL is cut back to this when it starts over.
            connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, begun at once (``BEGIN IMMEDIATE``): short, please."""
        connection = self.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self.connection()
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode = WAL")
        with self.transaction() as tx:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    tx.execute(statement)

    # -- messages -----------------------------------------------------------------------

    def put(self, queue: str, payload: str) -> None:
        self.put_many([queue], payload)

    def put_many(self, queues: Iterable[str], payload: str) -> None:
        """One copy of ``payload`` on each queue, in one transaction."""
        now = time.time()
        rows = [(queue, payload, int(not is_task_queue(queue)), now) for queue in queues]
        if not rows:
            return
        connection = self.connection()
        if len(rows) == 1:  # autocommit: one statement is one transaction
            connection.execute(
                "INSERT INTO message (queue, payload, transient, created_at) VALUES (?, ?, ?, ?)",
                rows[0],
            )
            return
        with self.transaction() as tx:
            tx.executemany(
                "INSERT INTO message (queue, payload, transient, created_at) VALUES (?, ?, ?, ?)",
                rows,
            )

    def take(self, queue: str, owner: str | None, limit: int = 1) -> list[Taken]:
        """The oldest ``limit`` unowned rows of ``queue``, now owned by ``owner`` (or
        removed, with None: nothing will acknowledge them), oldest first."""
        connection = self.connection()
        # A read first, outside any write transaction: polling an empty queue never takes
        # the write lock from those who publish.
        if (
            connection.execute(
                "SELECT 1 FROM message WHERE queue = ? AND owner IS NULL LIMIT 1", (queue,)
            ).fetchone()
            is None
        ):
            return []
        action = "UPDATE message SET owner = ?" if owner is not None else "DELETE FROM message"
        sql = (
            f"{action} WHERE id IN (SELECT id FROM message WHERE queue = ? AND owner IS NULL"
            " ORDER BY id LIMIT ?) RETURNING id,"
            " CASE WHEN length(payload) <= ? THEN payload END, length(payload)"
        )
        params: tuple[Any, ...] = (queue, limit, MAX_PAYLOAD)
        if owner is not None:
            params = (owner, *params)
        with self.transaction() as tx:
            rows = tx.execute(sql, params).fetchall()
        return sorted(
            (
                Taken(
                    id=row[0],
                    payload=row[1],
                    size=row[2] or 0,
                    too_large=row[1] is None and (row[2] or 0) > MAX_PAYLOAD,
                )
                for row in rows
            ),
            key=lambda taken: taken.id,
        )

    def ack(self, ids: Iterable[int]) -> None:
        """Remove acknowledged rows, whoever owns them now."""
        batch = [(i,) for i in ids]
        if len(batch) == 1:
            self.connection().execute("DELETE FROM message WHERE id = ?", batch[0])
        elif batch:
            with self.transaction() as tx:
                tx.executemany("DELETE FROM message WHERE id = ?", batch)

    def release(self, ids: Iterable[int], *, owner: str) -> None:
        """Put rows ``owner`` still owns back where they were, for anyone to take (never
        a copy); rows it lost to housekeeping may be another's by now, and stay so."""
        batch = [(i, owner) for i in ids]
        if batch:
            with self.transaction() as tx:
                tx.executemany("UPDATE message SET owner = NULL WHERE id = ? AND owner = ?", batch)

    def set_aside_rows(self, rows: list[tuple[int, str]]) -> None:
        """Move rows, whole and as stored, to the set-aside table with their reasons."""
        if not rows:
            return
        now = time.time()
        with self.transaction() as tx:
            for row_id, reason in rows:
                tx.execute(
                    "INSERT INTO set_aside (at, queue, reason, item)"
                    " SELECT ?, queue, ?, payload FROM message WHERE id = ?",
                    (now, reason, row_id),
                )
                tx.execute("DELETE FROM message WHERE id = ?", (row_id,))
            self._trim_set_aside(tx)

    def set_aside(self, item: Any, reason: str, *, queue: str | None = None) -> None:
        """Keep ``item`` whole in the set-aside table, with why."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO set_aside (at, queue, reason, item) VALUES (?, ?, ?, ?)",
                (time.time(), queue, reason, item),
            )
            self._trim_set_aside(tx)

    @staticmethod
    def _trim_set_aside(tx: sqlite3.Connection) -> None:
        tx.execute(
            "DELETE FROM set_aside WHERE id <= (SELECT max(id) FROM set_aside) - ?",
            (SET_ASIDE_KEEP,),
        )

    def depth(self, queue: str) -> tuple[int, int]:
        """Rows of ``queue`` waiting, and taken but not yet acknowledged."""
        # Two counts, each on its partial index: a backlog is never scanned.
        sql = (
            "SELECT (SELECT count(*) FROM message WHERE queue = ? AND owner IS NULL),"
            " (SELECT count(*) FROM message WHERE owner IS NOT NULL AND queue = ?)"
        )
        row = self.connection().execute(sql, (queue, queue)).fetchone()
        return int(row[0]), int(row[1])

    def purge(self, queue: str) -> int:
        """Remove the rows of ``queue`` that wait (not those taken)."""
        cursor = self.connection().execute(
            "DELETE FROM message WHERE queue = ? AND owner IS NULL", (queue,)
        )
        return cursor.rowcount

    def has_queue(self, queue: str) -> bool:
        row = (
            self.connection()
            .execute(
                "SELECT EXISTS (SELECT 1 FROM binding WHERE queue = ?)"
                " OR EXISTS (SELECT 1 FROM message WHERE queue = ? AND owner IS NULL)",
                (queue, queue),
            )
            .fetchone()
        )
        return bool(row[0])

    # -- bindings -----------------------------------------------------------------------

    def bind(
        self, exchange: str, routing_key: str, pattern: str, queue: str, owner: str | None
    ) -> None:
        self.connection().execute(
            "INSERT INTO binding (exchange, routing_key, pattern, queue, owner)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET owner = excluded.owner",
            (exchange, routing_key, pattern, queue, owner),
        )

    def unbind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        self.connection().execute(
            "DELETE FROM binding WHERE exchange = ? AND routing_key = ? AND pattern = ?"
            " AND queue = ?",
            (exchange, routing_key, pattern, queue),
        )

    def bindings(self, exchange: str) -> list[tuple[str, str, str]]:
        """``(routing_key, pattern, queue)`` of every queue bound to ``exchange``."""
        rows = self.connection().execute(
            "SELECT routing_key, pattern, queue FROM binding WHERE exchange = ?", (exchange,)
        )
        return [(row[0], row[1], row[2]) for row in rows]

    # -- consumers ----------------------------------------------------------------------

    def register(self, consumer: str) -> None:
        """Start ``consumer``'s heartbeat (before it owns anything)."""
        self._beat([consumer])
        with self._lock:
            self._consumers.add(consumer)
            if self._heart is None or not self._heart.is_alive():
                self._stop.clear()
                self._heart = threading.Thread(
                    target=_heartbeat,
                    args=(weakref.ref(self), self._stop),
                    name="delivery-broker-heartbeat",
                    daemon=True,
                )
                self._heart.start()

    def unregister(self, consumer: str) -> None:
        """``consumer`` is gone: its heartbeat, its rows (put back), and the transient
        queues it had bound (their rows dropped), in one transaction."""
        with self._lock:
            self._consumers.discard(consumer)
            if not self._consumers:
                self._stop.set()
        with self.transaction() as tx:
            tx.execute("DELETE FROM consumer WHERE id = ?", (consumer,))
            tx.execute("UPDATE message SET owner = NULL WHERE owner = ?", (consumer,))
            bound = tx.execute("DELETE FROM binding WHERE owner = ? RETURNING queue", (consumer,))
            for queue in {row[0] for row in bound.fetchall()}:
                tx.execute(
                    "DELETE FROM message WHERE queue = ? AND transient = 1 AND NOT EXISTS"
                    " (SELECT 1 FROM binding WHERE binding.queue = message.queue)",
                    (queue,),
                )

    def beat(self) -> None:
        """Renew the heartbeats of this process's consumers."""
        with self._lock:
            consumers = list(self._consumers)
        if consumers:
            self._beat(consumers)

    def _beat(self, consumers: list[str]) -> None:
        now, pid, host = time.time(), os.getpid(), socket.gethostname()
        with self.transaction() as tx:
            # An upsert: housekeeping may have taken this process for dead (it was stopped
            # for longer than the expiry) and removed the row.
            tx.executemany(
                "INSERT INTO consumer (id, alive_at, pid, host) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET alive_at = excluded.alive_at",
                [(consumer, now, pid, host) for consumer in consumers],
            )

    def housekeep(self, now: float | None = None, *, force: bool = False) -> Housekeeping:
        """Put back the rows of dead consumers, drop the bindings of the transient queues
        they had bound, and drop old rows of transient queues. At most once every
        ``HOUSEKEEP_EVERY`` seconds whoever asks (unless ``force``); one transaction."""
        now = time.time() if now is None else now
        with self.transaction() as tx:
            row = tx.execute("SELECT done_at FROM housekeeping WHERE id = 1").fetchone()
            if not force and row is not None and now - HOUSEKEEP_EVERY < row[0] <= now:
                return Housekeeping()
            tx.execute(
                "INSERT INTO housekeeping (id, done_at) VALUES (1, ?)"
                " ON CONFLICT DO UPDATE SET done_at = excluded.done_at",
                (now,),
            )
            dead = tx.execute(
                "DELETE FROM consumer WHERE NOT alive_at >= ?", (now - self.heartbeat_expires,)
            ).rowcount
            released = tx.execute(
                "UPDATE message SET owner = NULL WHERE owner IS NOT NULL"
                " AND owner NOT IN (SELECT id FROM consumer)"
            ).rowcount
            bindings = tx.execute(
                "DELETE FROM binding WHERE owner IS NOT NULL"
                " AND owner NOT IN (SELECT id FROM consumer)"
            ).rowcount
            dropped = tx.execute(
                "DELETE FROM message WHERE transient = 1 AND (created_at < ? OR (created_at < ?"
                " AND owner IS NULL AND queue NOT IN (SELECT queue FROM binding)))",
                (now - TRANSIENT_MAX_AGE, now - UNBOUND_MAX_AGE),
            ).rowcount
        done = Housekeeping(dead, released, bindings, dropped)
        if released:
            logger.warning(
                "put back %d messages taken by %d consumers whose heartbeat stopped",
                released,
                dead,
            )
        if bindings or dropped:
            logger.info(
                "dropped %d bindings of departed consumers and %d stale remote-control or"
                " event messages",
                bindings,
                dropped,
            )
        return done


def _heartbeat(ref: "weakref.ref[QueueFile]", stop: threading.Event) -> None:
    """The heartbeat thread: renew, then housekeep, every ``HEARTBEAT_EVERY`` seconds. A
    daemon: the consumer's own loop does not poll while every worker thread is busy."""
    while not stop.wait(HEARTBEAT_EVERY):
        queue_file = ref()
        if queue_file is None or queue_file._pid != os.getpid():
            return
        try:
            queue_file.beat()
            queue_file.housekeep()
        except Exception:  # whatever it is, this thread must go on: an expiry is ten beats away
            logger.exception("could not renew the broker heartbeat; trying again")
        del queue_file


def _forget_after_fork() -> None:
    # A forked child has no heartbeat thread and must not renew its parent's consumers.
    QueueFile._instances.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
