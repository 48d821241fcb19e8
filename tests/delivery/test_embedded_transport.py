"""The embedded broker's transport (``delivery.transport.embedded``) on a SQLite file in
tmp_path, driven through kombu as Celery drives it, with real task messages."""

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Consumer, Producer

from delivery.producer.celery_config import DELIVER_TASK, celery_config
from delivery.transport.embedded import Channel
from delivery.transport.embedded_adopt import adopt_filesystem_queue
from delivery.transport.embedded_store import (
    HEARTBEAT_EXPIRES,
    TRANSIENT_MAX_AGE,
    QueueFile,
    is_task_queue,
)
from schemas import Settings
from schemas.settings import EMBEDDED_BROKER_URL
from tests.support.messages import DELETE, DROPPED, KILLERS, spoil

TRANSPORT = "delivery.transport.embedded:Transport"
QUEUE = "delivery"


def connect(path: Path) -> Connection:
    return Connection(
        EMBEDDED_BROKER_URL, transport=TRANSPORT, transport_options={"database": str(path)}
    )


def task_queue() -> Queue:
    return Queue(QUEUE, Exchange(QUEUE, "direct"), QUEUE)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "broker.sqlite3"


@pytest.fixture
def connection(path: Path) -> Iterator[Connection]:
    with connect(path) as conn:
        yield conn


@pytest.fixture
def publish(tmp_path: Path, path: Path) -> Iterator[Any]:
    """Publish ``delivery.deliver`` task messages as the producer does (Celery's send_task
    on our config); returns the task ids."""
    config = celery_config(Settings(home=tmp_path, broker_url=EMBEDDED_BROKER_URL))
    config["broker_transport_options"]["database"] = str(path)
    app = Celery("producer", set_as_current=False)
    app.conf.update(config)

    def send(count: int = 1) -> list[str]:
        return [
            app.send_task(DELIVER_TASK, args=[{"id": f"d{i}"}], queue=QUEUE).id
            for i in range(count)
        ]

    yield send
    app.close()


