"""Single deliveries coalesced by a real worker: while its threads are busy, messages
wait and are sent a few at a time, each still retried, recorded and acknowledged alone."""

import threading
import time
from collections import Counter

import pytest
import redis

import delivery
from schemas import Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Answer, Receiver
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration


def test_busy_threads_coalesce_without_losing_or_doubling_anything(
    redis_server: RedisServer, redis_stack: Stack
) -> None:
    secret = webhook_secret()
    redis_stack.channels.add(
        "hooks", "webhook", {"secret": secret, "timeout": 5}, retry_schedule=(0, 0.3, 0.3)
    )
    with Receiver(secret) as receiver:
        # A slow receiver and two threads: messages pile up behind the busy threads.
        receiver.latency = 0.05
        receiver.script("/flaky", Answer(503))
        receiver.script("/bad", Answer(400))
        redis_stack.worker("--concurrency", "2")
        client = redis.Redis.from_url(redis_server.url)
        reserved = _Reserved(client)
        ids = [
            delivery.send("hooks", receiver.url(f"/n/{n}"), Payload(message="x")).id
            for n in range(40)
        ]
        flaky = delivery.send("hooks", receiver.url("/flaky"), Payload(message="x")).id
        bad = delivery.send("hooks", receiver.url("/bad"), Payload(message="x")).id
        counts = redis_stack.wait_until([*ids, flaky, bad], {"delivered", "failed"}, timeout=90)
        assert counts == {"delivered": 41, "failed": 1}
        reserved.stop()
        # The worker reserved more than its prefetch (2) while its threads were busy: the
        # messages waited in the coalescer's buffer, not in Celery's.
        assert reserved.most > 2, reserved.most
        # Each plain delivery reached the receiver once, signed.
        time.sleep(0.5)
        paths = Counter(r.path for r in receiver.received)
        assert all(paths[f"/n/{n}"] == 1 for n in range(40)), paths
        assert all(r.verified for r in receiver.received)
    flaky_record, bad_record = redis_stack.log.get(flaky), redis_stack.log.get(bad)
    assert flaky_record is not None and bad_record is not None
    assert [(a.outcome, a.status_code) for a in flaky_record.attempts] == [
        ("retry", 503),
        ("delivered", 204),
    ]
    assert [(a.outcome, a.status_code) for a in bad_record.attempts] == [("failed", 400)]
    # And every message was acknowledged: nothing queued, taken or unacknowledged remains.
    deadline = time.monotonic() + 10
    while client.hlen("unacked") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.llen("delivery") == 0
    assert client.hlen("unacked") == 0
    assert not [k for k in client.keys("delivery.inflight.*") if client.llen(k)]


class _Reserved:
    """The most messages the broker held as unacknowledged at once, sampled in a thread."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.most = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            self.most = max(self.most, int(self.client.hlen("unacked")))
            time.sleep(0.005)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
