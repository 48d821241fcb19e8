"""Doing the damage for real on Redis: killed pool children, a provider that is down for a
while, a crowd of producers, and hostile input. Every test is bounded in time. (What every
broker must survive — SIGKILL, a broker restart, a log outage, garbage — is
``test_faults``.)"""

import json
import os
import signal
import threading
import time

import pytest
import redis

import delivery
from delivery.producer.publisher import get_publisher
from schemas import MAX_PAYLOAD_BYTES, Message, Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Answer, Received, Receiver
from tests.support.servers import RedisServer, child_pids

pytestmark = pytest.mark.integration


def _channel(stack: Stack, name: str = "hooks", **options: object) -> str:
    secret = webhook_secret()
    stack.channels.add(name, "webhook", {"secret": secret, "timeout": 5}, **options)  # type: ignore[arg-type]
    return secret


def _send(receiver: Receiver, count: int, *, path: str = "/hook", prefix: str = "m") -> list[str]:
    return [
        r.id
        for r in delivery.send_many(
            Message(
                channel="hooks",
                address=receiver.url(path),
                payload=Payload(message=f"{prefix}{i}"),
                idempotency_key=f"{prefix}-{i}",
            )
            for i in range(count)
        )
    ]


def _assert_duplicates_explained(stack: Stack, receiver: Receiver, ids: list[str]) -> None:
    """Every request the receiver saw is an attempt in the log (interrupted ones included)."""
    seen = receiver.count_by_id()
    for delivery_id in ids:
        record = stack.log.get(delivery_id)
        assert record is not None and record.status == "delivered", delivery_id
        assert seen.get(delivery_id, 0) >= 1
        assert seen[delivery_id] <= len(record.attempts), (delivery_id, record.attempts)


def test_killed_workers_lose_nothing(redis_stack: Stack) -> None:
    secret = _channel(redis_stack)
    with Receiver(secret) as receiver:
        receiver.latency = 0.02  # keep deliveries in flight when the kill comes
        first = redis_stack.worker("--pool", "prefork", "--concurrency", "4")
        ids = _send(receiver, 300)
        receiver.wait_for(30)
        # SIGKILL one pool child mid-send: task_reject_on_worker_lost puts its message back
        assert first.process is not None
        os.kill(child_pids(first.process.pid)[0], signal.SIGKILL)
        receiver.wait_for(120)
        # then the whole worker, main process and children
        first.kill()
        redis_stack.worker("--concurrency", "8")
        redis_stack.wait_until(ids, {"delivered"}, timeout=90)
    _assert_duplicates_explained(redis_stack, receiver, ids)


def test_breaker_opens_while_the_provider_is_down_and_closes_after(redis_stack: Stack) -> None:
    # A short schedule: without the breaker these would fail within a second or two
    secret = _channel(redis_stack, retry_schedule=(0, 0.2, 0.2))
    # Down until the breaker is seen open, however long the worker took to start.
    recovered = threading.Event()

    def down_for_a_while(_: Received) -> Answer:
        return Answer(204) if recovered.is_set() else Answer(503)

    with Receiver(secret) as receiver:
        receiver.responder = down_for_a_while
        redis_stack.worker(
            "--concurrency",
            "4",
            DELIVERY_BREAKER_THRESHOLD="3",
            DELIVERY_BREAKER_PROBE_INTERVAL="1",
        )
        ids = _send(receiver, 30)
        opened = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not opened:
            opened = redis_stack.channels.summaries()[0]["state"] == "breaker open"
            time.sleep(0.05)
        assert opened
        time.sleep(1)  # a probe or two finds it still down
        recovered.set()
        counts = redis_stack.wait_until(ids, {"delivered", "failed"}, timeout=60)
    assert counts == {"delivered": 30}  # nothing failed that should have waited
    assert redis_stack.channels.summaries()[0]["state"] == "active"
    # Waiting did not spend attempts: without the breaker the outage would have taken all
    # three attempts of each delivery (90 failed requests) and failed them.
    refused = len(receiver.received) - 30  # every request but the 30 successes
    assert refused < 60


