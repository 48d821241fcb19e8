"""kombu's Redis transport, hardened for at-least-once delivery.

Two gaps in kombu's own transport are closed here:

* **Garbage on the queue.** Anything can be pushed onto a Redis list, and kombu and Celery
  read each item inside the worker's consumer loop, so one item of garbage, or a message
  with one field of the wrong type, is an unrecoverable error that stops the worker (or a
  reconnect loop that never ends). Here an item that is not a task message the worker can
  run (``delivery.transport.shape``) is set aside, whole, on a list of its own for a person
  to look at, and the worker goes on.
* **A message popped but not yet recorded.** kombu takes a message with ``BRPOP`` and only
  then records it as unacknowledged; a worker killed between the two (the reply may sit
  unread in the socket for a while) loses it for good. Here the message is moved atomically
  with ``BLMOVE`` into an in-flight list of this consumer's own, and removed from there only
  once it is recorded as unacknowledged. Consumers keep a heartbeat key alive; any worker
  that finds an in-flight list whose owner's heartbeat has expired puts its messages back.
* **A message held by a worker that died.** kombu gives an unacknowledged message back
  only after the visibility timeout (an hour by default), so what a killed worker had
  reserved (prefetched, waiting for its ETA, or coalesced) waited that long. Here each
  consumer also keeps the tags it holds in a set of its own, in the same transaction that
  records them; when its heartbeat expires, any live worker puts them back at once.

And two costs of kombu's are cut: a message took three broker round trips on the worker's
consumer thread (pop, record, acknowledge), which at a few hundred a second was most of
that thread's time (bench section 1, py-spy). Here the round trip that records a message
also moves more, recorded together in one more: twice as many as the last one brought, as
far as the prefetch has room (so that under light load nothing is asked of an empty
queue); and the acknowledgements made in one turn of the event loop go in one pipeline.
"""

import json
import logging
import threading
import time
import uuid
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps
from redis.exceptions import ConnectionError as RedisConnectionError

from delivery.transport.shape import inspect, kombu_problem

logger = logging.getLogger(__name__)

#: Where undecodable items go (newest first, the last 10,000 kept).
SET_ASIDE = "delivery.undecodable"
SET_ASIDE_KEEP = 10_000
#: ``delivery.inflight.<consumer>:<queue key>``: messages taken but not yet recorded.
INFLIGHT_PREFIX = "delivery.inflight."
#: ``delivery.alive.<consumer>``: present while the consumer lives.
ALIVE_PREFIX = "delivery.alive."
#: ``delivery.held.<consumer>``: delivery tags the consumer holds unacknowledged.
HELD_PREFIX = "delivery.held."
#: A consumer's heartbeat lasts this long, and is renewed on every poll for messages and
#: on every look for unacknowledged ones (every 5 s at most; see celery_config), so a busy
#: consumer that is not polling stays alive, and a dead one's messages are back within
#: 20 s (the promise is 30 s with default settings).
ALIVE_SECONDS = 15
ALIVE_REFRESH = 3.0
#: Seconds between looks for what dead consumers held (each look is a SCAN).
ORPHAN_LOOK_EVERY = 3.0
#: Most messages moved in one round trip beyond the one a blocking pop returned.
MOST_TAKEN_AT_ONCE = 64


def set_aside(client: Any, item: bytes | str) -> None:
    """Keep ``item`` whole on the set-aside list, for a person to look at."""
    set_aside_in(client.pipeline(transaction=False), item).execute()


def set_aside_in(pipe: Any, item: bytes | str) -> Any:
    """``set_aside`` as commands added to ``pipe`` (one transaction with others)."""
    return pipe.lpush(SET_ASIDE, item).ltrim(SET_ASIDE, 0, SET_ASIDE_KEEP - 1)


def _unacked(item: bytes | str, properties: dict[str, Any]) -> bytes:
    """The unacknowledged record of a message kombu restores, ``[message, exchange,
    routing_key]`` in JSON, made from the item as it came (valid JSON: ``inspect`` read
    it) rather than by encoding the decoded message again."""
    info = properties["delivery_info"]
    raw = item.encode() if isinstance(item, str) else item
    route = json.dumps([info.get("exchange"), info.get("routing_key")]).encode()
    return b"[" + raw + b"," + route[1:]


