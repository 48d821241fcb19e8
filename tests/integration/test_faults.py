"""One fault suite over every broker we support — the embedded default, Redis, RabbitMQ —
with the settings users run (no beat; the default lease, sweep and visibility timeout
where recovery is what is tested). Each test does the damage for real and ends with the
ledger: sent = delivered + failed + pending, every duplicate an attempt in the log."""

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import delivery
from delivery.engine.service import RECORD_EVERY
from schemas import Message, Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import RECOVERY_DEFAULTS, Stack
from tests.support.ledger import ledger
from tests.support.receiver import Answer, Received, Receiver

pytestmark = pytest.mark.integration

BROKERS = ("embedded", "redis", "rabbitmq")
#: Brokers that are a server, which can be stopped and started again.
SERVERS = ("redis", "rabbitmq")

#: Items no producer of ours makes, each of which once stopped a worker on some broker:
#: not JSON, a NUL, an empty object, and a task message whose body is ``{}``.
GARBAGE: list[bytes] = [b"not json", b"\x00", b"{}", b"", b'{"body": 7, "headers": []}']


def _broker_url(name: str, request: pytest.FixtureRequest) -> str:
    if name == "embedded":
        return "embedded://"
    server = request.getfixturevalue("redis_server" if name == "redis" else "rabbit_server")
    server.flush()
    return str(server.url)


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def stack(
    broker: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    stack_factory: Callable[[str, str], Stack],
) -> Stack:
    """A stack on ``broker`` with a SQLite log."""
    return stack_factory(_broker_url(broker, request), f"sqlite:///{tmp_path / 'log.sqlite3'}")


def _channel(stack: Stack) -> str:
    secret = webhook_secret()
    stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    return secret


def _send(receiver: Receiver, count: int, prefix: str = "m") -> list[str]:
    # One task per delivery, as `delivery.send` makes them: the path that reserves most
    # (prefetch, and coalescing while the threads are busy).
    return [
        delivery.send("hooks", receiver.url("/hook"), Payload(message=f"{prefix}{i}")).id
        for i in range(count)
    ]


def test_a_killed_worker_is_taken_over_without_beat(stack: Stack) -> None:
    secret = _channel(stack)
    with Receiver(secret) as receiver:
        receiver.latency = 0.3  # deliveries in flight, and more reserved, when it dies
        # Two workers on one host need names of their own (RabbitMQ's remote-control queue
        # is exclusive to one connection per node name).
        doomed = stack.worker("--concurrency", "4", "-n", "doomed@%h", **RECOVERY_DEFAULTS)
        ids = _send(receiver, 150)
        receiver.wait_for(15)
        survivor = stack.worker("--concurrency", "4", "-n", "survivor@%h", **RECOVERY_DEFAULTS)
        # When the worker dies (SIGKILL: no goodbye; its leases and heartbeat just stop)
        doomed.kill()
        killed_at = time.monotonic()
        # Then the survivor delivers everything, what the dead one held included
        stack.wait_until(ids, {"delivered"}, timeout=150)
        finished_in = time.monotonic() - killed_at
    result = ledger(stack.log, receiver, ids)
    print(f"everything delivered {finished_in:.1f}s after the kill")
    assert (result.delivered, result.unknown) == (len(ids), 0)
    assert survivor.process is not None and survivor.process.poll() is None


def test_a_worker_killed_mid_batch_resends_only_its_unrecorded_sends(stack: Stack) -> None:
    secret = _channel(stack)
    with Receiver(secret) as receiver:
        receiver.latency = 0.3  # batches stay in flight for seconds
        doomed = stack.worker("--concurrency", "4", "-n", "doomed@%h", **RECOVERY_DEFAULTS)
        survivor = stack.worker("--concurrency", "4", "-n", "survivor@%h", **RECOVERY_DEFAULTS)
        ids = [
            r.id
            for r in delivery.send_many(
                Message(
                    channel="hooks",
                    address=receiver.url("/hook"),
                    payload=Payload(message=f"m{i}"),
                    idempotency_key=f"k{i}",
                )
                for i in range(100)
            )
        ]
        receiver.wait_for(10)
        # When one worker dies mid-batch
        doomed.kill()
        killed_at = time.monotonic()
        held = [r.id for r in stack.log.find(status="sending", limit=1000)]
        assert held, "nothing was in flight when the worker died"
        # Then what it held is taken over (its leases run out; the survivor sweeps)
        stack.wait_until(held, {"delivered"}, timeout=90)
        taken_over_in = time.monotonic() - killed_at
        stack.wait_until(ids, {"delivered"}, timeout=90)
    result = ledger(stack.log, receiver, ids)
    print(f"held {len(held)}, taken over in {taken_over_in:.1f}s")
    assert (result.delivered, result.unknown) == (len(ids), 0)
    # Each thread of the dead worker had at most RECORD_EVERY sends unrecorded (the one in
    # flight among them): nothing else is sent twice
    assert result.duplicates <= 4 * RECORD_EVERY
    assert survivor.process is not None and survivor.process.poll() is None


