"""What the HTTP service asks the broker directly: is it there, and how much waits on it.

The Redis broker is asked with its own commands (``PING``, ``LLEN``), RabbitMQ with a
passive ``queue.declare``; the embedded broker is a SQLite file, whose rows are counted
(WAL: a reader never waits on the workers). Every answer comes from the broker itself, so
it is the same whichever API process is asked, however many workers consume.
"""

import threading
from dataclasses import dataclass
from typing import Any

from schemas import Settings

#: Seconds a probe waits for the broker.
PROBE_TIMEOUT = 2.0
#: The hash where kombu's Redis transport keeps messages delivered but not acknowledged.
UNACKED_KEY = "unacked"


@dataclass(frozen=True, slots=True)
class QueueDepth:
    #: Task messages waiting (a batch message counts once, whatever it carries).
    ready: int
    #: Task messages taken by a worker and not yet acknowledged (None: not known here).
    unacked: int | None
    #: Consumers taking from the queue (None: not known here).
    consumers: int | None = None


class BrokerProbe:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    def _redis(self) -> Any:
        with self._lock:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(
                    self.settings.broker_url,
                    socket_connect_timeout=PROBE_TIMEOUT,
                    socket_timeout=PROBE_TIMEOUT,
                )
            return self._client

    def check(self) -> None:
        """Return if the broker is reachable.

        Raises:
            OSError: the broker cannot be reached (or, embedded, its folder is missing).
        """
        settings = self.settings
        if settings.is_redis_broker:
            import redis

            try:
                self._redis().ping()
            except redis.RedisError as exc:
                raise OSError(f"redis: {type(exc).__name__}") from None
        elif settings.is_embedded_broker:
            self._embedded_depth()
        else:
            self._kombu_check()

    def _kombu_check(self) -> None:
        from kombu.connection import Connection

        connection = Connection(  # type: ignore[no-untyped-call]
            self.settings.broker_url, connect_timeout=PROBE_TIMEOUT
        )
        with connection as conn:
            try:
                conn.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - every transport raises its own
                raise OSError(type(exc).__name__) from None

    def depth(self) -> QueueDepth | None:
        """Messages on the delivery queue; None where the broker cannot say (memory://).

        Raises:
            OSError: the broker cannot be reached.
        """
        settings = self.settings
        if settings.is_redis_broker:
            import redis

            try:
                ready, unacked = (
                    self._redis()
                    .pipeline(transaction=False)
                    .llen(settings.queue)
                    .hlen(UNACKED_KEY)
                    .execute()
                )
            except redis.RedisError as exc:
                raise OSError(f"redis: {type(exc).__name__}") from None
            return QueueDepth(int(ready), int(unacked))
        if settings.is_embedded_broker:
            ready, unacked = self._embedded_depth()
            return QueueDepth(ready, unacked)
        if settings.is_amqp_broker:
            return self._amqp_depth()
        return None

    def _amqp_depth(self) -> QueueDepth:
        """RabbitMQ's own count, from a passive declare: messages ready (not those taken and
        unacknowledged, which AMQP does not tell) and consumers.

        Raises:
            OSError: the broker cannot be reached.
        """
        from amqp.exceptions import NotFound  # type: ignore[import-untyped]
        from kombu.connection import Connection

        options = {"read_timeout": PROBE_TIMEOUT, "write_timeout": PROBE_TIMEOUT}
        connection = Connection(  # type: ignore[no-untyped-call]
            self.settings.broker_url, connect_timeout=PROBE_TIMEOUT, transport_options=options
        )
        with connection as conn:
            try:
                conn.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT)
                channel = conn.channel()
                try:
                    _, ready, consumers = channel.queue_declare(
                        queue=self.settings.queue, passive=True
                    )
                except NotFound:
                    return QueueDepth(0, None, 0)  # not declared yet: nothing was published
            except Exception as exc:  # noqa: BLE001 - every transport raises its own
                raise OSError(f"amqp: {type(exc).__name__}") from None
        return QueueDepth(int(ready), None, int(consumers))

    def _embedded_depth(self) -> tuple[int, int]:
        """Ready and unacknowledged rows of the delivery queue in the broker file (created
        if no producer or worker has yet: the embedded broker is wherever its file can be).

        Raises:
            OSError: the file cannot be opened or read.
        """
        import sqlite3

        from delivery.transport.embedded_store import QueueFile

        try:
            return QueueFile.open(self.settings.broker_file).depth(self.settings.queue)
        except sqlite3.Error as exc:
            raise OSError(f"embedded broker: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
