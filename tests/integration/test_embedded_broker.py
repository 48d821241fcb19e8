"""The embedded default broker under real worker processes: a worker SIGKILLed with messages
reserved loses none of them, garbage on the queue never stops a worker, and Celery's remote
control reaches a worker from another process."""

import contextlib
import sqlite3
import threading
import time
from typing import Any

import pytest
from celery import Celery

import delivery
from delivery.engine.service import RECORD_EVERY
from delivery.producer.celery_config import celery_config
from schemas import Payload, get_settings
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration

THREADS = 4


def _broker(stack: Stack) -> sqlite3.Connection:
    """The broker file, as a person with ``sqlite3`` would open it."""
    return sqlite3.connect(stack.tmp_path / ".delivery" / "broker.sqlite3", timeout=30)


def _query(stack: Stack, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(_broker(stack)) as broker:
        return broker.execute(sql, params).fetchall()


def test_a_killed_worker_loses_none_of_the_messages_it_had_reserved(
    embedded_stack: Stack,
) -> None:
    secret = webhook_secret()
    embedded_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    with Receiver(secret) as receiver:
        receiver.latency = 0.3  # the worker holds reserved messages while its threads wait
        doomed = embedded_stack.worker("--concurrency", str(THREADS))
        ids = [
            delivery.send(
                "hooks", receiver.url("/hook"), Payload(message=f"m{i}"), idempotency_key=f"k{i}"
            ).id
            for i in range(200)
        ]
        receiver.wait_for(2 * THREADS)
        # When the worker dies with no goodbye
        doomed.kill()
        killed_at = time.monotonic()
        dead = _query(embedded_stack, "SELECT DISTINCT owner FROM message WHERE owner NOTNULL")
        ((reserved,),) = _query(embedded_stack, "SELECT count(*) FROM message WHERE owner NOTNULL")
        assert reserved > THREADS, "the worker held no more than it was sending"
        # Then another worker delivers every one: the free messages at once, the dead one's
        # once its heartbeat has expired, and what it had claimed in the log by the sweep
        embedded_stack.worker("--concurrency", "8")
        held = f"SELECT count(*) FROM message WHERE owner IN ({','.join('?' * len(dead))})"
        while _query(embedded_stack, held, *(owner for (owner,) in dead)) != [(0,)]:
            assert time.monotonic() - killed_at < 60, "the dead worker's messages stay held"
            time.sleep(0.2)
        released_in = time.monotonic() - killed_at
        embedded_stack.wait_until(ids, {"delivered"}, timeout=90)
        receiver.wait_for(len(ids))
    seen = receiver.count_by_id()
    assert set(seen) == set(ids)
    # Duplicates only of sends the dead worker made and had not yet recorded (at most
    # RECORD_EVERY per thread), never of a message the broker handed out twice
    duplicates = {i: n - 1 for i, n in seen.items() if n > 1}
    print(
        f"reserved {reserved} when killed, released in {released_in:.1f} s,"
        f" duplicates {sum(duplicates.values())}"
    )
    assert sum(duplicates.values()) <= THREADS * RECORD_EVERY, duplicates
    # And the broker is left holding nothing: the copies the sweep re-enqueued for the dead
    # worker's claimed deliveries may still be on their way through the live worker, which
    # finds them final and acknowledges them
    left = "SELECT count(*) FROM message WHERE queue = 'delivery'"
    deadline = time.monotonic() + 60
    while (remaining := _query(embedded_stack, left)) != [(0,)]:
        assert time.monotonic() < deadline, f"the broker still holds {remaining[0][0]} messages"
        time.sleep(0.2)


GARBAGE: list[object] = [
    "garbage",
    "",
    None,
    42,
    3.5,
    b"\x00\xff\xfe",
    '{"body": "',  # half written
    '{"properties": 1}',
    '{"body": "x\x00y", "properties": {}}',
    "[" * 100_000,
]


def test_garbage_rows_do_not_stop_a_running_worker(embedded_stack: Stack) -> None:
    secret = webhook_secret()
    embedded_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    with Receiver(secret) as receiver:
        worker = embedded_stack.worker("--concurrency", "2")
        first = delivery.send("hooks", receiver.url("/hook"), Payload(message="before"))
        embedded_stack.wait_until([first.id], {"delivered"})
        # When rows of every kind are written straight into the queue table
        with contextlib.closing(_broker(embedded_stack)) as broker:
            broker.executemany(
                "INSERT INTO message (queue, payload) VALUES ('delivery', ?)",
                [(item,) for item in GARBAGE],
            )
            broker.commit()
        # Then the deliveries after them are delivered, by the same worker
        later = [
            delivery.send("hooks", receiver.url("/hook"), Payload(message=f"after {i}")).id
            for i in range(5)
        ]
        embedded_stack.wait_until(later, {"delivered"})
    assert worker.process is not None and worker.process.poll() is None
    # And each row was set aside, whole, with its reason
    kept = _query(embedded_stack, "SELECT item, reason FROM set_aside ORDER BY id")
    assert [item for item, _ in kept] == GARBAGE
    assert all(reason for _, reason in kept)
    assert "set aside an item on queue 'delivery'" in worker.output()


def test_remote_control_reaches_a_worker_from_another_process(embedded_stack: Stack) -> None:
    worker = embedded_stack.worker("--concurrency", "1", "--hostname", "embedded@test")
    app = Celery("control", set_as_current=False)
    app.conf.update(celery_config(get_settings()))
    try:
        # When another process asks every worker (a broadcast, and replies to it)
        deadline = time.monotonic() + 30
        replies: list[dict[str, object]] = []
        while not replies and time.monotonic() < deadline:
            replies = app.control.ping(timeout=2)
        # Then the worker answers
        assert [next(iter(reply)) for reply in replies] == ["embedded@test"], worker.output()
        queues = app.control.inspect(timeout=2).active_queues() or {}
        assert [q["name"] for q in queues["embedded@test"]] == ["delivery"]
    finally:
        app.close()
    # And the caller's reply queues went with it
    assert _query(embedded_stack, "SELECT count(*) FROM binding WHERE queue LIKE '%.reply.%'") == [
        (0,)
    ]


def test_a_worker_stopped_mid_run_hands_back_what_it_reserved_without_copies(
    embedded_stack: Stack,
) -> None:
    secret = webhook_secret()
    embedded_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    with Receiver(secret) as receiver:
        receiver.latency = 0.5
        first = embedded_stack.worker("--concurrency", str(THREADS))
        ids = [
            delivery.send("hooks", receiver.url("/hook"), Payload(message=f"m{i}")).id
            for i in range(60)
        ]
        receiver.wait_for(THREADS)
        # When the worker is stopped (a warm shutdown: what runs finishes)
        first.stop()
        # Then nothing it held stays held, and no message was copied
        left = _query(embedded_stack, "SELECT owner FROM message WHERE queue = 'delivery'")
        assert left and all(owner is None for (owner,) in left)
        assert len(left) + len(receiver.count_by_id()) <= len(ids)
        embedded_stack.worker("--concurrency", "8")
        embedded_stack.wait_until(ids, {"delivered"})
        receiver.wait_for(len(ids))
    assert sorted(receiver.count_by_id().values()) == [1] * len(ids)


def test_task_events_reach_a_receiver_in_another_process_as_flower_gets_them(
    embedded_stack: Stack,
) -> None:
    secret = webhook_secret()
    embedded_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    app = Celery("flower-like", set_as_current=False)
    app.conf.update(celery_config(get_settings()))
    events: list[dict[str, Any]] = []
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": events.append})
        listening = threading.Thread(
            target=receiver.capture, kwargs={"limit": None, "wakeup": False}, daemon=True
        )
        listening.start()
        try:
            deadline = time.monotonic() + 30
            while not _query(embedded_stack, "SELECT 1 FROM binding WHERE exchange = 'celeryev'"):
                assert time.monotonic() < deadline, "the receiver never bound its queue"
                time.sleep(0.1)
            embedded_stack.worker("--concurrency", "2")
            with Receiver(secret) as hooks:
                # When a worker runs a task
                sent = delivery.send("hooks", hooks.url("/hook"), Payload(message="watched"))
                embedded_stack.wait_until([sent.id], {"delivered"})
            # Then its events arrive here: received, started and succeeded
            seen: set[str] = set()
            while not {"task-received", "task-succeeded"} <= seen:
                assert time.monotonic() < deadline + 30, sorted(seen)
                time.sleep(0.1)
                seen = {e["type"] for e in list(events) if e.get("uuid") == sent.id}
        finally:
            receiver.should_stop = True
            listening.join(timeout=10)
    app.close()
    # And once the receiver has gone, nothing is routed to its queue any more
    assert _query(embedded_stack, "SELECT count(*) FROM binding WHERE exchange = 'celeryev'") == [
        (0,)
    ]
