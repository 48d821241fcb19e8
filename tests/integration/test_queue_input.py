"""Whatever is on the queue, the worker goes on: every spoiled message is set aside whole
(on ``delivery.undecodable``) or recorded in the log, and good ones are still delivered."""

import json
import time
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import delivery
from delivery.transport.shape import TASK_HEADERS
from schemas import Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.messages import (
    DELETE,
    DROPPED,
    KILLERS,
    capture,
    fresh,
    set_aside_markers,
    spoil,
)
from tests.support.receiver import Receiver
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(redis_server: RedisServer, redis_stack: Stack):
    secret = webhook_secret()
    redis_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    with Receiver(secret) as receiver:
        client = redis.Redis.from_url(redis_server.url)
        yield client, receiver, capture(client, receiver.url("/template"))


def test_each_shape_that_stopped_a_worker_is_set_aside(redis_stack: Stack, queue) -> None:
    client, receiver, template = queue
    markers = []
    for _name, path, value in KILLERS + DROPPED:
        message, marker = fresh(template)
        markers.append(marker)
        client.lpush("delivery", json.dumps(spoil(message, path, value)))
    # a JSON document nested too deep for any parser, and a task naming no delivery
    client.lpush("delivery", b"[" * 100_000 + b"]" * 100_000)
    message, marker = fresh(template)
    client.lpush("delivery", json.dumps(spoil(message, ("body", 0), [5])))
    markers.append(marker)
    worker = redis_stack.worker("--concurrency", "2")
    good = delivery.send("hooks", receiver.url("/good"), Payload(message="after")).id
    redis_stack.wait_until([good], {"delivered"}, timeout=30)
    deadline = time.monotonic() + 10
    while client.llen("delivery.undecodable") < len(markers) + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.process is not None and worker.process.poll() is None
    kept = set_aside_markers(client)
    assert [m for m in markers if m not in kept] == []
    assert client.llen("delivery.undecodable") == len(markers) + 1
    assert "Unrecoverable error" not in worker.output()
    assert "Trying to re-establish the connection" not in worker.output()


#: Fields of a real message to spoil, at every level.
PATHS: list[tuple[Any, ...]] = [
    ("body",),
    ("content-type",),
    ("content-encoding",),
    ("headers",),
    ("properties",),
    *[("headers", key) for key in TASK_HEADERS],
    *[
        ("properties", key)
        for key in (
            "delivery_tag", "delivery_info", "body_encoding", "priority", "reply_to",
            "correlation_id", "delivery_mode",
        )
    ],
    ("properties", "delivery_info", "exchange"),
    ("properties", "delivery_info", "routing_key"),
    ("body", 0),
    ("body", 1),
    ("body", 2),
    ("body", 0, 0),
    *[("body", 0, 0, key) for key in ("schema_version", "channel", "address", "payload")],
    ("body", 0, 0, "payload", "message"),
    ("body", 2, "callbacks"),
    ("body", 2, "chain"),
]  # fmt: skip

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
VALUES = JSON | st.just(DELETE) | st.sampled_from(["x" * 100_000, "2999-01-01T00:00:00"])


def test_spoiled_real_messages_never_stop_the_worker(redis_stack: Stack, queue) -> None:
    client, receiver, template = queue
    worker = redis_stack.worker("--concurrency", "4")
    pushed_count = [0]

    @settings(
        deadline=None,
        max_examples=250,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(path=st.sampled_from(PATHS), value=VALUES)
    def pushed(path: tuple[Any, ...], value: Any) -> None:
        message, marker = fresh(template)
        try:
            spoil(message, path, value)
        except (KeyError, IndexError, TypeError):
            return  # the field is gone with an earlier part of the path
        client.lpush("delivery", json.dumps(message))
        pushed_count[0] += 1
        # Then the item ends up somewhere a person can find it: the log or the list.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if redis_stack.log.get(marker) is not None or marker in set_aside_markers(client):
                break
            assert worker.process is not None and worker.process.poll() is None
            time.sleep(0.02)
        else:
            raise AssertionError(f"{path}={value!r:.200}: neither recorded nor set aside")

    pushed()
    assert pushed_count[0] >= 60  # most examples reach the queue
    assert worker.process is not None and worker.process.poll() is None
    good = delivery.send("hooks", receiver.url("/good"), Payload(message="after")).id
    redis_stack.wait_until([good], {"delivered"}, timeout=30)
    assert "Unrecoverable error" not in worker.output()
