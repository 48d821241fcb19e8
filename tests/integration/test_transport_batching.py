"""The transport takes as many messages as the prefetch allows in one round trip, and sends
the acknowledgements of one turn of the event loop together, against a real redis-server:
every message is always queued, in flight, or recorded as unacknowledged, never lost."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.message import Message
from kombu.messaging import Consumer

from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.messages import KILLERS, capture, fresh, spoil
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

TRANSPORT = "delivery.transport.redis:Transport"
#: As the worker's configuration has it: one list per queue, taken with BLMOVE.
OPTIONS = {"priority_steps": [0]}
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


@pytest.fixture
def template(redis_server: RedisServer, redis_stack: Stack) -> dict[str, Any]:
    """A real ``delivery.deliver`` message, as the producer put it on the queue."""
    redis_stack.channels.add("hooks", "webhook", {"secret": webhook_secret(), "timeout": 5})
    return capture(redis.Redis.from_url(redis_server.url), "http://127.0.0.1:9/never")


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def connection(redis_server: RedisServer) -> Iterator[Connection]:
    with Connection(redis_server.url, transport=TRANSPORT, transport_options=OPTIONS) as conn:
        yield conn


def _queue(client: redis.Redis, template: dict[str, Any], count: int) -> list[str]:
    markers = []
    for _ in range(count):
        message, marker = fresh(template)
        client.lpush("delivery", json.dumps(message))
        markers.append(marker)
    return markers


def _consume(
    connection: Connection, prefetch: int, *, no_ack: bool = False, fail_on: int | None = None
) -> tuple[Any, list[Message]]:
    received: list[Message] = []

    def on_message(_body: Any, message: Message) -> None:
        received.append(message)
        if fail_on is not None and len(received) == fail_on:
            raise RuntimeError("the consumer failed")

    channel = connection.channel()
    channel.basic_qos(0, prefetch, False)
    Consumer(
        channel, [Queue("delivery")], callbacks=[on_message], accept=["json"], no_ack=no_ack
    ).consume()
    return channel, received


def _drain(connection: Connection, received: list[Message], count: int) -> None:
    while len(received) < count:
        connection.drain_events(timeout=5)
    assert len(received) == count


def _inflight(client: redis.Redis) -> int:
    return sum(int(client.llen(k)) for k in client.keys("delivery.inflight.*"))


def test_one_read_takes_what_the_prefetch_allows(
    client: redis.Redis, connection: Connection, template: dict[str, Any]
) -> None:
    markers = _queue(client, template, 12)
    channel, received = _consume(connection, prefetch=5)
    # The first read takes one and one more, the next twice as many as came, up to what
    # the prefetch allows: the oldest first, each recorded as unacknowledged.
    connection.drain_events(timeout=5)
    assert [m.delivery_tag for m in received] == markers[:2]
    connection.drain_events(timeout=5)
    assert [m.delivery_tag for m in received] == markers[:5]
    # And no further: the prefetch is full, so the consumer does not read again.
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=0.5)
    # Seven wait on the queue and nothing is left in flight.
    assert sorted(k.decode() for k in client.hkeys(UNACKED)) == sorted(markers[:5])  # type: ignore[union-attr]
    assert client.zcard(UNACKED_INDEX) == 5
    assert client.llen("delivery") == 7
    assert _inflight(client) == 0
    # What is recorded is what kombu restores: the message, its exchange and routing key.
    stored = json.loads(client.hget(UNACKED, markers[0]))  # type: ignore[arg-type]
    assert stored[0]["headers"]["id"] == markers[0] and stored[1:] == ["", "delivery"]
    # Acknowledged outside an event loop, each is removed at once, as kombu does.
    received[0].ack()
    assert not client.hexists(UNACKED, markers[0])
    assert client.zcard(UNACKED_INDEX) == 4
    channel.close()


def test_acknowledgements_of_one_turn_go_together_and_none_is_lost_at_close(
    client: redis.Redis, connection: Connection, template: dict[str, Any]
) -> None:
    _queue(client, template, 4)
    channel, received = _consume(connection, prefetch=4)
    _drain(connection, received, 4)
    transport = connection.transport
    transport.flush_acknowledgements()  # this thread is now the event loop's
    for message in received[:3]:
        message.ack()
    # Acknowledged in kombu's memory, not yet in Redis: the loop's tick sends them.
    assert client.hlen(UNACKED) == 4
    transport.flush_acknowledgements()
    assert client.hlen(UNACKED) == 1 and client.zcard(UNACKED_INDEX) == 1
    received[3].ack()
    channel.close()  # what is left goes before the channel closes
    assert client.hlen(UNACKED) == 0 and client.zcard(UNACKED_INDEX) == 0
    assert client.llen("delivery") == 0


@pytest.mark.parametrize("fail_on", [1, 2])  # the first taken, or one taken with it
def test_what_a_failing_consumer_did_not_see_goes_back_at_once(
    client: redis.Redis, connection: Connection, template: dict[str, Any], fail_on: int
) -> None:
    markers = _queue(client, template, 5)
    channel, received = _consume(connection, prefetch=5, fail_on=fail_on)
    with pytest.raises(RuntimeError):
        connection.drain_events(timeout=5)
    # The one it failed on was handed over and is the consumer's (kombu restores it at
    # close); those it never saw are back on the queue, in order, not left recorded until
    # the visibility timeout nor in flight while the worker lives.
    assert [m.delivery_tag for m in received] == markers[:fail_on]
    assert sorted(k.decode() for k in client.hkeys(UNACKED)) == sorted(markers[:fail_on])  # type: ignore[union-attr]
    queued = [json.loads(i)["headers"]["id"] for i in client.lrange("delivery", 0, -1)]
    assert queued == list(reversed(markers[fail_on:]))  # the oldest at the end taken first
    assert _inflight(client) == 0
    channel.close()
    queued = [json.loads(i)["headers"]["id"] for i in client.lrange("delivery", 0, -1)]
    assert sorted(queued) == sorted(markers)
    assert client.hlen(UNACKED) == 0


def test_acknowledging_through_a_channel_kombu_closed_still_works(
    client: redis.Redis, connection: Connection, template: dict[str, Any]
) -> None:
    # After Redis restarts, tasks still running acknowledge through the old channel, whose
    # connection kombu has detached. Anything but a connection error ("Couldn't ack", the
    # message back after the timeout) would stop the worker; with the channel's client
    # still at hand, the acknowledgement simply goes through, at once.
    [marker] = _queue(client, template, 1)
    channel, received = _consume(connection, prefetch=1)
    _drain(connection, received, 1)
    connection.transport.flush_acknowledgements()  # acknowledged on the loop's thread
    connection.transport.close_channel(channel)
    received[0].ack()
    assert not client.hexists(UNACKED, marker)


def test_a_consumer_without_acknowledgements_leaves_nothing_recorded(
    client: redis.Redis, connection: Connection, template: dict[str, Any]
) -> None:
    _queue(client, template, 3)
    channel, received = _consume(connection, prefetch=3, no_ack=True)
    _drain(connection, received, 3)
    assert client.hlen(UNACKED) == 0 and client.zcard(UNACKED_INDEX) == 0
    assert _inflight(client) == 0
    channel.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kinds=st.lists(st.sampled_from(range(len(KILLERS) + 1)), min_size=1, max_size=12),
    prefetch=st.integers(min_value=1, max_value=8),
)
def test_garbage_among_the_taken_is_set_aside_and_the_rest_recorded(
    client: redis.Redis,
    redis_server: RedisServer,
    template: dict[str, Any],
    kinds: list[int],
    prefetch: int,
) -> None:
    # Any mix of good messages and messages spoiled inside their shape (the ones that
    # stopped workers), taken a prefetch at a time: each good one is handed over and
    # recorded, each spoiled one is kept whole for a person, and nothing is in flight.
    for key in ("delivery", UNACKED, UNACKED_INDEX, "delivery.undecodable"):
        client.delete(key)
    good, spoiled = [], []
    for kind in kinds:
        message, marker = fresh(template)
        if kind < len(KILLERS):
            _name, path, value = KILLERS[kind]
            message = spoil(message, path, value)
            spoiled.append(marker)
        else:
            good.append(marker)
        client.lpush("delivery", json.dumps(message))
    with Connection(redis_server.url, transport=TRANSPORT, transport_options=OPTIONS) as conn:
        channel, received = _consume(conn, prefetch=prefetch)
        while before := client.llen("delivery"):
            conn.drain_events(timeout=5)
            assert client.llen("delivery") < before
            for taken in received:
                if not taken.acknowledged:
                    taken.ack()
        assert sorted(m.delivery_tag for m in received) == sorted(good)
        assert client.llen("delivery.undecodable") == len(spoiled)
        assert _inflight(client) == 0
        assert client.hlen(UNACKED) == 0
        channel.close()