def test_garbage_on_the_queue_never_stops_a_worker(
    broker: str, stack: Stack, request: pytest.FixtureRequest
) -> None:
    secret = _channel(stack)
    with Receiver(secret) as receiver:
        worker = stack.worker("--concurrency", "4")
        _push_garbage(broker, stack, request)
        ids = _send(receiver, 20)
        stack.wait_until(ids, {"delivered"}, timeout=60)
    assert worker.process is not None and worker.process.poll() is None, worker.output()[-3000:]
    assert "Unrecoverable error" not in worker.output()
    result = ledger(stack.log, receiver, ids)
    assert result.delivered == len(ids)


def _push_garbage(broker: str, stack: Stack, request: pytest.FixtureRequest) -> None:
    """Put each item of GARBAGE on the task queue, as anyone who can reach the broker can."""
    if broker == "redis":
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
        client.lpush("delivery", *GARBAGE)
    elif broker == "embedded":
        from delivery.transport.embedded_store import QueueFile, broker_file

        queue = QueueFile.open(broker_file(Path(stack.env["DELIVERY_HOME"])))
        for item in GARBAGE:
            queue.put("delivery", item.decode("utf-8", errors="replace"))
    else:
        import amqp  # type: ignore[import-untyped]

        from tests.support.amqp_messages import channel_of, connect

        connection = connect(request.getfixturevalue("rabbit_server").url)
        try:
            channel = channel_of(connection)
            channel.queue_declare("delivery", durable=True, auto_delete=False)
            for item in GARBAGE:
                # A task header, so Celery would read the body as a task's: the message
                # that made every worker on RabbitMQ exit, one after the other.
                message = amqp.Message(
                    item,
                    content_type="application/json",
                    content_encoding="utf-8",
                    application_headers={"task": "delivery.deliver", "id": "garbage"},
                )
                channel.basic_publish(message, exchange="", routing_key="delivery")
        finally:
            connection.close()


@pytest.mark.parametrize("broker", SERVERS, indirect=True)
def test_a_broker_restart_loses_nothing(
    broker: str, stack: Stack, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("redis_server" if broker == "redis" else "rabbit_server")
    secret = _channel(stack)
    with Receiver(secret) as receiver:
        receiver.latency = 0.02
        stack.worker("--concurrency", "8")
        before = _send(receiver, 100, prefix="before")
        receiver.wait_for(20)
        # Both keep what they hold on disk (Redis: append-only; RabbitMQ: durable queue,
        # persistent messages), queued and unacknowledged alike.
        server.stop()
        time.sleep(0.5)
        server.start()
        after = _send(receiver, 50, prefix="after")
        stack.wait_until(before + after, {"delivered"}, timeout=150)
    result = ledger(stack.log, receiver, before + after)
    assert result.delivered == len(before + after)


@pytest.fixture
def postgres_log_stack(
    broker: str,
    request: pytest.FixtureRequest,
    stack_factory: Callable[[str, str], Stack],
) -> tuple[Stack, object]:
    """A stack on ``broker`` whose log is a PostgreSQL server the test can stop."""
    postgres = request.getfixturevalue("postgres_server")
    name = f"faults_{broker}_{int(time.time() * 1000) % 10**9}"
    return stack_factory(_broker_url(broker, request), postgres.create_database(name)), postgres


def test_a_log_outage_delays_but_loses_nothing(postgres_log_stack: tuple[Stack, object]) -> None:
    stack, postgres = postgres_log_stack
    secret = _channel(stack)
    release = threading.Event()

    def held_after_ten(_: Received) -> Answer:
        # Deliveries stay in flight until the log is gone, however fast this machine is.
        if len(receiver.received) > 10:
            release.wait(30)
        return Answer(204)

    with Receiver(secret) as receiver:
        receiver.responder = held_after_ten
        worker = stack.worker("--concurrency", "4")
        ids = _send(receiver, 40)
        receiver.wait_for(12)
        # The log goes away mid-run: the attempts in flight cannot be recorded
        postgres.stop()  # type: ignore[attr-defined]
        release.set()
        time.sleep(2)
        postgres.start()  # type: ignore[attr-defined]
        stack.wait_until(ids, {"delivered"}, timeout=120)
    result = ledger(stack.log, receiver, ids)
    assert result.delivered == len(ids)
    assert "delivery log unavailable" in worker.output()
