"""What every part of the delivery log shares: the engine, sessions and write transactions."""

import contextlib
from collections.abc import Iterator
from typing import Any, Self

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import sessionmaker

from delivery.log.database import get_engine, upsert_insert
from schemas import Settings


class LogBase:
    """The connection to the log. ``DeliveryLog`` combines the parts built on it: the hot
    path (``store``), the read models (``records``), the sweep and the admin writes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._sqlite = engine.dialect.name == "sqlite"
        self._insert: Any = upsert_insert(engine.dialect.name)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(get_engine(settings.resolved_database_url))

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it takes this process's write lock as it begins
        (``database.write_lock``): one writer at a time, queued here, not in SQLite."""
        with self.engine.begin() as connection:
            yield connection