def test_many_producers_one_key_one_delivery(redis_stack: Stack) -> None:
    secret = _channel(redis_stack)
    redis_stack.worker("--concurrency", "8")
    with Receiver(secret) as receiver:
        receipts: list[str] = []
        lock = threading.Lock()

        def produce() -> None:
            for _ in range(10):
                receipt = delivery.send(
                    "hooks",
                    receiver.url("/once"),
                    Payload(message="paid"),
                    idempotency_key="order-7",
                )
                with lock:
                    receipts.append(receipt.id)

        threads = [threading.Thread(target=produce) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(receipts) == 160 and len(set(receipts)) == 1
        redis_stack.wait_until(receipts[:1], {"delivered"})
        marker = _send(receiver, 1, path="/after")  # everything queued before it has run
        redis_stack.wait_until(marker, {"delivered"})
        time.sleep(0.5)
    assert len(receiver.requests_to("/once")) == 1
    record = redis_stack.log.get(receipts[0])
    assert record is not None and len(record.attempts) == 1


def test_hostile_input_is_recorded_and_the_worker_keeps_serving(
    redis_server: RedisServer, redis_stack: Stack
) -> None:
    secret = _channel(redis_stack)
    _channel(redis_stack, "doomed")
    with Receiver(secret) as receiver:
        # Queued before any worker runs: a channel deleted while its delivery waits,
        doomed = delivery.send("doomed", receiver.url("/doomed"), Payload(message="x")).id
        redis_stack.channels.remove("doomed")
        # raw garbage on the queue, a message missing a field, and several MB of payload
        client = redis.Redis.from_url(redis_server.url)
        client.lpush("delivery", b"\x00\xffnot json at all")
        client.lpush("delivery", json.dumps({"body": "nope", "headers": {}}).encode())
        app = get_publisher().app
        app.send_task(
            "delivery.deliver",
            args=[{"id": "no-address", "channel": "hooks", "payload": {"message": "m"}}],
        )
        huge = {
            "id": "huge",
            "channel": "hooks",
            "address": receiver.url("/huge"),
            "payload": {"message": "x" * (4 * MAX_PAYLOAD_BYTES)},
        }
        app.send_task("delivery.deliver", args=[huge])
        redis_stack.worker()
        good = _send(receiver, 20, prefix="good")
        redis_stack.wait_until(good, {"delivered"})
        redis_stack.wait_until([doomed, "no-address", "huge"], {"failed"})
    reasons = {i: (redis_stack.log.get(i).last_error or "") for i in (doomed, "no-address", "huge")}  # type: ignore[union-attr]
    assert "no channel named 'doomed'" in reasons[doomed]
    assert "address: required" in reasons["no-address"]
    assert "limit is" in reasons["huge"]
    assert receiver.requests_to("/huge") == [] and receiver.requests_to("/doomed") == []
    # the garbage is kept for a person to look at, not dropped
    assert client.llen("delivery.undecodable") == 2
    assert (
        redis_stack.workers[0].process is not None and redis_stack.workers[0].process.poll() is None
    )


def test_rate_limit_holds_across_workers(redis_stack: Stack) -> None:
    secret = _channel(redis_stack, rate_limit="10/s")
    redis_stack.worker("--concurrency", "4")
    redis_stack.worker("--concurrency", "4")
    with Receiver(secret) as receiver:
        ids = _send(receiver, 20)
        redis_stack.wait_until(ids, {"delivered"}, timeout=60)
        arrivals = sorted(r.headers["webhook-timestamp"] for r in receiver.received)
    assert len(arrivals) == 20
    # 20 sends at 10/s cannot take less than ~1.9 s, however fast the machine (a lower bound)
    assert int(arrivals[-1]) - int(arrivals[0]) >= 1


def test_messages_taken_by_a_dead_consumer_are_put_back(
    redis_server: RedisServer, redis_stack: Stack
) -> None:
    # Given a message a consumer took (BLMOVE into its in-flight list) before it died,
    # leaving no heartbeat behind
    secret = _channel(redis_stack)
    with Receiver(secret) as receiver:
        [orphan] = _send(receiver, 1, prefix="orphan")
        client = redis.Redis.from_url(redis_server.url)
        assert (
            client.lmove("delivery", "delivery.inflight.deadbeef:delivery", "RIGHT", "LEFT")
            is not None
        )
        assert client.llen("delivery") == 0
        # When a live worker looks for orphans
        redis_stack.worker()
        # Then the message is put back and delivered
        redis_stack.wait_until([orphan], {"delivered"}, timeout=60)
    assert client.llen("delivery.inflight.deadbeef:delivery") == 0