def is_task_queue(queue: str) -> bool:
    """Task queues hold Celery tasks only; Celery's control replies travel on
    ``<id>.reply.celery.pidbox`` lists through this transport too, and are not tasks."""
    return not queue.endswith("pidbox")


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Acknowledged in this turn of the event loop, not yet removed in Redis.
        self._acked: list[str] = []

    def append(self, message: Any, delivery_tag: Any) -> None:
        recorded = self.channel.recorded
        if delivery_tag in recorded:
            # Recorded as unacknowledged already, when it was taken (Channel._record).
            recorded.discard(delivery_tag)
            super(kombu_redis.QoS, self).append(message, delivery_tag)
            return
        super().append(message, delivery_tag)
        # kombu's own way of taking it (several queues): held as well, a moment later.
        with self.channel.conn_or_acquire() as client:
            client.sadd(self.channel.held_key, delivery_tag)

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        # Acknowledged, rejected or put back: no longer held (by this consumer; what is
        # restored for a dead one leaves with its set).
        return (
            super()
            ._remove_from_indices(delivery_tag, pipe)
            .srem(self.channel.held_key, delivery_tag)
        )

    def ack(self, delivery_tag: Any) -> None:
        transport = self.channel.connection  # None once the channel is closed
        if transport is None or not transport.in_event_loop():
            # kombu's way; on a closed channel that is the connection error Celery expects
            # ("Couldn't ack"; see Channel._connparams), never an AttributeError.
            super().ack(delivery_tag)
            return
        # On the event loop's thread: Redis hears of it with the others of this turn, before
        # the loop next waits for the broker (Transport.flush_acknowledgements).
        self._acked.append(delivery_tag)
        super(kombu_redis.QoS, self).ack(delivery_tag)

    def flush_acknowledgements(self) -> None:
        """Remove what was acknowledged since the last flush from Redis, in one pipeline."""
        tags, self._acked = self._acked, []
        if not tags:
            return
        try:
            with self.channel.conn_or_acquire() as client:
                client.pipeline(transaction=False).zrem(self.unacked_index_key, *tags).hdel(
                    self.unacked_key, *tags
                ).srem(self.channel.held_key, *tags).execute()
        except self.channel.connection_errors as exc:
            # As kombu's "Couldn't ack": they come back after the visibility timeout, and
            # the delivery log skips each as done.
            logger.warning("could not acknowledge %d messages (%r)", len(tags), exc)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        # Runs on a timer in the worker's event loop, also while every thread is busy and
        # the consumer is not polling: the place to keep its heartbeat alive.
        self.channel._keep_alive()
        self.flush_acknowledgements()  # so that none of them is taken for lost
        super().restore_visible(*args, **kwargs)
        self.channel.restore_orphans()


