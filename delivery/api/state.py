"""What every route of one app shares: the engine's assembly, the keys, the broker probe."""

import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import text

from delivery.api.broker import BrokerProbe
from delivery.api.keys import KeyStore, KeyVerifier
from delivery.api.metrics import Exposition
from delivery.engine.assembly import Assembly
from delivery.log import DeliveryLog
from delivery.producer.publisher import Publisher, get_publisher
from schemas import Settings


@dataclass
class ApiState:
    settings: Settings
    assembly: Assembly
    keys: KeyStore
    verifier: KeyVerifier
    broker: BrokerProbe
    exposition: Exposition
    _heads: set[str] | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @property
    def log(self) -> DeliveryLog:
        return self.assembly.log

    @property
    def publisher(self) -> Publisher:
        """The producer's publisher: the API enqueues exactly as ``delivery.send`` does."""
        return get_publisher(self.settings)

    def check_log(self) -> None:
        """Return if the log answers and its schema is current.

        Raises:
            SQLAlchemyError: the log is unreachable.
            RuntimeError: the schema is behind the code's migrations.
        """
        from alembic.runtime.migration import MigrationContext

        with self.log.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            current = set(MigrationContext.configure(connection).get_current_heads())
        if current != self._migration_heads():
            raise RuntimeError("the delivery log is not migrated: run `delivery db upgrade`")

    def _migration_heads(self) -> set[str]:
        with self._lock:
            if self._heads is None:
                from delivery.log.migrate import heads

                self._heads = set(heads())
            return self._heads

    def close(self) -> None:
        self.broker.close()
        self.assembly.close()


async def _state(request: Request) -> ApiState:
    # async: a trivial dependency run on the event loop costs no hop to a worker thread.
    state: ApiState = request.app.state.api
    return state


#: The app's shared state, as a route parameter.
State = Annotated[ApiState, Depends(_state)]
