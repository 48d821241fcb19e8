"""Leases: a send slower than the lease keeps it. (A worker killed mid-batch, on every
broker, is ``test_faults``.)"""

import pytest

import delivery
from schemas import Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration


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