class Channel(kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consumer_id = uuid.uuid4().hex
        self._moving_from: str | None = None
        self._alive_at = 0.0
        #: Delivery tags recorded as unacknowledged when taken, for QoS.append to skip.
        self.recorded: set[str] = set()
        self._sync_client: Any = None
        #: How many more to move with the next message taken (see ``_brpop_read``).
        self._more = 1
        self._orphans_looked_at = 0.0

    def _create_client(self, asynchronous: bool = False) -> Any:
        # kombu builds a new redis client for every publish, acknowledgement and event;
        # the client is thread-safe and costs nothing to keep, but a good deal to build.
        # It is rebuilt when kombu replaces the connection pool (after a reconnect).
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client

    # -- taking messages -------------------------------------------------------------

    def _brpop_start(self, timeout: Any = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        if len(keys) != 1 or self.global_keyprefix:
            # BLMOVE takes one source; with several, fall back to kombu's BRPOP.
            self._moving_from = None
            super()._brpop_start(timeout)
            return
        self._keep_alive()
        self._moving_from = keys[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command(
            "BLMOVE",
            keys[0],
            self._inflight_key(keys[0]),
            "RIGHT",
            "LEFT",
            self.brpop_timeout if timeout is None else (timeout or 0),
        )

    def _brpop_read(self, **options: Any) -> bool:
        source = self._moving_from
        try:
            if source is None:
                return self._read_popped(**options)
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not item:
                raise Empty()
            queue = bytes_to_str(source)
            self._queue_cycle.rotate(queue)
            room = self.qos.can_consume_max_estimate()
            more = MOST_TAKEN_AT_ONCE if room is None else min(MOST_TAKEN_AT_ONCE, room - 1)
            # As TCP's slow start: twice as many as last time if all came, else as many as
            # came (one at least), so that under light load a message does not pay for
            # moves that find the queue empty, and a burst is taken in a few round trips.
            more = max(0, min(more, self._more))
            messages, taken = self._record(source, [item], more=more)
            if more:  # (none asked for: the prefetch was full, which says nothing)
                full = len(taken) == more
                self._more = min(MOST_TAKEN_AT_ONCE, 2 * more) if full else max(1, len(taken))
            try:
                self._deliver_recorded(messages, queue)
            except BaseException:
                self._put_back(source, taken)  # or they wait in flight while we live
                raise
            if taken:
                messages, _ = self._record(source, taken, more=0)
                self._deliver_recorded(messages, queue)
            return True
        finally:
            self._moving_from = None
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _record(
        self, source: str, items: list[bytes], *, more: int
    ) -> tuple[list[dict[str, Any]], list[bytes]]:
        """Record ``items`` (in the in-flight list) as unacknowledged, set aside what is not
        a message we can run, and move ``more`` items from ``source`` to the in-flight list:
        one round trip, one transaction (each item is always in one place or another).
        Returns the recorded messages and the items moved."""
        inflight = self._inflight_key(source)
        task = is_task_queue(bytes_to_str(source))
        messages, refused = [], []
        unacked: dict[str, bytes] = {}
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=True)
            for item in items:
                message, problem = inspect(item, task=task)
                if message is None:
                    refused.append((item, problem))
                    set_aside_in(pipe, item)
                else:
                    properties = message["properties"]
                    unacked[properties["delivery_tag"]] = _unacked(item, properties)
                    messages.append(message)
                pipe.lrem(inflight, 1, item)
            if unacked:
                pipe.zadd(self.qos.unacked_index_key, dict.fromkeys(unacked, time.time()))
                pipe.hset(self.qos.unacked_key, mapping=unacked)
                pipe.sadd(self.held_key, *unacked)
            for _ in range(more):
                pipe.lmove(source, inflight, "RIGHT", "LEFT")
            replies = pipe.execute()
        for item, problem in refused:
            self._log_set_aside(item, bytes_to_str(source), problem)
        # The last ``more`` replies are the moves' (an empty slice when there were none).
        return messages, [item for item in replies[len(replies) - more :] if item]

    def _put_back(self, source: str, items: list[bytes]) -> None:
        """Return items moved but not recorded to the end of ``source`` consumers take
        from, oldest last (so first), in one transaction."""
        if not items:
            return
        inflight = self._inflight_key(source)
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=True)
            for item in reversed(items):
                pipe.lrem(inflight, 1, item).rpush(source, item)
            pipe.execute()

    def _deliver_recorded(self, messages: list[dict[str, Any]], queue: str) -> None:
        """Hand recorded messages to the consumer; what it does not take (no consumer, or
        no acknowledgement wanted) is unrecorded, and what an error kept from it goes back
        on the queue at once rather than after the visibility timeout."""
        tags = [message["properties"]["delivery_tag"] for message in messages]
        self.recorded.update(tags)
        delivered = 0
        try:
            for message in messages:
                self.connection._deliver(message, queue)
                delivered += 1
        finally:
            # Newest first, each to the end consumers take from: the oldest goes first.
            for number, tag in reversed(list(enumerate(tags))):
                if tag not in self.recorded:
                    continue
                self.recorded.discard(tag)
                if number < delivered:
                    self.qos._remove_from_indices(tag).execute()
                else:
                    self.qos.restore_by_tag(tag)

    def _read_popped(self, **options: Any) -> bool:
        try:
            dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
        except self.connection_errors:
            self.client.connection.disconnect()
            raise
        if not dest__item:
            raise Empty()
        dest, item = dest__item
        queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        self._deliver_item(item, queue)
        return True

    def _deliver_item(self, item: bytes, queue: str) -> None:
        message, problem = inspect(item, task=is_task_queue(queue))
        if message is None:
            self._set_aside(item, queue, problem)
            return
        self.connection._deliver(message, queue)

    def _get(self, queue: str, timeout: Any = None) -> dict[str, Any]:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    message, problem = inspect(item, task=is_task_queue(queue))
                    if message is None:
                        self._set_aside(item, queue, problem)
                        continue
                    return message
            self._maybe_update_queues_expire(client, queue)
            raise Empty()

    def set_aside(self, item: bytes | str, reason: str) -> None:
        """Keep ``item`` whole on the set-aside list (the reason is the caller's to log)."""
        with self.conn_or_acquire() as client:
            set_aside(client, item)

    def _set_aside(self, item: bytes, queue: str, problem: str) -> None:
        self.set_aside(item, problem)
        self._log_set_aside(item, queue, problem)

    def _log_set_aside(self, item: bytes, queue: str, problem: str) -> None:
        logger.error(
            "set aside an item on queue %r that is not a task message we can run (%s; "
            "%d bytes); see list %r",
            queue,
            problem,
            len(item),
            SET_ASIDE,
        )

    def _deliver_fanout_message(self, message: Any, exchange: str) -> bool:
        # Broadcasts (Celery's remote control) arrive by PUBLISH, which anyone can send too.
        problem = kombu_problem(message)
        if problem is not None:
            self._set_aside(dumps(message).encode(), f"broadcast {exchange}", problem)
            return True
        return bool(super()._deliver_fanout_message(message, exchange))

    # -- in-flight bookkeeping ------------------------------------------------------------

    def _inflight_key(self, source: str) -> str:
        return f"{INFLIGHT_PREFIX}{self._consumer_id}:{source}"

    @property
    def held_key(self) -> str:
        return HELD_PREFIX + self._consumer_id

    def _keep_alive(self) -> None:
        now = time.monotonic()
        if now - self._alive_at < ALIVE_REFRESH:
            return
        with self.conn_or_acquire() as client:
            client.set(ALIVE_PREFIX + self._consumer_id, 1, ex=ALIVE_SECONDS)
        self._alive_at = now

    def restore_orphans(self) -> int:
        """Put back what consumers whose heartbeat has expired took: their in-flight
        messages, and those they held unacknowledged. At most every few seconds."""
        now = time.monotonic()
        if now - self._orphans_looked_at < ORPHAN_LOOK_EVERY:
            return 0
        self._orphans_looked_at = now
        restored = 0
        with self.conn_or_acquire() as client:
            for raw in client.scan_iter(match=INFLIGHT_PREFIX + "*", count=100):
                key = bytes_to_str(raw)
                consumer, _, source = key[len(INFLIGHT_PREFIX) :].partition(":")
                if not source or client.exists(ALIVE_PREFIX + consumer):
                    continue
                # Back onto the end consumers take from, so they go first.
                while client.lmove(key, source, "RIGHT", "RIGHT") is not None:
                    restored += 1
            for raw in client.scan_iter(match=HELD_PREFIX + "*", count=100):
                key = bytes_to_str(raw)
                if client.exists(ALIVE_PREFIX + key[len(HELD_PREFIX) :]):
                    continue
                # Each tag is restored in a transaction that watches the unacknowledged
                # hash, so two workers restoring the same orphan put it back once.
                for tag in client.smembers(key):
                    self.qos.restore_by_tag(bytes_to_str(tag), client)
                    restored += 1
                client.delete(key)
        if restored:
            logger.warning("put back %d messages taken by workers that died", restored)
        return restored

    def close(self) -> None:
        if not self.closed:
            self.qos.flush_acknowledgements()  # before kombu restores what is not acked
            try:
                with self.conn_or_acquire() as client:
                    # kombu restores what is still held next; the set goes with it.
                    client.delete(ALIVE_PREFIX + self._consumer_id)
            except self.connection_errors:
                pass  # the heartbeat expires on its own
        super().close()

    def _connparams(self, asynchronous: bool = False) -> Any:
        # After Redis restarts, Celery reconnects with a new channel, but tasks still running
        # acknowledge through the old one, whose connection is detached; kombu then fails
        # with an AttributeError that stops the worker. A connection error instead is what
        # Celery expects ("Couldn't ack"): the message stays unacknowledged in Redis, comes
        # back after the visibility timeout, and the delivery log skips it as done.
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("this channel's broker connection is closed")
        return super()._connparams(asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop_thread: int | None = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        # Every turn of the loop calls its tick callbacks after the calls it had queued
        # (where tasks' acknowledgements are made) and before it waits on the sockets.
        loop.on_tick.add(self.flush_acknowledgements)

    def in_event_loop(self) -> bool:
        """Whether this thread runs the event loop, which flushes acknowledgements."""
        return self._loop_thread == threading.get_ident()

    def flush_acknowledgements(self) -> None:
        self._loop_thread = threading.get_ident()
        for channel in self.channels:
            if not channel.closed:
                channel.qos.flush_acknowledgements()
