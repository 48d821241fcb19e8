"""``delivery erase`` with real workers: deliveries held on a paused channel, the address
erased, the channel resumed — the receiver never gets them and they end ``erased``. On the
embedded broker with SQLite, and on Redis with PostgreSQL."""

import json
import subprocess
import sys

import pytest
from sqlalchemy import text

import delivery
from schemas import Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration


@pytest.fixture(params=["embedded_stack", "postgres_stack"])
def stack(request: pytest.FixtureRequest) -> Stack:
    found: Stack = request.getfixturevalue(request.param)
    return found


def test_held_deliveries_to_an_erased_address_are_never_sent(stack: Stack) -> None:
    secret = webhook_secret()
    stack.channels.add("held", "webhook", {"secret": secret, "timeout": 5})
    stack.channels.set_paused("held", True)
    # A paused channel's deliveries come back from the broker each second to look again:
    # the erased ones are offered to the worker again and again after the erasure.
    stack.worker(DELIVERY_BREAKER_PROBE_INTERVAL="1")
    with Receiver(secret) as receiver:
        # Given deliveries to Ann and to Bob held by a paused channel, a worker having seen them
        ann = receiver.url("/ann/T0K3N")
        held = [
            delivery.send("held", ann, Payload(message=f"secret code {i}")).id for i in range(3)
        ]
        kept = [
            delivery.send("held", receiver.url(f"/bob/{i}"), Payload(message="hi Bob")).id
            for i in range(3)
        ]
        stack.wait_until(held + kept, {"retrying"})
        # When Ann's address is erased, as an operator would
        result = subprocess.run(
            [sys.executable, "-m", "delivery", "erase", ann, "--json"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        counts = json.loads(result.stdout)
        assert (counts["deliveries"], counts["unsent"]) == (3, 3)
        assert counts["attempts"] == 0  # held by a pause: none was attempted
        # …and the channel resumed
        stack.channels.set_paused("held", False)
        stack.wait_until(kept, {"delivered"})
        receiver.wait_for(3)
        # Bob's were held just as Ann's were, so Ann's have been offered again by now; and
        # once more for good measure: one more pass of the sweep and the broker
        after = delivery.send("held", receiver.url("/bob/after"), Payload(message="hi")).id
        stack.wait_until([after], {"delivered"})
        receiver.wait_for(4)
    # Then the receiver got only Bob's deliveries, and Ann's stay erased
    assert sorted(r.path for r in receiver.received) == ["/bob/0", "/bob/1", "/bob/2", "/bob/after"]
    assert stack.wait_until(held, {"erased"}, timeout=5) == {"erased": 3}
    for delivery_id in held:
        record = stack.log.get(delivery_id)
        assert record is not None
        assert (record.address, record.payload, record.attempts) == ("[erased]", None, [])
    with stack.log.engine.connect() as connection:
        rows = connection.execute(text("SELECT address, payload FROM deliveries")).all()
    assert "T0K3N" not in repr(rows) and "secret code" not in repr(rows)


def test_messages_still_in_the_broker_at_the_erasure_are_never_sent(stack: Stack) -> None:
    secret = webhook_secret()
    stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    with Receiver(secret) as receiver:
        # Given deliveries to Ann and Bob published while no worker runs: one each, a batch
        # of both, and one to Ann with a countdown (an ETA kept by the worker)
        ann = receiver.url("/ann/T0K3N")
        bob = [receiver.url(f"/bob/{i}") for i in range(3)]
        waiting = [delivery.send("hooks", ann, Payload(message="secret code 1")).id]
        kept = [delivery.send("hooks", bob[0], Payload(message="hi Bob")).id]
        both = delivery.send_many(
            [
                {"channel": "hooks", "address": a, "payload": {"message": "secret code 2"}}
                for a in (ann, bob[1])
            ]
        )
        waiting.append(both[0].id)
        kept.append(both[1].id)
        waiting.append(
            delivery.send("hooks", ann, Payload(message="secret code 3"), countdown=2).id
        )
        # When Ann's address is erased, the log holding nothing of hers yet
        result = subprocess.run(
            [sys.executable, "-m", "delivery", "erase", ann, "--json"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["deliveries"] == 0
        # …and then a worker starts and takes the messages
        stack.worker()
        stack.wait_until(kept, {"delivered"})
        receiver.wait_for(2)
        # and a delivery to Ann published after the erasure is sent as any other
        after = delivery.send("hooks", ann, Payload(message="welcome back")).id
        stack.wait_until([after], {"delivered"})
        assert stack.wait_until(waiting, {"erased"}) == {"erased": 3}
    # Then the receiver got Bob's deliveries and only the one to Ann sent after her erasure
    assert sorted(r.path for r in receiver.received) == ["/ann/T0K3N", "/bob/0", "/bob/1"]
    for delivery_id in waiting:
        record = stack.log.get(delivery_id)
        assert record is not None
        assert (record.address, record.payload, record.attempts) == ("[erased]", None, [])
    with stack.log.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT address, payload FROM deliveries WHERE status = 'erased'")
        ).all()
    assert "T0K3N" not in repr(rows) and "secret code" not in repr(rows)
