"""RabbitMQ as the broker (``DELIVERY_BROKER_URL=amqp://…``), with real worker processes:
deliveries go through; whatever is published to the task queue, the worker goes on, and
what it cannot run is kept whole on ``delivery.undecodable``."""

import base64
import json
import re
import struct
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import amqp  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import delivery
from delivery.api.broker import QueueDepth
from delivery.errors import PublishError
from delivery.transport.amqp import REASON_HEADER, SET_ASIDE
from delivery.transport.shape import TASK_HEADERS
from schemas import Message, Payload, Settings
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support import amqp_messages as am
from tests.support.messages import DELETE, DROPPED, KILLERS, body_of, fresh, spoil
from tests.support.receiver import Answer, Receiver
from tests.support.servers import RabbitServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(
    rabbit_server: RabbitServer, rabbit_stack: Stack
) -> Iterator[tuple[am.Sender, Receiver, Any]]:
    """A webhook channel, its receiver, a sender of crafted messages, and a real task
    message taken off the queue."""
    secret = webhook_secret()
    rabbit_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    with Receiver(secret) as receiver:
        sender = am.Sender(rabbit_server.url)
        try:
            yield sender, receiver, am.capture(sender.channel, receiver.url("/template"))
        finally:
            sender.close()


def test_deliveries_go_through_rabbitmq(rabbit_stack: Stack, queue) -> None:
    _, receiver, _ = queue
    rabbit_stack.worker("--concurrency", "4")
    one = delivery.send("hooks", receiver.url("/one"), Payload(message="hello")).id
    many = delivery.send_many(
        Message(channel="hooks", address=receiver.url("/many"), payload=Payload(message=f"m{i}"))
        for i in range(60)
    )
    ids = [one, *(r.id for r in many)]
    rabbit_stack.wait_until(ids, {"delivered"}, timeout=45)
    assert receiver.requests_to("/one")[0].verified
    assert len(receiver.requests_to("/many")) == 60


#: Killers whose field AMQP cannot carry (the broker sets it, or the wire type is fixed):
#: they cannot be published to RabbitMQ at all.
NOT_SAYABLE = {
    "delivery_tag a list",
    "delivery_tag an object",
    "delivery_tag null",
    "delivery_info empty (reconnect loop)",
    "no exchange (reconnect loop)",
    "no routing_key (reconnect loop)",
    "body_encoding a number",
    "body_encoding a list",
    "body_encoding unknown",
    "headers a string",
    "headers a number",
    "content-type a list",
    "content-encoding a number",
}


