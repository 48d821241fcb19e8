"""The embedded broker: a kombu virtual transport on a SQLite file of its own.

The default broker (``DELIVERY_BROKER_URL`` unset, ``embedded://``) needs no server and
works across the processes of one machine. It replaces kombu's filesystem transport, which
lost messages two ways: kombu's virtual QoS keeps what a worker has taken but not
acknowledged in the worker's memory only, so a SIGKILL lost every message it had reserved
(prefetched, waiting on an ETA, coalesced); and a consumer could read a message file
kombu had created but not yet written, and stop on the empty JSON.

Here (see ``delivery.transport.embedded_store`` for the file):

* **Nothing lost.** A message is a row until it is acknowledged. Taking it marks it as
  this consumer's; acknowledging removes it; rejecting it with requeue, or kombu's restore
  of what was not acknowledged when a channel closes, clears the mark (kombu's own restore
  publishes a copy, which is replaced here). A consumer whose heartbeat stopped has its
  rows put back by whichever process housekeeps next, within half a minute.
* **Garbage never stops a worker.** Every row taken is checked
  (``delivery.transport.shape.inspect``) before kombu or Celery read it; what fails is
  moved, whole and with the reason, to the set-aside table, and logged.
* **Exchanges across processes.** Bindings are rows too, so Celery's remote control
  (fanout, pidbox replies) and task events (the ``celeryev`` topic exchange, Flower's)
  reach the processes that bound them. Transient queues (those, not task queues) do not
  grow for ever once their reader has gone: see ``QueueFile.housekeep``.
"""

import logging
import os
import sqlite3
import sys
import threading
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.transport import virtual
from kombu.transport.virtual import Empty
from kombu.utils.json import dumps

from delivery.transport.embedded_store import (
    FILE_NAME,
    MAX_PAYLOAD,
    QueueFile,
    Taken,
    is_task_queue,
)
from delivery.transport.shape import inspect

logger = logging.getLogger(__name__)

#: Most rows taken in one transaction, as far as the prefetch has room.
MOST_TAKEN_AT_ONCE = 32
#: Seconds between polls of empty queues.
POLLING_INTERVAL = 0.05
#: Longest a wait for messages goes without looking whether the worker is stopping.
#: Celery's loop for transports like this one reads its shutdown flag between waits, and
#: waits 2 s at a time: a worker told to stop went on for seconds.
LONGEST_WAIT = 0.25

__all__ = ["Channel", "Transport", "is_task_queue"]


def _row_id(delivery_tag: Any) -> int | None:
    """The row a delivery tag names (``Channel._message`` makes the tags)."""
    try:
        return int(delivery_tag)
    except (TypeError, ValueError):
        return None


class QoS(virtual.QoS):
    """kombu's QoS, with the broker file as the record of what is unacknowledged: an
    acknowledgement removes the row, a requeue clears its owner, and a restore never
    publishes a copy."""

    def ack(self, delivery_tag: Any) -> None:
        row = _row_id(delivery_tag)
        if row is not None:
            self.channel.acknowledge(row)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        row = _row_id(delivery_tag)
        if row is not None:
            if requeue:
                self.channel.queue_file.release([row], owner=self.channel.consumer_id)
            else:
                self.channel.queue_file.ack([row])
        self._quick_ack(delivery_tag)


