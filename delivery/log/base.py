"""What every part of the delivery log shares: the engine, sessions and the write lock."""

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Self

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import sessionmaker

from delivery.log.database import get_engine, upsert_insert, write_lock
from schemas import Settings


class LogBase:
    """The connection to the log. ``DeliveryLog`` combines the parts built on it: the hot
    path (``store``), the read models (``records``), the sweep and the admin writes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._sqlite = engine.dialect.name == "sqlite"
        self._insert: Any = upsert_insert(engine.dialect.name)
        # SQLite has one writer at a time: this process's threads take turns (and the WAL
        # checkpoint thread waits its turn when it must).
        self._write_lock: threading.RLock | contextlib.nullcontext[None] = (
            write_lock(engine) if self._sqlite else contextlib.nullcontext()
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(get_engine(settings.resolved_database_url))

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._write_lock, self.engine.begin() as connection:
            yield connection