def _amqp_only(template: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Messages only AMQP can carry: (name, message, marker)."""
    crafted = []

    def add(name: str, headers_extra: dict[Any, Any] | None = None, **options: Any) -> None:
        message, marker = fresh(template)
        body = options.pop("body", base64.b64decode(message["body"]))
        headers = {**message["headers"], **(headers_extra or {})}
        raw = am.properties_bytes(headers=headers, correlation_id=marker.encode(), **options)
        assert raw is not None
        crafted.append((name, am.RawMessage(body, raw), marker))

    # The message of the bug report: a task header and a body of {}.
    marker = fresh(template)[1]
    raw = am.properties_bytes(headers={"task": "delivery.deliver", "id": marker})
    assert raw is not None
    crafted.append(("{} body", am.RawMessage(b"{}", raw), marker))
    add("a timestamp past year 9999", {"x-when": am.timestamp(2**62)})
    add("tables nested 20,000 deep", {"x-deep": am.nested(20_000)})
    add("a content type that is not UTF-8", content_type=b"\xff\xfe")
    add("a header key that is not UTF-8", {b"\xff\xfe": 1})
    add("a header string that is not UTF-8", {"x-text": b"\xff\xfe"})
    add("a decimal header", {"x-money": am.Raw(b"D" + struct.pack(">Bi", 2, 12345))})
    add("a byte-array header", {"x-bytes": am.Raw(b"x" + struct.pack(">I", 2) + b"\x00\xff")})
    add("a table as the task name", {"task": {"a": 1}})
    add("a huge retries count", {"retries": 2**62})
    add("a NUL in the task name", {"task": "delivery.deliver\x00"})
    message, marker = fresh(template)
    args, kwargs, embed = body_of(message)
    text = json.dumps([args, kwargs, embed]).encode()
    add("a body that is not UTF-8", body=b"\xff" + text + marker.encode())
    add("a body in UTF-16", body=json.dumps([args, kwargs, embed]).encode("utf-16"))
    return crafted


def test_each_crafted_message_is_set_aside_and_the_worker_goes_on(
    rabbit_server: RabbitServer, rabbit_stack: Stack, queue
) -> None:
    sender, receiver, template = queue
    markers: dict[str, str] = {}
    for name, path, value in KILLERS + DROPPED:
        message, marker = fresh(template)
        crafted = am.as_amqp(spoil(message, path, value))
        if crafted is None or set(path) & set(am.NOT_ON_AMQP):
            assert name in NOT_SAYABLE
            continue
        assert sender.publish(crafted), name
        markers[name] = marker
    assert len(markers) == len(KILLERS) + len(DROPPED) - len(NOT_SAYABLE)
    for name, crafted, marker in _amqp_only(template):
        assert sender.publish(crafted), name
        markers[name] = marker
    # Given all of them on the queue before the worker starts
    worker = rabbit_stack.worker("--concurrency", "2")
    # Then a good delivery sent after them still goes through
    good = delivery.send("hooks", receiver.url("/good"), Payload(message="after")).id
    rabbit_stack.wait_until([good], {"delivered"}, timeout=30)
    deadline = time.monotonic() + 20
    while am.depth(rabbit_server.url) < len(markers) and time.monotonic() < deadline:
        time.sleep(0.1)
    held = am.set_aside(rabbit_server.url)
    # And each crafted one is on the set-aside queue, with its reason
    missing = [name for name, marker in markers.items() if not any(marker in t for _, t in held)]
    assert missing == []
    assert len(held) == len(markers)
    assert all(reason not in ("", "None") for reason, _ in held)
    assert worker.process is not None and worker.process.poll() is None
    output = worker.output()
    assert "Unrecoverable error" not in output
    assert "Trying to re-establish the connection" not in output
    # (two were refused by Celery itself, an unknown task name: set aside by the task layer)
    assert output.count(f"see queue '{SET_ASIDE}'") >= len(markers) - 2
    assert not receiver.requests_to("/template")


#: Fields of a real message to spoil: those AMQP can carry.
PATHS: list[tuple[Any, ...]] = [
    ("body",),
    ("content-type",),
    ("content-encoding",),
    ("headers",),
    *[("headers", key) for key in (*TASK_HEADERS, "x-other")],
    *[("properties", key) for key in ("priority", "reply_to", "correlation_id")],
    ("body", 0),
    ("body", 1),
    ("body", 2),
    ("body", 0, 0),
    *[("body", 0, 0, key) for key in ("schema_version", "channel", "address", "payload")],
    ("body", 0, 0, "payload", "message"),
    ("body", 2, "callbacks"),
    ("body", 2, "chain"),
]  # fmt: skip

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    # NaN and infinities too, though RabbitMQ refuses them in headers: it closes the
    # publisher's connection (INTERNAL_ERROR), and they never reach a worker.
    | st.floats()
    | st.text(max_size=20)  # NUL and lone surrogates included
    | st.binary(max_size=8)  # a byte array, or a string that is not UTF-8
)
#: Header values only an AMQP table can hold.
WIRE = st.sampled_from(
    [
        am.timestamp(2**62),
        am.timestamp(0),
        am.nested(5_000),
        am.Raw(b"D" + struct.pack(">Bi", 255, -1)),
        am.Raw(b"T" + struct.pack(">Q", int(datetime(2030, 1, 1).timestamp()))),
    ]
)
VALUES = (
    st.recursive(
        SCALARS | WIRE,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=8,
    )
    | st.just(DELETE)
    | st.sampled_from(["x" * 100_000, "2999-01-01T00:00:00"])
)


def test_spoiled_real_messages_never_stop_the_worker(
    rabbit_server: RabbitServer, rabbit_stack: Stack, queue
) -> None:
    sender, receiver, template = queue
    worker = rabbit_stack.worker("--concurrency", "4")
    published = [0]
    seen: set[str] = set()

    def kept(marker: str) -> bool:
        if marker in seen:
            return True
        for _, text in am.set_aside(rabbit_server.url):
            seen.update(m for m in pending if m in text)
        return marker in seen

    pending: set[str] = set()

    @settings(
        deadline=None,
        max_examples=150,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(path=st.sampled_from(PATHS), value=VALUES)
    def published_one(path: tuple[Any, ...], value: Any) -> None:
        message, marker = fresh(template)
        try:
            spoil(message, path, value)
        except (KeyError, IndexError, TypeError):
            return  # the field is gone with an earlier part of the path
        try:
            crafted = am.as_amqp(message)
        except (TypeError, ValueError, RecursionError):
            return  # a value JSON cannot encode (bytes in the body, a nested timestamp)
        if crafted is None:
            return  # AMQP cannot say it
        if not sender.publish(crafted):
            return  # RabbitMQ refused it
        pending.add(marker)
        published[0] += 1
        # Then the message ends up somewhere a person can find it: the log or the queue.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if rabbit_stack.log.get(marker) is not None or kept(marker):
                break
            assert worker.process is not None and worker.process.poll() is None, worker.output()
            time.sleep(0.05)
        else:
            raise AssertionError(f"{path}={value!r:.200}: neither recorded nor set aside")

    published_one()
    assert published[0] >= 60  # most examples reach the queue
    assert worker.process is not None and worker.process.poll() is None
    good = delivery.send("hooks", receiver.url("/good"), Payload(message="after")).id
    rabbit_stack.wait_until([good], {"delivered"}, timeout=30)
    output = worker.output()
    assert "Unrecoverable error" not in output
    assert "Trying to re-establish the connection" not in output


def test_set_aside_messages_keep_their_body_properties_and_reason(
    rabbit_server: RabbitServer, rabbit_stack: Stack, queue
) -> None:
    sender, _, template = queue
    message, marker = fresh(template)
    crafted = am.as_amqp(spoil(message, ("headers", "timelimit"), 7))
    assert sender.publish(crafted)
    rabbit_stack.worker("--concurrency", "1")
    deadline = time.monotonic() + 30
    while am.depth(rabbit_server.url) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    connection = am.connect(rabbit_server.url)
    try:
        kept = am.channel_of(connection).basic_get(SET_ASIDE, no_ack=True)
    finally:
        connection.close()
    assert kept is not None
    headers = kept.properties["application_headers"]
    assert headers[REASON_HEADER] == "headers.timelimit: not what kombu and Celery expect"
    assert headers["id"] == marker and headers["timelimit"] == 7
    assert kept.properties["content_type"] == "application/json"
    assert kept.properties["delivery_mode"] == 2
    assert am.as_bytes(kept.body) == base64.b64decode(message["body"])


def test_publishing_to_a_broker_that_is_not_there_raises_publish_error(
    rabbit_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from delivery.producer import reset_publisher
    from schemas import get_settings

    monkeypatch.setenv("DELIVERY_BROKER_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    monkeypatch.setenv("DELIVERY_PUBLISH_TIMEOUT", "1.5")
    get_settings.cache_clear()
    reset_publisher()
    message = {"channel": "hooks", "address": "https://example.com/h", "payload": {"message": "m"}}
    # Each gives up when the publish timeout is over, and says so (a call that hung would
    # end the test at pytest-timeout's limit).
    for call in (
        lambda: delivery.send("hooks", "https://example.com/h", Payload(message="m")),
        lambda: delivery.send_many([message, message]),
        lambda: delivery.notify("order.shipped", {"n": 1}),
    ):
        with pytest.raises(PublishError, match=r"within 1\.5s: it is unreachable"):
            call()


def test_send_send_many_and_notify_are_confirmed_by_rabbitmq(
    rabbit_server: RabbitServer, rabbit_stack: Stack
) -> None:
    from delivery.producer.publisher import get_publisher

    message = {"channel": "hooks", "address": "https://example.com/h", "payload": {"message": "m"}}
    delivery.send("hooks", "https://example.com/h", Payload(message="m"))
    delivery.send_many([message] * 3)
    delivery.notify("order.shipped", {"n": 1})
    # confirm_publish: the producer's connection waits for each basic.ack
    with get_publisher().app.connection_for_write() as connection:
        assert connection.transport_options.get("confirm_publish") is True
    # Once send returns, RabbitMQ has the message: counted at once, no waiting.
    assert am.depth(rabbit_server.url, "delivery") >= 5


BATCHED = Payload(message="in a batch")


def test_coalesced_and_batched_deliveries_on_rabbitmq(
    rabbit_server: RabbitServer, rabbit_stack: Stack
) -> None:
    secret = webhook_secret()
    rabbit_stack.channels.add(
        "hooks", "webhook", {"secret": secret, "timeout": 5}, retry_schedule=(0, 0.3, 0.3)
    )
    with Receiver(secret) as receiver:
        # A slow receiver and two threads: single deliveries pile up behind the busy threads
        # and are coalesced (DELIVERY_COALESCE, on by default); send_many's go in batch tasks.
        receiver.latency = 0.05
        receiver.script("/flaky", Answer(503))
        receiver.script("/bad", Answer(400))
        # At DEBUG the worker logs each prefetch it asks RabbitMQ for (basic.qos).
        worker = rabbit_stack.worker("--concurrency", "2", "--loglevel", "debug")
        singles = [
            delivery.send("hooks", receiver.url(f"/n/{n}"), Payload(message="x")).id
            for n in range(40)
        ]
        flaky = delivery.send("hooks", receiver.url("/flaky"), Payload(message="x")).id
        bad = delivery.send("hooks", receiver.url("/bad"), Payload(message="x")).id
        batched = [
            r.id
            for r in delivery.send_many(
                Message(
                    channel="hooks", address=receiver.url(f"/b/{n}"), payload=Payload(message="y")
                )
                for n in range(60)
            )
        ]
        ids = [*singles, flaky, bad, *batched]
        counts = rabbit_stack.wait_until(ids, {"delivered", "failed"}, timeout=90)
        assert counts == {"delivered": 101, "failed": 1}
        # The worker asked for more unacknowledged than its prefetch (2) while its threads
        # were busy: the coalescer's credit raised the prefetch on RabbitMQ too.
        asked = [int(n) for n in re.findall(r"basic\.qos: prefetch_count->(\d+)", worker.output())]
        assert asked and max(asked) > 2, asked
        time.sleep(0.5)
        paths = Counter(r.path for r in receiver.received)
        assert all(paths[f"/n/{n}"] == 1 for n in range(40)), paths
        assert all(paths[f"/b/{n}"] == 1 for n in range(60)), paths
        assert all(r.verified for r in receiver.received)
    flaky_record, bad_record = rabbit_stack.log.get(flaky), rabbit_stack.log.get(bad)
    assert flaky_record is not None and bad_record is not None
    assert [(a.outcome, a.status_code) for a in flaky_record.attempts] == [
        ("retry", 503),
        ("delivered", 204),
    ]
    assert [(a.outcome, a.status_code) for a in bad_record.attempts] == [("failed", 400)]
    # Every message was acknowledged: nothing ready or unacknowledged remains.
    deadline = time.monotonic() + 10
    while _queue_counts(rabbit_server) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _queue_counts(rabbit_server) == (0, 0)


def _queue_counts(server: RabbitServer) -> tuple[int, int]:
    """(ready, unacknowledged) on the task queue, as RabbitMQ counts them."""
    text = server.ctl_run(
        "list_queues", "name", "messages_ready", "messages_unacknowledged", "--quiet",
        "--no-table-headers",
    )  # fmt: skip
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "delivery":
            return int(fields[1]), int(fields[2])
    return 0, 0


def test_readiness_and_depth_come_from_rabbitmq(rabbit_stack: Stack) -> None:
    from delivery.api.broker import BrokerProbe
    from schemas import get_settings

    probe = BrokerProbe(get_settings())
    probe.check()
    assert probe.depth() == QueueDepth(0, None, 0)  # nothing published: no queue yet
    for n in range(3):
        delivery.send("hooks", f"https://example.com/{n}", Payload(message="m"))
    assert probe.depth() == QueueDepth(3, None, 0)
    rabbit_stack.worker("--concurrency", "1")  # no channel "hooks": each one fails
    deadline = time.monotonic() + 30
    while (depth := probe.depth()) is not None and depth.ready and time.monotonic() < deadline:
        time.sleep(0.1)
    assert probe.depth() == QueueDepth(0, None, 1)
    gone = BrokerProbe(Settings(broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//"))
    with pytest.raises(OSError):
        gone.check()
    with pytest.raises(OSError):
        gone.depth()


def test_a_broker_that_blocks_publishers_is_a_publish_error_in_time(
    rabbit_server: RabbitServer, rabbit_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from delivery.producer import reset_publisher
    from schemas import get_settings

    monkeypatch.setenv("DELIVERY_PUBLISH_TIMEOUT", "2")
    get_settings.cache_clear()
    reset_publisher()
    delivery.send("hooks", "https://example.com/before", Payload(message="m"))
    # Given RabbitMQ out of memory: it blocks publishers and never confirms
    rabbit_server.ctl_run("set_vm_memory_high_watermark", "0")
    try:
        # Then send gives up when the publish timeout is over, and says so. (Not never: a
        # send that hung would end the test at pytest-timeout's limit. No clock is read
        # here: on two shared cores a 2 s wait may take much longer.)
        with pytest.raises(PublishError, match=r"within 2s"):
            delivery.send("hooks", "https://example.com/blocked", Payload(message="m"))
    finally:
        rabbit_server.ctl_run("set_vm_memory_high_watermark", "0.4")
    # And once RabbitMQ has room again, the next send goes through on a new connection
    deadline = time.monotonic() + 30
    while True:
        try:
            delivery.send("hooks", "https://example.com/after", Payload(message="m"))
            break
        except PublishError:
            assert time.monotonic() < deadline
    assert am.depth(rabbit_server.url, "delivery") >= 2


def test_a_set_aside_queue_deleted_under_a_running_worker_is_declared_again(
    rabbit_server: RabbitServer, rabbit_stack: Stack, queue
) -> None:
    sender, _, template = queue
    rabbit_stack.worker("--concurrency", "1")
    markers = []
    for attempt in range(2):
        message, marker = fresh(template)
        markers.append(marker)
        assert sender.publish(am.as_amqp(spoil(message, ("headers", "retries"), -1)))
        deadline = time.monotonic() + 30
        while am.depth(rabbit_server.url) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        held = am.set_aside(rabbit_server.url)
        assert [m for m in markers[attempt:] if not any(m in t for _, t in held)] == []
        if attempt == 0:
            # When someone deletes the queue (the worker declared it once, and remembers)
            sender.channel.queue_delete(SET_ASIDE)
    # Then the second one was not confirmed into nowhere: the queue is back, and holds it
    assert am.depth(rabbit_server.url) == 1


JSON_TYPE = {"content_type": "application/json"}
#: Garbage on Celery's broadcast exchange, and whether it is set aside (what kombu cannot
#: decode: Celery would acknowledge it, on a consumer without acknowledgements).
CONTROL_GARBAGE: list[tuple[bytes, dict[str, Any], bool]] = [
    (b"not json", {"content_type": "application/json", "content_encoding": "utf-8"}, True),
    (b"\x80\x04K\x01.", {"content_type": "application/x-python-serialize"}, True),
    (b"{}", {"content_type": "application/json", "application_headers": {"x": b"\xff"}}, True),
    (b'{"__type__": "datetime", "__value__": "x"}', {"content_type": "application/json"}, True),
    # JSON, but not a command kombu's pidbox can read: Celery would close and reopen its
    # control channel from inside the connection's reader (fatal with py-amqp < 5.4)
    (b"[1, 2]", {"content_type": "application/json", "content_encoding": "utf-8"}, True),
    (b"{}", {"content_type": "application/json", "content_encoding": "utf-8"}, True),
    (b'{"method": 7, "arguments": []}', {"content_type": "application/json"}, True),
    (b'{"method": "ping", "arguments": 5}', {"content_type": "application/json"}, True),
    (b'{"method": "ping", "destination": 5}', {"content_type": "application/json"}, True),
    (b'{"method": "ping", "pattern": "(", "matcher": "pcre"}', JSON_TYPE, True),
    (b'{"method": "ping"}', {**JSON_TYPE, "application_headers": {"clock": "x"}}, True),
    # A command, though not one it knows: Celery logs it and goes on
    (b'{"method": "nope", "arguments": {}}', {"content_type": "application/json"}, False),
]  # fmt: skip


def test_garbage_on_the_remote_control_exchange_never_stops_a_worker(
    rabbit_server: RabbitServer, rabbit_stack: Stack
) -> None:
    secret = webhook_secret()
    rabbit_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    worker = rabbit_stack.worker("--concurrency", "1", "-n", "control@%h")
    sender = am.Sender(rabbit_server.url)
    try:
        # Anyone may publish to Celery's broadcast exchange: every worker reads it.
        for body, options, _ in CONTROL_GARBAGE:
            sender.channel.basic_publish(
                amqp.Message(body, **options), exchange="celery.pidbox", routing_key=""
            )
    finally:
        sender.close()
    with Receiver(secret) as receiver:
        good = delivery.send("hooks", receiver.url("/good"), Payload(message="after")).id
        rabbit_stack.wait_until([good], {"delivered"}, timeout=30)
    kept = sum(1 for *_, aside in CONTROL_GARBAGE if aside)
    deadline = time.monotonic() + 10
    while am.depth(rabbit_server.url) < kept and time.monotonic() < deadline:
        time.sleep(0.1)
    assert am.depth(rabbit_server.url) == kept
    assert worker.process is not None and worker.process.poll() is None, worker.output()[-3000:]
    assert "Unrecoverable error" not in worker.output()
    # And real commands still work (the checks refuse only what the worker cannot read)
    replies = _ping(rabbit_server.url)
    assert any(name.startswith("control@") for reply in replies for name in reply), replies


def _ping(url: str, timeout: float = 30.0) -> list[Any]:
    """Celery's ``ping`` from a client of its own, until some worker answers (a client whose
    connection failed is replaced: what is tested is the worker)."""
    from celery import Celery
    from kombu.exceptions import OperationalError

    deadline = time.monotonic() + timeout
    replies: list[Any] = []
    while not replies and time.monotonic() < deadline:
        client = Celery("control-client", broker=url, set_as_current=False)
        try:
            replies = client.control.ping(timeout=2)
        except (OSError, OperationalError):
            time.sleep(0.5)
        finally:
            client.close()
    return replies


def test_set_aside_goes_on_after_rabbitmq_restarts(
    rabbit_server: RabbitServer, rabbit_stack: Stack, queue
) -> None:
    sender, receiver, template = queue
    worker = rabbit_stack.worker("--concurrency", "2")
    markers = []

    def crafted() -> None:
        message, marker = fresh(template)
        markers.append(marker)
        sent = am.Sender(rabbit_server.url)
        try:
            assert sent.publish(am.as_amqp(spoil(message, ("headers", "timelimit"), 7)))
        finally:
            sent.close()
        deadline = time.monotonic() + 60
        while am.depth(rabbit_server.url) < len(markers) and time.monotonic() < deadline:
            time.sleep(0.2)

    crafted()
    # When RabbitMQ restarts under the worker (the set-aside queue and its messages are
    # durable and persistent)
    sender.close()
    rabbit_server.stop()
    rabbit_server.start()
    good = delivery.send("hooks", receiver.url("/good"), Payload(message="after")).id
    rabbit_stack.wait_until([good], {"delivered"}, timeout=60)
    crafted()
    # Then both are kept, and the worker never stopped
    held = am.set_aside(rabbit_server.url)
    assert [m for m in markers if not any(m in t for _, t in held)] == []
    assert worker.process is not None and worker.process.poll() is None
    assert "Unrecoverable error" not in worker.output()


def test_random_commands_on_the_remote_control_exchange_never_stop_a_worker(
    rabbit_server: RabbitServer, rabbit_stack: Stack
) -> None:
    worker = rabbit_stack.worker("--concurrency", "1", "-n", "fuzzed@%h")
    sender = am.Sender(rabbit_server.url)
    fields = st.sampled_from(
        ["method", "arguments", "destination", "pattern", "matcher", "reply_to", "ticket", "x"]
    )
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=6,
    )

    @settings(deadline=None, max_examples=80, database=None)
    @given(command=st.dictionaries(fields, json_values, max_size=5) | json_values)
    def published(command: Any) -> None:
        message = amqp.Message(json.dumps(command).encode(), content_type="application/json")
        sender.channel.basic_publish(message, exchange="celery.pidbox", routing_key="")

    try:
        published()
    finally:
        sender.close()
    # Then the worker is alive and answers a real command
    replies = _ping(rabbit_server.url)
    assert any(name.startswith("fuzzed@") for reply in replies for name in reply), replies
    assert worker.process is not None and worker.process.poll() is None, worker.output()[-3000:]
    assert "Unrecoverable error" not in worker.output()