def rows(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT id, queue, owner FROM message ORDER BY id").fetchall()


def consume(connection: Connection, *, ack: bool = True, prefetch: int = 100) -> list[Any]:
    """Every message waiting on the task queue, as a Celery worker would take them."""
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(message)
        if ack:
            message.ack()

    channel = connection.channel()
    with (
        Consumer(
            channel,
            [task_queue()],
            callbacks=[on_message],
            accept=["json"],
            prefetch_count=prefetch,
        ),
        contextlib.suppress(socket.timeout),
    ):
        while True:
            connection.drain_events(timeout=0.5)
    return got


def test_published_messages_are_taken_in_order_and_acknowledged_away(
    publish: Any, connection: Connection, path: Path
) -> None:
    ids = publish(5)
    got = consume(connection)
    assert [m.headers["id"] for m in got] == ids
    assert rows(path) == []


def test_a_taken_message_is_owned_not_removed_until_acknowledged(
    publish: Any, connection: Connection, path: Path
) -> None:
    publish(2)
    got = consume(connection, ack=False)
    owners = {owner for _, _, owner in rows(path)}
    assert len(got) == 2 and len(owners) == 1 and None not in owners
    got[0].ack()
    assert len(rows(path)) == 1


def test_reject_with_requeue_puts_the_same_row_back_and_without_removes_it(
    publish: Any, connection: Connection, path: Path
) -> None:
    publish(2)
    first, second = consume(connection, ack=False)
    before = rows(path)
    first.reject(requeue=True)
    second.reject(requeue=False)
    assert rows(path) == [(before[0][0], QUEUE, None)]  # the same id: no copy


def test_restore_on_close_puts_back_without_a_copy(publish: Any, path: Path) -> None:
    publish(3)
    with connect(path) as conn:
        got = consume(conn, ack=False)
        assert len(got) == 3
    # Closed with three unacknowledged: kombu restores them, here by clearing the owner
    assert [(queue, owner) for _, queue, owner in rows(path)] == [(QUEUE, None)] * 3
    with connect(path) as conn:
        assert len(consume(conn)) == 3
    assert rows(path) == []


def test_an_acknowledgement_after_the_close_still_removes_the_row(publish: Any, path: Path) -> None:
    # A task that ends during a warm shutdown is acknowledged after the channel closed
    publish(1)
    with connect(path) as conn:
        (message,) = consume(conn, ack=False)
    message.ack()
    assert rows(path) == []


def test_acknowledgements_of_one_turn_go_together_and_before_a_close_restores(
    publish: Any, path: Path
) -> None:
    publish(3)
    with connect(path) as conn:
        got: list[Any] = []
        consumer = Consumer(
            conn.channel(), [task_queue()], callbacks=[lambda _, m: got.append(m)], accept=["json"]
        )
        consumer.consume()
        conn.drain_events(timeout=5)  # all three, in one take
        got[0].ack()
        got[1].ack()
        assert len(rows(path)) == 3  # removed with the next turn of the loop
        with contextlib.suppress(socket.timeout):
            conn.drain_events(timeout=0.2)
        assert len(rows(path)) == 1
        # When the last is acknowledged and the connection closes before another turn
        got[2].ack()
    # Then it is removed, not put back for another consumer
    assert rows(path) == []


def test_an_empty_queue_is_empty(connection: Connection) -> None:
    channel = connection.channel()
    assert channel.basic_get(QUEUE) is None


TAKE_AND_HOLD = """
import sys, time
from kombu import Connection
conn = Connection("embedded://", transport="delivery.transport.embedded:Transport",
                  transport_options={"database": sys.argv[1]})
channel = conn.channel()
held = [channel.basic_get("delivery") for _ in range(3)]
assert all(held), held
print("held", flush=True)
time.sleep(600)
"""


def test_a_consumer_whose_heartbeat_expired_has_its_messages_taken_by_another(
    publish: Any, path: Path
) -> None:
    publish(3)
    # Given a consumer in another process that took every message, and was SIGKILLed
    child = subprocess.Popen(
        [sys.executable, "-c", TAKE_AND_HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
    finally:
        child.kill()
        child.wait()
    assert all(owner for _, _, owner in rows(path))
    with connect(path) as conn:
        # Nothing to take while its heartbeat lasts
        assert conn.channel().basic_get(QUEUE) is None
        # When a housekeeping finds its heartbeat expired
        done = QueueFile.open(path).housekeep(time.time() + HEARTBEAT_EXPIRES + 1, force=True)
        assert done.released == 3
        # Then another consumer takes them
        assert len(consume(conn)) == 3
    assert rows(path) == []


CONSUME_UNTIL_IDLE = """
import json, socket, sys, time
from kombu import Connection, Consumer, Exchange, Queue
conn = Connection("embedded://", transport="delivery.transport.embedded:Transport",
                  transport_options={"database": sys.argv[1]})
seen = []
def on_message(body, message):
    seen.append(message.headers["id"])
    message.ack()
queue = Queue("delivery", Exchange("delivery", "direct"), "delivery")
with conn, Consumer(conn.channel(), [queue], callbacks=[on_message], accept=["json"],
                    prefetch_count=4):
    print("ready", flush=True)
    idle_since = None
    while True:
        try:
            conn.drain_events(timeout=0.2)
            idle_since = None
        except socket.timeout:
            if seen:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 3:
                    break
print(json.dumps(seen), flush=True)
"""


def test_two_processes_consuming_one_queue_get_every_message_exactly_once(
    publish: Any, path: Path
) -> None:
    QueueFile.open(path)  # the file exists before either starts
    consumers = [
        subprocess.Popen(
            [sys.executable, "-c", CONSUME_UNTIL_IDLE, str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for process in consumers:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        ids = publish(300)
        outputs = [process.communicate(timeout=60)[0] for process in consumers]
    finally:
        for process in consumers:
            process.kill()
            process.wait()
    seen = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
    assert sorted(seen[0] + seen[1]) == sorted(ids)  # each once, none lost
    assert rows(path) == []


# -- garbage ------------------------------------------------------------------------------


@pytest.fixture
def template(publish: Any, path: Path) -> dict[str, Any]:
    """A real task message, as it lies in the queue table."""
    publish(1)
    with contextlib.closing(sqlite3.connect(path)) as db:
        ((payload,),) = db.execute("DELETE FROM message RETURNING payload").fetchall()
        db.commit()
    return dict(json.loads(payload))


def insert(path: Path, *payloads: Any, queue: str = QUEUE) -> None:
    QueueFile.open(path)  # the file and its tables
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executemany(
            "INSERT INTO message (queue, payload) VALUES (?, ?)", [(queue, p) for p in payloads]
        )
        db.commit()


def set_aside(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT queue, reason, item FROM set_aside ORDER BY id").fetchall()


GARBAGE: list[Any] = [
    None,
    "",
    "garbage",
    b"\x00\xff",
    42,
    1.5,
    '{"properties": {}',
    '{"a": "\x00"}',
    "[" * 50_000,
    json.dumps({"body": "", "properties": {"delivery_tag": "x", "delivery_info": {}}}),
]


def test_garbage_of_every_kind_is_set_aside_and_the_next_message_delivered(
    connection: Connection, path: Path, template: dict[str, Any], caplog: Any
) -> None:
    insert(path, *GARBAGE, json.dumps(template))
    got = consume(connection)
    assert [m.headers["id"] for m in got] == [template["headers"]["id"]]
    kept = set_aside(path)
    assert [item for _, _, item in kept] == GARBAGE
    assert all(queue == QUEUE and reason for queue, reason, _ in kept)
    assert rows(path) == []
    assert sum("set aside an item on queue 'delivery'" in r.getMessage() for r in caplog.records)


def test_an_enormous_row_is_set_aside_without_being_read(
    connection: Connection, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("delivery.transport.embedded_store.MAX_PAYLOAD", 1000)
    insert(path, "x" * 5000)
    assert consume(connection) == []
    ((_, reason, item),) = set_aside(path)
    assert "larger than" in reason and item == "x" * 5000


@pytest.mark.parametrize(("name", "path_", "value"), KILLERS + DROPPED)
def test_each_shape_that_stopped_a_worker_on_redis_is_set_aside_here(
    connection: Connection,
    path: Path,
    template: dict[str, Any],
    name: str,
    path_: tuple[Any, ...],
    value: Any,
) -> None:
    spoiled = spoil(json.loads(json.dumps(template)), path_, value)
    insert(path, json.dumps(spoiled))
    got = consume(connection)
    # Refused by the transport, or (a well-formed message Celery cannot run) delivered to
    # Celery, which sets it aside itself (workers.tasks); never an exception here
    assert len(got) + len(set_aside(path)) == 1, name
    assert rows(path) == []


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def _paths(message: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(message, dict):
        for key, value in message.items():
            found += _paths(value, (*prefix, key))
    return found


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_real_message_mutated_anywhere_never_raises_and_is_delivered_or_set_aside(
    path: Path, template: dict[str, Any], data: st.DataObject
) -> None:
    message = json.loads(json.dumps(template))
    field = data.draw(st.sampled_from(_paths(message)), label="field")
    value = data.draw(_JSON | st.just(DELETE), label="value")
    spoiled = spoil(message, field, value)
    with connect(path) as conn:
        channel = conn.channel()
        before = len(set_aside(path))
        insert(path, json.dumps(spoiled))
        taken = channel._take(QUEUE, 10, no_ack=False)
        for raw in taken:
            # What passes is a message kombu can hold, acknowledge and restore
            channel.Message(raw, channel=channel).ack()
        assert len(taken) + len(set_aside(path)) - before == 1
    assert rows(path) == []


def test_set_aside_is_public_on_the_channel(connection: Connection, path: Path) -> None:
    channel: Channel = connection.channel()
    channel.set_aside('{"task": "delivery.nope"}', "refused by Celery")
    assert set_aside(path) == [(None, "refused by Celery", '{"task": "delivery.nope"}')]


# -- exchanges across processes -----------------------------------------------------------


def test_fanout_and_topic_bindings_reach_queues_bound_by_another_connection(path: Path) -> None:
    fanout, topic = Exchange("bcast.pidbox", "fanout"), Exchange("celeryev", "topic")
    with connect(path) as listener, connect(path) as sender:
        channel = listener.channel()
        for queue in (
            Queue("w1.celery.pidbox", fanout),
            Queue("celeryev.flower", topic, "task.#"),
        ):
            queue(channel).declare()
        out = sender.channel()
        Producer(out).publish({"ping": 1}, exchange=fanout, declare=[fanout])
        Producer(out).publish({"e": 1}, exchange=topic, routing_key="task.sent", declare=[topic])
        Producer(out).publish({"e": 2}, exchange=topic, routing_key="worker.heartbeat")
        assert channel._size("w1.celery.pidbox") == 1
        assert channel._size("celeryev.flower") == 1
        message = channel.basic_get("celeryev.flower", no_ack=True)
        assert message.payload == {"e": 1}
        assert channel._size("celeryev.flower") == 0  # no acknowledgement: gone when taken
    # The listener closed: its transient queues and their bindings went with it
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM binding").fetchone() == (0,)
    assert rows(path) == []


def test_housekeeping_drops_what_nobody_will_read(path: Path) -> None:
    queue_file = QueueFile.open(path)
    queue_file.bind("celeryev", "#", "^.*?$", "celeryev.gone", owner="dead-flower")
    queue_file.bind(QUEUE, QUEUE, "", QUEUE, owner=None)
    queue_file.put("celeryev.gone", "{}")
    queue_file.put("w1.celery.pidbox", "{}")
    queue_file.put(QUEUE, "{}")
    done = queue_file.housekeep(time.time() + TRANSIENT_MAX_AGE + 1, force=True)
    # The dead consumer's binding, and every old transient message; never a task
    assert (done.bindings_dropped, done.messages_dropped) == (1, 2)
    assert [queue for _, queue, _ in rows(path)] == [QUEUE]
    assert queue_file.bindings(QUEUE) == [(QUEUE, "", QUEUE)]


def test_housekeeping_is_throttled_across_processes(path: Path) -> None:
    queue_file = QueueFile.open(path)
    now = time.time()
    queue_file.housekeep(now, force=True)
    queue_file.put(QUEUE, "{}")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE message SET owner = 'nobody'")
        db.commit()
    assert queue_file.housekeep(now + 0.5).released == 0  # too soon: skipped
    assert queue_file.housekeep(now + 60).released == 1


@pytest.mark.parametrize(
    ("queue", "task"),
    [
        ("delivery", True),
        ("celery", True),
        ("w1@host.celery.pidbox", False),
        ("0f1e.reply.celery.pidbox", False),
        ("celeryev.2c3d", False),
    ],
)
def test_which_queues_hold_tasks(queue: str, task: bool) -> None:
    assert is_task_queue(queue) is task


def test_the_old_filesystem_queue_is_adopted_once(tmp_path: Path, path: Path) -> None:
    folder = tmp_path / "broker"
    (folder / "queue").mkdir(parents=True)
    (folder / "processed").mkdir()
    (folder / "queue" / "1_a.delivery.msg").write_text('{"first": 1}')
    (folder / "queue" / "2_b.delivery.msg").write_text("")  # half written
    (folder / "queue" / "3_c.w1.celery.pidbox.msg").write_text("{}")  # stale broadcast
    (folder / "processed" / "0_z.delivery.msg").write_text("{}")
    queue_file = QueueFile.open(path)
    assert adopt_filesystem_queue(folder, queue_file) == 2
    assert adopt_filesystem_queue(folder, queue_file) == 0
    assert [queue for _, queue, _ in rows(path)] == [QUEUE, QUEUE]
    assert not list(folder.rglob("*.msg"))


def test_the_api_reads_ready_and_unacknowledged_counts_from_the_file(
    tmp_path: Path, publish: Any, path: Path
) -> None:
    from delivery.api.broker import BrokerProbe, QueueDepth

    probe = BrokerProbe(Settings(home=tmp_path, broker_url=EMBEDDED_BROKER_URL))
    assert probe.settings.broker_file == path  # where the publish fixture's producer wrote
    publish(3)
    with connect(path) as conn:
        assert conn.channel().basic_get(QUEUE) is not None  # taken, not acknowledged
        probe.check()
        assert probe.depth() == QueueDepth(ready=2, unacked=1)


@pytest.mark.parametrize("stopping", [False, True])
def test_a_wait_for_messages_lasts_as_asked_unless_the_worker_is_stopping(
    connection: Connection, monkeypatch: pytest.MonkeyPatch, stopping: bool
) -> None:
    # Celery's loop for this transport asks for 2 s and reads its shutdown flag only
    # between waits: a worker told to stop went on for seconds. Anyone else (a remote
    # control command collecting replies) must wait as long as it asked. A clock of our
    # own, moved on by each poll's sleep, so that no real time is measured.
    from celery.worker import state
    from kombu.transport.virtual import base

    from delivery.transport import embedded
    from delivery.transport.embedded import LONGEST_WAIT, POLLING_INTERVAL

    now = [0.0]
    monkeypatch.setattr(base, "monotonic", lambda: now[0])
    monkeypatch.setattr(embedded, "monotonic", lambda: now[0])
    monkeypatch.setattr(base, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    # Celery sets the exit code, and a clean exit is 0.
    monkeypatch.setattr(state, "should_stop", 0 if stopping else None)
    channel = connection.channel()
    with (
        Consumer(channel, [task_queue()], callbacks=[lambda *_: None], accept=["json"]),
        pytest.raises(socket.timeout),
    ):
        connection.drain_events(timeout=2.0)
    if stopping:
        assert LONGEST_WAIT <= now[0] < LONGEST_WAIT + 2 * POLLING_INTERVAL
    else:
        assert 2.0 <= now[0] < 2.0 + 2 * POLLING_INTERVAL
