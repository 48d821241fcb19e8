"""The sweep on PostgreSQL: rows locked in id order, and a row a worker holds is skipped,
never waited for (no deadlock with claims)."""

from datetime import timedelta

import pytest

from delivery.clock import utcnow
from schemas import Envelope, Payload
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def _deferred(delivery_id: str) -> Envelope:
    # Waits in the log (not the broker) until due: what the sweep sends.
    return Envelope(
        id=delivery_id,
        channel="hooks",
        address="https://example.com/hook",
        payload=Payload(message="m"),
        not_before=utcnow() + timedelta(seconds=30),
    )


def test_the_sweep_skips_a_row_another_transaction_holds(postgres_stack: Stack) -> None:
    log = postgres_stack.log
    for name in ("a", "b", "c"):
        log.claim(_deferred(name), lease=60)
    later = utcnow() + timedelta(seconds=40)
    # Given a worker's transaction holding row "b" (as a claim does while it runs)
    with log.engine.connect() as holder:
        transaction = holder.begin()
        holder.exec_driver_sql("SELECT id FROM deliveries WHERE id = 'b' FOR UPDATE")
        # When the sweep runs meanwhile, it does not wait for it and takes the others
        found = log.sweep(now=later, horizon=15, grace=30, resweep=60)
        assert sorted(e.id for e, _ in found) == ["a", "c"]
        transaction.rollback()
    # Then once the row is free, the next sweep takes it
    again = log.sweep(now=later, horizon=15, grace=30, resweep=60)
    assert [e.id for e, _ in again] == ["b"]
