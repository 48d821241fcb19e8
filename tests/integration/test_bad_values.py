"""A value the log cannot store, from a producer that skipped the schemas, fails alone on
PostgreSQL: its batch-mates are delivered, and nothing is retried for ever."""

import uuid

import pytest

from delivery.log.tables import Status
from delivery.producer.publisher import get_publisher
from schemas import Envelope, Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration


def _raw(address: str, **payload: object) -> dict[str, object]:
    return {
        "id": str(uuid.uuid4()),
        "channel": "hooks",
        "address": address,
        "payload": {"message": "m", **payload},
    }


def test_a_batch_with_unstorable_values_delivers_the_rest(postgres_stack: Stack) -> None:
    secret = webhook_secret()
    postgres_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    with Receiver(secret) as receiver:
        good = [_raw(receiver.url(f"/good{i}")) for i in range(3)]
        bad = [
            _raw(receiver.url("/nul") + "\x00"),
            _raw(receiver.url("/nan"), data={"x": float("nan")}),
            _raw(receiver.url("/text"), message="a\x00b"),
        ]
        # As a producer in another language would publish it: no schemas on the way
        get_publisher().app.send_task("delivery.deliver_batch", args=[[good[0], *bad, *good[1:]]])
        postgres_stack.worker("--concurrency", "2")
        postgres_stack.wait_until([e["id"] for e in good], {"delivered"}, timeout=30)  # type: ignore[misc]
        postgres_stack.wait_until([e["id"] for e in bad], {"failed"}, timeout=30)  # type: ignore[misc]
    for entry in bad:
        record = postgres_stack.log.get(str(entry["id"]))
        assert record is not None and "malformed task message" in (record.last_error or "")
    assert {r.path for r in receiver.received} == {"/good0", "/good1", "/good2"}
    assert "delivery log unavailable" not in postgres_stack.workers[0].output()


def test_a_row_the_database_refuses_fails_alone(postgres_stack: Stack) -> None:
    # Given an envelope built without validation (as the log would get one if a check were
    # missing): PostgreSQL refuses its NUL character with a DataError
    service = postgres_stack.engine.service
    unstorable = Envelope.model_construct(
        id=str(uuid.uuid4()),
        channel="hooks",
        address="https://example.com/\x00",
        payload=Payload(message="m"),
        idempotency_key=None,
        not_before=None,
        schema_version=1,
    )
    postgres_stack.channels.add("hooks", "console", {})
    fine = Envelope(
        id=str(uuid.uuid4()), channel="hooks", address="ops", payload=Payload(message="m")
    )
    # When a batch holds it, then its batch-mate is still delivered
    decisions = service.deliver_many([unstorable, fine])
    assert [d.action for d in decisions] == ["done", "done"]
    record = postgres_stack.log.get(fine.id)
    assert record is not None and record.status == Status.DELIVERED
    failed = postgres_stack.log.get(unstorable.id)
    assert failed is not None and failed.status == Status.FAILED
    assert "cannot store" in (failed.last_error or "")