class Channel(virtual.Channel):
    QoS = QoS
    #: Bindings live in the file for every exchange type (``_queue_bind``, ``get_table``),
    #: not only fanout: a process publishing events reaches Flower's queue.
    supports_fanout = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.connection.client.transport_options
        self.queue_file = QueueFile.open(
            Path(options.get("database", FILE_NAME)),
            heartbeat_expires=options.get("heartbeat_expires"),
        )
        #: This channel's consumer id: the owner of the rows it takes.
        self.consumer_id = uuid.uuid4().hex
        #: The process that registered the consumer id (a forked child closing the channel
        #: it inherited must not release its parent's rows).
        self._registered_by: int | None = None
        #: Queues consumed without acknowledgement: their rows are removed when taken.
        self._no_ack: set[str] = set()
        #: Rows acknowledged (by the worker's threads) since the consumer's loop last
        #: removed them, and whether acknowledgements now go to the file at once.
        self._acked: list[int] = []
        self._acked_lock = threading.Lock()
        self._ack_at_once = False

    # -- acknowledging ------------------------------------------------------------------

    def acknowledge(self, row: int) -> None:
        """Remove an acknowledged row: with the others of this turn of the consumer's loop
        (one transaction, on its next poll, 50 ms at most), or at once when nothing
        consumes (also after the close: a task that finished during a warm shutdown is
        acknowledged, and its row, put back at the close, is not sent again)."""
        with self._acked_lock:
            if not self._ack_at_once and self._consumers:
                self._acked.append(row)
                return
        self.queue_file.ack([row])

    def flush_acknowledgements(self) -> None:
        with self._acked_lock:
            rows, self._acked = self._acked, []
        if not rows:
            return
        try:
            self.queue_file.ack(rows)
        except BaseException:
            with self._acked_lock:
                self._acked[:0] = rows  # the next turn tries again
            raise

    def drain_events(self, timeout: Any = None, callback: Any = None) -> Any:
        # Every turn of the consumer's loop comes here, also while the prefetch is full.
        self.flush_acknowledgements()
        return super().drain_events(timeout=timeout, callback=callback)

    def basic_cancel(self, consumer_tag: Any) -> Any:
        result = super().basic_cancel(consumer_tag)
        if not self._consumers:
            self.flush_acknowledgements()  # no loop will come back to them
        return result

    def _register(self) -> None:
        if self._registered_by is None:
            self.queue_file.register(self.consumer_id)
            self._registered_by = os.getpid()

    # -- publishing ---------------------------------------------------------------------

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        self.queue_file.put(queue, dumps(message))

    def _put_fanout(self, exchange: str, message: Any, routing_key: str, **kwargs: Any) -> None:
        queues = {queue for _, _, queue in self.get_table(exchange)}
        self.queue_file.put_many(sorted(queues), dumps(message))

    # -- bindings -----------------------------------------------------------------------

    def get_table(self, exchange: str) -> list[tuple[str, str | None, str]]:
        return [
            (routing_key, pattern or None, queue)
            for routing_key, pattern, queue in self.queue_file.bindings(exchange)
        ]

    def _queue_bind(self, exchange: str, routing_key: str, pattern: Any, queue: str) -> None:
        owner = None
        if not is_task_queue(queue):
            # A transient queue lives as long as the consumer that bound it.
            self._register()
            owner = self.consumer_id
        self.queue_file.bind(exchange, routing_key or "", pattern or "", queue, owner)

    def queue_unbind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        super().queue_unbind(queue, exchange, routing_key, arguments, **kwargs)
        if exchange is not None:
            meta = self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)
            self.queue_file.unbind(exchange, meta[0] or "", meta[1] or "", queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        if len(args) >= 3:
            exchange, routing_key, pattern = args[:3]
            self.queue_file.unbind(exchange, routing_key or "", pattern or "", queue)
        self._purge(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self.queue_file.has_queue(queue)

    def _size(self, queue: str) -> int:
        return self.queue_file.depth(queue)[0]

    def _purge(self, queue: str) -> int:
        return self.queue_file.purge(queue)

    # -- consuming ----------------------------------------------------------------------

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: Any, **kwargs: Any
    ) -> Any:
        self._register()
        if no_ack:
            self._no_ack.add(queue)
        else:
            self._no_ack.discard(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        self._register()
        for raw in self._take(queue, 1, no_ack=no_ack):
            message = self.Message(raw, channel=self)
            if not no_ack:
                self.qos.append(message, message.delivery_tag)
            return message
        return None

    def _get(self, queue: str, timeout: Any = None) -> dict[str, Any]:
        self._register()
        for message in self._take(queue, 1, no_ack=queue in self._no_ack):
            return message
        raise Empty()

    def _get_and_deliver(self, queue: str, callback: Any) -> None:
        """Take as many as the prefetch has room for (one transaction), and hand each to
        the consumer; what an error keeps from it goes back at once."""
        room = self.qos.can_consume_max_estimate()
        limit = MOST_TAKEN_AT_ONCE if room is None else max(1, min(room, MOST_TAKEN_AT_ONCE))
        messages = self._take(queue, limit, no_ack=queue in self._no_ack)
        if not messages:
            raise Empty()
        delivered = 0
        try:
            for message in messages:
                callback(message, queue)
                delivered += 1
        finally:
            rest = [_row_id(m["properties"]["delivery_tag"]) for m in messages[delivered:]]
            if rest and queue not in self._no_ack:
                # Only what is still this consumer's: the one that failed may have been
                # restored (or acknowledged) already.
                self.queue_file.release(
                    (row for row in rest if row is not None), owner=self.consumer_id
                )

    def _take(self, queue: str, limit: int, *, no_ack: bool) -> list[dict[str, Any]]:
        """Up to ``limit`` messages of ``queue``, checked; garbage is set aside."""
        taken = self.queue_file.take(queue, None if no_ack else self.consumer_id, limit)
        task = is_task_queue(queue)
        messages, refused = [], []
        for row in taken:
            message, problem = self._message(row, task=task)
            if message is None:
                refused.append((row, problem))
            else:
                messages.append(message)
        if refused:
            self._set_aside_taken(queue, refused, removed=no_ack)
        return messages

    @staticmethod
    def _message(row: Taken, *, task: bool) -> tuple[dict[str, Any] | None, str]:
        payload = row.payload
        if row.too_large:
            return None, f"larger than {MAX_PAYLOAD} bytes"
        if payload is None:
            return None, "no payload"
        if not isinstance(payload, str | bytes):
            return None, f"payload: a {type(payload).__name__}, not text"
        message, problem = inspect(payload, task=task)
        if message is None:
            return None, problem
        # The tag names the row, which acknowledging removes; kombu's own (a uuid, shared
        # by every copy of a fanout) could not tell one copy from another.
        message["properties"]["delivery_tag"] = str(row.id)
        return message, ""

    def _set_aside_taken(
        self, queue: str, refused: list[tuple[Taken, str]], *, removed: bool
    ) -> None:
        if removed:
            for row, problem in refused:
                item = row.payload if row.payload is not None else f"<{row.size} bytes>"
                self.queue_file.set_aside(item, problem, queue=queue)
        else:
            self.queue_file.set_aside_rows([(row.id, problem) for row, problem in refused])
        for row, problem in refused:
            logger.error(
                "set aside an item on queue %r that is not a %s we can read (%s; %d bytes);"
                " see table set_aside in %s",
                queue,
                "task message" if is_task_queue(queue) else "message",
                problem,
                row.size,
                self.queue_file.path,
            )

    def set_aside(self, item: bytes | str, reason: str) -> None:
        """Keep ``item`` whole in the set-aside table (the reason is the caller's to log)."""
        self.queue_file.set_aside(item, reason)

    # -- putting back -------------------------------------------------------------------

    def _restore(self, message: Any) -> None:
        row = _row_id(message.delivery_tag)
        if row is not None:
            self.queue_file.release([row], owner=self.consumer_id)

    def _restore_at_beginning(self, message: Any) -> None:
        # The row keeps its place: it is the oldest, and goes first.
        self._restore(message)

    def close(self) -> None:
        if not self.closed:
            with self._acked_lock:
                self._ack_at_once = True
            # Before what is not acknowledged is put back: these were.
            self.flush_acknowledgements()
            super().close()  # kombu restores what was not acknowledged (``_restore``)
            registered_by, self._registered_by = self._registered_by, None
            if registered_by == os.getpid():
                try:
                    self.queue_file.unregister(self.consumer_id)
                except Exception:  # the heartbeat expires on its own, and housekeeping
                    logger.warning("could not unregister from the broker", exc_info=True)
        else:
            super().close()


class Transport(virtual.Transport):
    Channel = Channel
    polling_interval = POLLING_INTERVAL
    driver_type = "embedded"
    driver_name = "sqlite"
    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
    )
    # ``database is locked`` after the busy timeout: the broker is as good as unreachable;
    # a publish retries, and a consumer reconnects.
    connection_errors = (  # type: ignore[assignment]  # (kombu's annotation is too narrow)
        *virtual.Transport.connection_errors,
        sqlite3.Error,
    )

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        if timeout is None:
            return super().drain_events(connection, timeout=timeout, **kwargs)
        # In slices, so that a worker told to stop stops waiting; anyone else (a remote
        # control command collecting replies) waits as long as it asked.
        deadline = monotonic() + timeout
        while True:
            wait = max(0.0, min(LONGEST_WAIT, deadline - monotonic()))
            try:
                return super().drain_events(connection, timeout=wait, **kwargs)
            except TimeoutError:
                if monotonic() >= deadline or _worker_stopping():
                    raise

    @property
    def default_connection_params(self) -> dict[str, Any]:
        # No host to connect to: ``embedded://`` is complete (kombu would warn, every time a
        # connection is made, that it "reverts" to localhost).
        return {"port": None, "hostname": ""}


def _worker_stopping() -> bool:
    """Whether this process is a Celery worker told to stop (SIGTERM, SIGINT, SIGQUIT)."""
    state = sys.modules.get("celery.worker.state")  # not imported: not a worker
    if state is None:
        return False
    # Each flag holds the exit code once set, and 0 (a clean exit) is one: as Celery reads
    # them (``maybe_shutdown``).
    return any(
        flag is not None and flag is not False
        for flag in (state.should_stop, state.should_terminate)
    )
