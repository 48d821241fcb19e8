"""A worker killed mid-batch, with the default lease, sweep and visibility timeout: its
deliveries are taken over within 30 s, and only what it had sent but not yet recorded is
sent twice."""

import time

import pytest

import delivery
from delivery.engine.service import RECORD_EVERY
from schemas import Message, Payload, Settings
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration

#: The settings recovery depends on, at their defaults (the Stack shortens them).
DEFAULTS = {
    f"DELIVERY_{name.upper()}": str(Settings.model_fields[name].default)
    for name in ("lease_seconds", "sweep_interval", "visibility_timeout", "retry_schedule")
}
THREADS = 4


def test_a_killed_worker_is_taken_over_in_seconds_and_resends_only_its_unrecorded_sends(
    redis_stack: Stack,
) -> None:
    secret = webhook_secret()
    redis_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    with Receiver(secret) as receiver:
        receiver.latency = 0.3  # batches stay in flight for seconds
        doomed = redis_stack.worker("--concurrency", str(THREADS), **DEFAULTS)
        survivor = redis_stack.worker("--concurrency", str(THREADS), **DEFAULTS)
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
        # When one worker dies mid-batch (SIGKILL: no goodbye, its leases just stop)
        doomed.kill()
        killed_at = time.monotonic()
        held = [r.id for r in redis_stack.log.find(status="sending", limit=1000)]
        assert held, "nothing was in flight when the worker died"
        # Then everything it held is delivered by the survivor, in seconds (about 20: the
        # lease and the sweep; the bound leaves room for a busy machine)
        redis_stack.wait_until(held, {"delivered"}, timeout=60)
        taken_over_in = time.monotonic() - killed_at
        redis_stack.wait_until(ids, {"delivered"}, timeout=60)
    seen = receiver.count_by_id()
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    print(f"held {len(held)}, taken over in {taken_over_in:.1f}s, duplicates {duplicates}")
    # Each thread of the dead worker had at most RECORD_EVERY sends unrecorded (the one
    # in flight among them)
    assert duplicates <= THREADS * RECORD_EVERY
    assert set(seen) == set(ids)
    assert survivor.process is not None and survivor.process.poll() is None


def test_a_send_slower_than_the_lease_keeps_its_lease(redis_stack: Stack) -> None:
    secret = webhook_secret()
    redis_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 30})
    # Short enough to be overtaken, long enough that one late renewal on a busy machine
    # is not a lost lease.
    short = {"DELIVERY_LEASE_SECONDS": "6", "DELIVERY_SWEEP_INTERVAL": "0.5"}
    with Receiver(secret) as receiver:
        receiver.latency = 10.0  # the provider takes longer than the lease
        redis_stack.worker("--concurrency", "2", **short)
        redis_stack.worker("--concurrency", "2", **short)
        receipt = delivery.send("hooks", receiver.url("/slow"), Payload(message="patience"))
        redis_stack.wait_until([receipt.id], {"delivered"}, timeout=60)
    # Renewed while the send went on: nobody took it over, nothing was sent twice
    assert len(receiver.requests_to("/slow")) == 1
    record = redis_stack.log.get(receipt.id)
    assert record is not None and len(record.attempts) == 1
