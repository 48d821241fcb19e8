"""Engines for the delivery log: SQLite by default, PostgreSQL in production."""

import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from delivery.errors import ConfigurationError

logger = logging.getLogger(__name__)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()

#: Seconds between WAL checkpoints on SQLite, run by a thread of their own (see below).
CHECKPOINT_INTERVAL = 1.0
#: WAL frames (pages) past which a checkpoint that writers kept from finishing is finished
#: with this process's writers held back, so that the WAL starts again from its beginning.
RESET_FRAMES = 1000

#: Bytes a WAL file is cut back to when it starts over.
WAL_SIZE_LIMIT = 16 * 1024 * 1024

#: Page cache per SQLite connection, in KiB. SQLite's default (2 MiB) fills slowly as the
#: log grows, in every pooled connection: the worker's memory rose by 10 % over 50,000
#: deliveries (bench section 4; +8.6 % at 512 KiB, +3.4 % at 128 KiB, throughput the same).
#: The OS caches the file anyway; this keeps the pages a delivery touches warm.
CACHE_KIB = 128

_write_locks: "weakref.WeakKeyDictionary[Engine, threading.RLock]" = weakref.WeakKeyDictionary()
#: ``Connection.info`` key: this connection's transaction holds the process's write lock.
_HOLDS_WRITE_LOCK = "delivery_holds_write_lock"

#: Execution option for connections that only read: on SQLite they begin a deferred
#: transaction, which in WAL mode never waits for a writer (see ``read_only``).
READ_ONLY_OPTION = "delivery_read_only"


def make_engine(url: str) -> Engine:
    """A new engine for ``url``, with SQLite set up for many writers on one machine.

    Raises:
        ConfigurationError: ``url`` is not a URL SQLAlchemy reads, or its driver is missing.
    """
    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()  # the driver, so a missing one is named here
    except ArgumentError as exc:
        raise ConfigurationError(
            f"DELIVERY_DATABASE_URL is not a database URL SQLAlchemy can use ({exc}); e.g. "
            "postgresql+psycopg://user:password@host/delivery or sqlite:///path/log.sqlite3"
        ) from exc
    except ImportError as exc:
        raise ConfigurationError(
            f"DELIVERY_DATABASE_URL needs the driver {exc.name!r}, which is not installed"
        ) from exc
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    checkpointing: list[int] = []  # the process whose thread checkpoints this engine

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers (the CLI) work while worker threads write; a busy timeout makes
        # writers wait for each other instead of failing with "database is locked".
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        # Deleted and overwritten rows are zeroed, not left readable in free space: an
        # erased address (``delivery erase``) must leave the file, not only the tables.
        cursor.execute("PRAGMA secure_delete=ON")
        # SQLite checkpoints the WAL inside whichever commit crosses 1,000 pages, and that
        # commit waits for the copy and its fsync: about once a second at 100 deliveries/s,
        # it was the latency tail (bench section 6). A thread of its own does it instead.
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        # And when it starts over, a WAL that a burst made large is cut back to this.
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cursor.close()
        if checkpointing != [os.getpid()]:  # a forked child starts its own thread
            checkpointing[:] = [os.getpid()]
            _checkpoint_in_background(engine)
        # Let SQLAlchemy's "begin" event below open transactions, not the driver.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        # A deferred transaction that reads and then writes fails at once with "database is
        # locked" when another writer got in between; taking the write lock up front makes
        # it wait its turn instead. A reader has no such turn to wait for.
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
            return
        # Every writer of this process, whatever part of the product it is (the log, the
        # breaker, channels, inbox, keys…), queues on one lock, not in SQLite's busy
        # handler; re-entrant, for the parts that take it themselves around a transaction.
        lock = write_lock(engine)
        lock.acquire()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            lock.release()
            raise
        connection.info[_HOLDS_WRITE_LOCK] = True

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _release_write_lock(connection: Any) -> None:
        if connection.info.pop(_HOLDS_WRITE_LOCK, False):
            write_lock(engine).release()

    return engine


def _checkpoint_in_background(engine: Engine) -> None:
    """Checkpoint the WAL every ``CHECKPOINT_INTERVAL`` while ``engine`` lives. PASSIVE
    waits for no one: writers go on appending meanwhile, and a checkpoint that a reader
    holds back finishes on a later turn."""
    ref = weakref.ref(engine)

    def run() -> None:
        while True:
            time.sleep(CHECKPOINT_INTERVAL)
            alive = ref()
            if alive is None:
                return
            try:
                raw = alive.raw_connection()
                try:
                    cursor = raw.cursor()
                    _, frames, _ = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames >= RESET_FRAMES:
                        # The WAL only starts over when a writer begins with all of it
                        # copied, and writers appended meanwhile: copy what they added
                        # with this process's writers waiting (a short copy and one fsync),
                        # or under steady load the WAL grows for ever.
                        with write_lock(alive):
                            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    cursor.close()
                finally:
                    raw.close()
            except Exception as exc:  # noqa: BLE001 - the next turn tries again
                logger.debug("WAL checkpoint skipped (%s)", exc)
            del alive

    threading.Thread(target=run, name="delivery-wal-checkpoint", daemon=True).start()


def write_lock(engine: Engine) -> threading.RLock:
    """The lock this process's writers to ``engine`` take in turn (SQLite has one writer
    at a time; threads queue here instead of in SQLite's busy handler, which sleeps in
    growing steps and wastes the wait). Every write transaction on a SQLite engine takes it
    as it begins; taking it around one as well is allowed (it is re-entrant)."""
    with _lock:
        lock = _write_locks.get(engine)
        if lock is None:
            lock = _write_locks[engine] = threading.RLock()
        return lock


def read_only(engine: Engine) -> Engine:
    """``engine`` for reads that must not queue behind writers (the checks before every
    send): same pool and events, and on SQLite no write lock. Never write through it."""
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def get_engine(url: str) -> Engine:
    """The process's shared engine for ``url`` (one connection pool per database)."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (after a fork, and in tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def upsert_insert(dialect_name: str) -> Any:
    """The ``insert`` of the log's dialect: both backends have INSERT … ON CONFLICT, each
    spelt by its own dialect's construct."""
    return (postgresql if dialect_name == "postgresql" else sqlite).insert
