"""Three workers standing in for three machines: each its own ``DELIVERY_HOME`` and node
name, sharing one broker (Redis, then RabbitMQ) and one PostgreSQL log, with the default
lease, sweep and visibility timeout and no beat. One is killed mid-run; the other two
finish its work, and no delivery is recorded twice."""

import time
from collections.abc import Callable

import pytest

import delivery
from schemas import Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import RECOVERY_DEFAULTS, Stack
from tests.support.ledger import ledger
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration

MACHINES = ("host-a", "host-b", "host-c")


@pytest.fixture(params=["redis", "rabbitmq"])
def shared_stack(
    request: pytest.FixtureRequest, stack_factory: Callable[[str, str], Stack]
) -> Stack:
    """One broker server and one PostgreSQL log, as several machines would share them."""
    broker = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "rabbit_server"
    )
    broker.flush()
    postgres = request.getfixturevalue("postgres_server")
    return stack_factory(broker.url, postgres.create_database(f"machines_{request.param}"))


def test_three_machines_one_dies_the_others_finish_its_work(shared_stack: Stack) -> None:
    secret = webhook_secret()
    shared_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    with Receiver(secret) as receiver:
        receiver.latency = 0.2  # each worker holds deliveries in flight, and more reserved
        workers = [
            shared_stack.worker(
                "--concurrency",
                "4",
                "-n",
                f"worker@{host}",
                DELIVERY_HOME=str(shared_stack.tmp_path / host),
                **RECOVERY_DEFAULTS,
            )
            for host in MACHINES
        ]
        ids = [
            delivery.send("hooks", receiver.url("/hook"), Payload(message=f"m{i}")).id
            for i in range(240)
        ]
        receiver.wait_for(40)
        # When one machine dies (SIGKILL: no goodbye; its leases and heartbeat just stop)
        workers[0].kill()
        killed_at = time.monotonic()
        # Then the other two deliver everything, its work included (the promise is 30 s
        # after the death; the bound leaves room for a loaded machine)
        shared_stack.wait_until(ids, {"delivered"}, timeout=120)
        finished_in = time.monotonic() - killed_at
    result = ledger(shared_stack.log, receiver, ids)
    print(f"all {len(ids)} delivered {finished_in:.1f}s after the kill")
    assert (result.delivered, result.unknown) == (len(ids), 0)
    # Each survivor did part of the work, and kept its own home
    attempts_by = {
        attempt.worker
        for delivery_id in ids
        for attempt in shared_stack.log.get(delivery_id).attempts  # type: ignore[union-attr]
    }
    assert {w for w in attempts_by if w and "host-b" in w} and {
        w for w in attempts_by if w and "host-c" in w
    }, attempts_by
    for host in MACHINES:
        assert (shared_stack.tmp_path / host).is_dir()
