"""Operational events through real parts: a `delivery worker` process on the embedded
broker gives up on a delivery to a failing receiver, its channel's breaker opens, and the
operator's webhook (standing in for Slack) hears of each exactly once."""

import time

import pytest
from sqlalchemy import select

import delivery
from delivery.notifications import Notifier
from delivery.notifications.operational import CHANNEL_PAUSED, DELIVERY_FAILED
from delivery.notifications.tables import EventRow
from delivery.producer.events import event_id
from schemas import Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Answer, Receiver

pytestmark = pytest.mark.integration


def _settled(notifier: Notifier, ids: list[str], timeout: float = 60.0) -> None:
    """Wait until both events are fanned out (each once: their ids are derived)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [notifier.events.get(i) for i in ids]
        if all(r is not None and r.fanned_out_at is not None for r in records):
            return
        time.sleep(0.1)
    raise TimeoutError(f"events {ids} were not fanned out")


@pytest.mark.parametrize("where", ["embedded_stack", "postgres_stack"])
def test_the_operator_hears_once_of_a_failed_delivery_and_of_the_paused_channel(
    where: str, request: pytest.FixtureRequest
) -> None:
    # The embedded broker and SQLite; Redis and PostgreSQL (the breaker's conditional
    # writes, whose row counts decide who announces, on both databases).
    stack: Stack = request.getfixturevalue(where)
    secret = webhook_secret()
    with Receiver(secret) as receiver:
        # Given a channel whose provider always fails, two attempts each, and the
        # breaker opening at the second failure in a row
        receiver.responder = lambda r: Answer(503) if r.path == "/fail" else Answer(204)
        stack.channels.add("hooks", "webhook", {"secret": secret}, retry_schedule=(0, 0.2))
        # and an operator's channel subscribed to delivery.failed and channel.paused
        stack.channels.add("ops", "webhook", {"secret": secret})
        notifier = Notifier(stack.log)
        notifier.templates.add(
            "failed", text="{{ delivery_id }} on {{ channel }} to {{ address }}: {{ error }}"
        )
        notifier.templates.add("paused", text="{{ channel }} paused: {{ reason }}")
        ops_url = receiver.url("/ops")
        notifier.subscriptions.add(DELIVERY_FAILED, "ops", ops_url, template="failed")
        notifier.subscriptions.add(CHANNEL_PAUSED, "ops", ops_url, template="paused")
        stack.worker(DELIVERY_BREAKER_THRESHOLD="2", DELIVERY_BREAKER_PROBE_INTERVAL="3600")
        # When a delivery to the failing receiver gives up
        receipt = delivery.send("hooks", receiver.url("/fail"), Payload(message="hi"))
        stack.wait_until([receipt.id], {"failed"})
        # Then the operator gets one delivery.failed naming it, and one channel.paused
        failed_id = event_id(DELIVERY_FAILED, receipt.id)
        _wait_for_events(stack, [DELIVERY_FAILED, CHANNEL_PAUSED])
        names = _ops_event_ids(stack)
        _settled(notifier, list(names.values()))
        made = [
            o.delivery_id
            for i in names.values()
            for record in [notifier.events.get(i)]
            if record is not None
            for o, _ in record.deliveries
        ]
        stack.wait_until(made, {"delivered"})
        bodies = [r.body.decode() for r in receiver.requests_to("/ops")]
        assert len(bodies) == 2, bodies
        assert names[DELIVERY_FAILED] == failed_id
        [failure] = [b for b in bodies if receipt.id in b]
        assert "on hooks to http://127.0.0.1/***" in failure and "/fail" not in failure
        [pause] = [b for b in bodies if b is not failure]
        assert "hooks paused: the circuit breaker opened" in pause
        # and the announcements, being operational, announce nothing themselves
        assert len(_ops_event_ids(stack)) == 2


def _ops_event_ids(stack: Stack) -> dict[str, str]:
    """The operational events the log has received, by name (each name at most once)."""
    with stack.log.engine.connect() as conn:
        rows = conn.execute(
            select(EventRow.name, EventRow.id).where(
                EventRow.name.in_([DELIVERY_FAILED, CHANNEL_PAUSED])
            )
        ).all()
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), rows
    return {str(name): str(id_) for name, id_ in rows}


def _wait_for_events(stack: Stack, names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(_ops_event_ids(stack)) >= set(names):
            return
        time.sleep(0.1)
    logs = "\n".join(w.output()[-3000:] for w in stack.workers)
    raise TimeoutError(f"events {names} were not received\n{logs}")
