"""What Flower shows agrees with the log: task events from a real worker, captured the way
Flower captures them (an event receiver on the broker)."""

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import delivery
from delivery.producer import reset_publisher
from delivery.producer.publisher import get_publisher
from schemas import Message, Payload, get_settings
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Answer, Received, Receiver

pytestmark = pytest.mark.integration

SECRET_TEXT = "the launch code is 0000"


class Events:
    """Every task event on the broker, by task id, from a receiver in a thread."""

    def __init__(self) -> None:
        self.app = get_publisher().app
        self.seen: list[dict[str, Any]] = []
        #: Events per broker message (a worker publishes task events in batches).
        self.sizes: list[int] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            sizes = self.sizes

            class Counting(self.app.events.Receiver):  # type: ignore[name-defined,misc]
                def _receive(self, body: Any, message: Any, **kwargs: Any) -> None:
                    sizes.append(len(body) if isinstance(body, list) else 1)
                    super()._receive(body, message, **kwargs)

            self._receiver = Counting(connection, handlers={"*": self.seen.append})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> "Events":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)

    def wait(self, kind: str, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.seen):
                if event.get("type") == kind and (not task_id or event.get("uuid") == task_id):
                    return event
            time.sleep(0.05)
        kinds = sorted({str(e.get("type")) for e in self.seen})
        raise AssertionError(f"no {kind} event for {task_id!r}; saw {kinds}")


@pytest.fixture
def events(redis_stack: Stack) -> Iterator[Events]:
    with Events() as captured:
        yield captured


def _answer(received: Received) -> Answer:
    return {"/fails": Answer(400), "/later": Answer(503)}.get(received.path, Answer(204))


def test_flower_sees_failures_retries_and_no_message_text(
    redis_stack: Stack, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = webhook_secret()
    redis_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    # A second attempt an hour away: scheduled from the log, not the broker
    redis_stack.channels.add(
        "patient", "webhook", {"secret": secret, "timeout": 5}, retry_schedule=(0, 3600)
    )
    with Receiver(secret) as receiver:
        receiver.responder = _answer
        redis_stack.worker("--concurrency", "2")
        events.wait("worker-heartbeat", "")  # the receiver is listening
        fails = delivery.send("hooks", receiver.url("/fails"), Payload(message=SECRET_TEXT)).id
        later = delivery.send("patient", receiver.url("/later"), Payload(message="x")).id
        good = delivery.send("hooks", receiver.url("/good"), Payload(message=SECRET_TEXT)).id
        failed = events.wait("task-failed", fails)
        retried = events.wait("task-retried", later)
        events.wait("task-succeeded", good)
        # A batch with one failure among its deliveries says so
        monkeypatch.setenv("DELIVERY_WORKER_CONCURRENCY", "1")  # one batch for both
        get_settings.cache_clear()
        reset_publisher()
        batch = [
            Message(channel="hooks", address=receiver.url(p), payload=Payload(message="b"))
            for p in ("/good", "/fails")
        ]
        ids = [r.id for r in delivery.send_many(batch)]
        batch_failed = events.wait("task-failed", _batch_id(events))
    # Then the failure carries its reason, as the log records it
    assert "400" in failed["exception"]
    record = redis_stack.log.get(fails)
    assert record is not None and record.status == "failed"
    assert "503" in retried["exception"] and "from the log" in retried["exception"]
    assert "1 delivered" in batch_failed["exception"] and ids[1] in batch_failed["exception"]
    # And arguments show the channel, the id and a masked address, not the text
    shown = _received(events, good)["args"]
    assert good in shown and "hooks" in shown and "http://127.0.0.1/***" in shown
    every_event = repr(events.seen)
    assert SECRET_TEXT not in every_event and "/fails" not in every_event


def _batch_id(events: Events, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in list(events.seen):
            if (
                event.get("type") == "task-received"
                and event.get("name") == "delivery.deliver_batch"
            ):
                return str(event["uuid"])
        time.sleep(0.05)
    raise AssertionError("no batch task was received")


def _received(events: Events, task_id: str) -> dict[str, Any]:
    return events.wait("task-received", task_id)


def test_task_events_are_published_in_batches_and_none_is_lost(
    redis_stack: Stack, events: Events
) -> None:
    redis_stack.channels.add("hooks", "webhook", {"secret": webhook_secret(), "timeout": 5})
    with Receiver(webhook_secret()) as receiver:
        worker = redis_stack.worker("--concurrency", "4")
        events.wait("worker-heartbeat", "")
        ids = [
            delivery.send("hooks", receiver.url(f"/n/{n}"), Payload(message="x")).id
            for n in range(40)
        ]
        for task_id in ids:
            events.wait("task-succeeded", task_id)
        # Every task's whole story reaches the monitor, the worker's part in order (the
        # producer's task-sent travels apart, and may come after a fast worker's).
        for task_id in ids:
            kinds = [e["type"] for e in list(events.seen) if e.get("uuid") == task_id]
            assert kinds.count("task-sent") == 1, kinds
            worker_part = [k for k in kinds if k != "task-sent"]
            assert worker_part == ["task-received", "task-started", "task-succeeded"]
        # The worker's three per task came in fewer broker messages than one per event
        # (the producer's task-sent and the worker's heartbeats come one by one). Not a
        # tighter bound: how many share a message depends on how fast the sends came.
        alone = [e for e in events.seen if e["type"] == "task-sent" or "worker-" in e["type"]]
        assert len(events.sizes) - len(alone) < 3 * len(ids), events.sizes
        # A worker that stops publishes what it still holds: the last task's events too.
        last = delivery.send("hooks", receiver.url("/last"), Payload(message="x")).id
        redis_stack.wait_until([last], {"delivered"})
        worker.stop()
    events.wait("task-succeeded", last)
