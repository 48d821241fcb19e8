"""Operational events (delivery.failed, channel.*): emitted once per occurrence, after the
commit, with the right context and id; nearly free without subscribers; never in the way
of a delivery. On a real SQLite log, a local HTTP server and the in-memory broker."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import event as sa_event

from delivery.clock import utcnow
from delivery.engine.assembly import Assembly, assemble
from delivery.engine.breaker import BreakerChange
from delivery.engine.channels import Channel
from delivery.engine.service import DeliveryService
from delivery.log.tables import Outcome
from delivery.notifications import Notifier
from delivery.notifications.operational import (
    CHANNEL_FAILING_OVER,
    CHANNEL_PAUSED,
    CHANNEL_RESUMED,
    DELIVERY_FAILED,
    Emitter,
    OperationalEvents,
    operational_events,
    pause_by_hand,
)
from delivery.producer.events import event_id
from delivery.producer.publisher import get_publisher
from schemas import Envelope, Payload, Settings
from schemas.events import Event
from tests.conftest import webhook_secret
from tests.delivery.notifications.conftest import drain_envelopes
from tests.support.memory_broker import take_waiting


class Published(list[Event]):
    """A publish function that keeps what it was given."""

    def __call__(self, event: Event) -> None:
        self.append(event)


@pytest.fixture
def ops(settings: Settings, httpserver: HTTPServer) -> Iterator[Assembly]:
    drain_envelopes()
    tight = settings.model_copy(update={"breaker_threshold": 2, "breaker_probe_interval": 1000})
    assembly = assemble(tight, channel_ttl=0)
    assembly.channels.add("dev", "console", {})
    assembly.channels.add(
        "hooks", "webhook", {"secret": webhook_secret()}, retry_schedule=(0, 0, 0, 0)
    )
    yield assembly
    assembly.close()


def watch(assembly: Assembly, published: Published) -> OperationalEvents:
    events = operational_events(assembly.log.engine, published, recheck=60)
    assembly.service.breaker_watcher = events
    return events


def envelope(url: str, delivery_id: str = "d1", **fields: Any) -> Envelope:
    return Envelope(
        id=delivery_id, channel="hooks", address=url, payload=Payload(message="m"), **fields
    )


def fail_for_good(service: DeliveryService, events: OperationalEvents, sent: Envelope) -> None:
    """What the worker does: deliver, and announce a final failure (``report_failure``)."""
    decision = service.deliver(sent)
    assert decision.outcome is Outcome.FAILED, decision
    events.delivery_failed(sent, error=decision.error, attempts=decision.attempts)


def test_a_final_failure_is_announced_once_with_a_masked_context(
    ops: Assembly, httpserver: HTTPServer
) -> None:
    # Given an operator's subscription to delivery.failed
    ops.channels.add("dev2", "console", {})
    Notifier(ops.log).subscriptions.add(DELIVERY_FAILED, "dev", "#oncall")
    published = Published()
    events = watch(ops, published)
    httpserver.expect_request("/h").respond_with_data("no", status=400)
    url = httpserver.url_for("/h?token=sekrit")
    # When a delivery fails for good, and its failure is reported again (a replay)
    sent = envelope(url, category="security")
    fail_for_good(ops.service, events, sent)
    events.delivery_failed(sent, error="PermanentError: 400", attempts=1)
    assert events.emitter.flush()
    # Then both announcements are one event: the id derives from the delivery's
    assert {e.id for e in published} == {event_id(DELIVERY_FAILED, "d1")}
    context = published[0].context
    assert context["delivery_id"] == "d1" and context["channel"] == "hooks"
    assert context["attempts"] == 1 and context["category"] == "security"
    assert context["address"] == f"http://{httpserver.host}/***"
    assert "sekrit" not in str(context) and "400" in str(context["error"])
    # and fanning it out twice makes one delivery to the operator
    notifier = Notifier(ops.log)
    for event in published:
        notifier.fan_out(event, get_publisher())
    made = drain_envelopes()
    assert [(m["channel"], m["address"]) for m in made] == [("dev", "#oncall")]
    assert made[0]["payload"]["data"]["delivery_id"] == "d1"


def test_without_subscribers_announcing_costs_one_cached_query(
    ops: Assembly, httpserver: HTTPServer
) -> None:
    queries: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "subscriptions" in statement:
            queries.append(statement)

    sa_event.listen(ops.log.engine, "before_cursor_execute", count)
    try:
        published = Published()
        events = watch(ops, published)
        sent = envelope("http://example.invalid/x")
        for _ in range(50):
            events.delivery_failed(sent, error="boom", attempts=3)
        change = BreakerChange("hooks", opened=True, at=utcnow(), until=utcnow())
        events.breakers_changed([change], {})
    finally:
        sa_event.remove(ops.log.engine, "before_cursor_execute", count)
    assert published == [] and len(queries) == 1


def test_the_breaker_opening_and_closing_are_announced_once_across_workers(
    ops: Assembly, settings: Settings, httpserver: HTTPServer
) -> None:
    # Given two workers on one log, and subscriptions to the channel events
    subscriptions = Notifier(ops.log).subscriptions
    for name in (CHANNEL_PAUSED, CHANNEL_RESUMED, CHANNEL_FAILING_OVER):
        subscriptions.add(name, "dev", "#oncall")
    other = assemble(ops.settings, channel_ttl=0)
    published = Published()
    watch(ops, published)
    watch(other, published)
    httpserver.expect_request("/h").respond_with_data("", status=503)
    url = httpserver.url_for("/h")
    # When both keep failing on the channel, past the threshold
    for i in range(3):
        for service in (ops.service, other.service):
            service.deliver(envelope(url, f"f{service is ops.service}{i}"))
            with ops.log.engine.begin() as conn:
                conn.exec_driver_sql("UPDATE deliveries SET next_attempt_at = NULL")
    assert ops.channels.get("hooks").breaker_open_until is not None
    # and the probe then succeeds, on either worker
    with ops.log.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE channels SET breaker_open_until = '2000-01-01 00:00:00'")
    httpserver.clear()
    httpserver.expect_request("/h").respond_with_data("", status=204)
    assert other.service.deliver(envelope(url, "ok")).outcome is Outcome.DELIVERED
    assert ops.service.deliver(envelope(url, "ok2")).outcome is Outcome.DELIVERED
    other.close()
    for assembly in (ops, other):
        assert assembly.service.breaker_watcher is not None
        assert assembly.service.breaker_watcher.emitter.flush()  # type: ignore[attr-defined]
    # Then one channel.paused and one channel.resumed (no fallback: no failing over)
    assert sorted(e.name for e in published) == [CHANNEL_PAUSED, CHANNEL_RESUMED]
    paused = next(e for e in published if e.name == CHANNEL_PAUSED)
    assert paused.context["channel"] == "hooks" and paused.context["fallback"] is None
    assert "circuit breaker opened" in str(paused.context["reason"])
    assert {"since", "probe_at"} <= set(paused.context)
    assert ops.channels.get("hooks").breaker_open_until is None


def test_a_breaker_opening_on_a_channel_with_a_fallback_announces_failing_over(
    ops: Assembly,
) -> None:
    subscriptions = Notifier(ops.log).subscriptions
    for name in (CHANNEL_PAUSED, CHANNEL_FAILING_OVER):
        subscriptions.add(name, "dev", "#oncall")
    published = Published()
    events = operational_events(ops.log.engine, published)
    channel, _ = ops.dispatchers.get("hooks")
    with_fallback = Channel(
        name="hooks", dispatcher="webhook", config=channel.config, fallback="dev"
    )
    change = BreakerChange("hooks", opened=True, at=utcnow(), until=utcnow())
    events.breakers_changed([change], {"hooks": with_fallback})
    events.breakers_changed([change], {"hooks": with_fallback})  # a replay
    assert events.emitter.flush()
    names = sorted({(e.name, e.id) for e in published})
    assert [name for name, _ in names] == [CHANNEL_FAILING_OVER, CHANNEL_PAUSED]
    over = next(e for e in published if e.name == CHANNEL_FAILING_OVER)
    assert over.context["fallback"] == "dev" and "move to dev" in str(over.context["reason"])


def test_an_operational_delivery_that_fails_is_not_announced_again(
    ops: Assembly, httpserver: HTTPServer
) -> None:
    # Given the operator's delivery.failed subscription is itself on a failing webhook
    subscription = Notifier(ops.log).subscriptions.add(
        DELIVERY_FAILED, "hooks", httpserver.url_for("/ops")
    )
    published = Published()
    events = watch(ops, published)
    httpserver.expect_request("/ops").respond_with_data("", status=400)
    # When the delivery announcing a failure fails too
    ops_delivery = envelope(httpserver.url_for("/ops"), "a1", subscription=subscription.id)
    fail_for_good(ops.service, events, ops_delivery)
    assert events.emitter.flush()
    # Then nothing more is announced: no loop
    assert published == []


def test_a_pause_is_not_sent_through_the_paused_channel_itself(ops: Assembly) -> None:
    notifier = Notifier(ops.log)
    notifier.subscriptions.add(CHANNEL_PAUSED, "hooks", "https://ops.example/hook")
    notifier.subscriptions.add(CHANNEL_PAUSED, "dev", "#oncall")
    published = Published()
    events = operational_events(ops.log.engine, published)
    change = BreakerChange("hooks", opened=True, at=utcnow(), until=utcnow())
    events.breakers_changed([change], {})
    assert events.emitter.flush()
    done = notifier.fan_out(published[0], get_publisher())
    assert (done.queued, done.skipped) == (1, 1)
    assert [m["channel"] for m in drain_envelopes()] == ["dev"]


def test_errors_while_announcing_do_not_touch_the_delivery(
    ops: Assembly, httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    Notifier(ops.log).subscriptions.add(DELIVERY_FAILED, "dev", "#oncall")
    Notifier(ops.log).subscriptions.add(CHANNEL_PAUSED, "dev", "#oncall")

    def broken(_: Event) -> None:
        raise RuntimeError("broker on fire")

    events = watch(ops, Published())
    events.emitter = Emitter(broken)
    httpserver.expect_request("/h").respond_with_data("", status=503)
    url = httpserver.url_for("/h")
    # The breaker opens (its announcement fails to publish) and the delivery is recorded
    for i in range(2):
        assert ops.service.deliver(envelope(url, f"r{i}")).outcome is Outcome.RETRY
    assert ops.channels.get("hooks").breaker_open_until is not None
    # A failure for good is recorded although announcing it fails too
    httpserver.clear()
    httpserver.expect_request("/h").respond_with_data("", status=400)
    with ops.log.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE channels SET breaker_open_until = NULL")
    fail_for_good(ops.service, events, envelope(url, "p1"))
    assert events.emitter.flush()
    record = ops.log.get("p1")
    assert record is not None and record.status == "failed"
    assert "could not publish operational event" in caplog.text
    # and a subscriptions table that cannot be read emits nothing, raising nothing
    with ops.log.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE subscriptions RENAME TO gone")
    try:
        late = operational_events(ops.log.engine, Published())
        late.delivery_failed(envelope(url, "p2"), error="x", attempts=1)
        assert late.emitter.flush()
    finally:
        with ops.log.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE gone RENAME TO subscriptions")


def test_the_probe_closes_the_breaker_and_says_so(ops: Assembly, httpserver: HTTPServer) -> None:
    """The breaker's rule that makes every closing seen: only a success where the breaker
    may be open (the probe) closes it."""
    changes: list[BreakerChange] = []

    class Watcher:
        def breakers_changed(self, found: Any, channels: Any) -> None:
            changes.extend(found)

    ops.service.breaker_watcher = Watcher()
    httpserver.expect_request("/h").respond_with_data("", status=204)
    url = httpserver.url_for("/h")
    until = utcnow() + timedelta(hours=1)
    with ops.log.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE channels SET consecutive_failures = 2, breaker_open_until = ?",
            (until.replace(tzinfo=None).isoformat(sep=" "),),
        )
    # held: the open breaker keeps the delivery waiting
    assert ops.service.deliver(envelope(url, "w1")).outcome is None
    with ops.log.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE channels SET breaker_open_until = '2000-01-01 00:00:00'")
    assert ops.service.deliver(envelope(url, "w2")).outcome is Outcome.DELIVERED
    assert [(c.channel, c.opened) for c in changes] == [("hooks", False)]
    assert ops.channels.get("hooks").breaker_open_until is None


def test_a_success_that_races_an_opening_leaves_the_breaker_to_its_probe(
    ops: Assembly, httpserver: HTTPServer
) -> None:
    # Given a worker whose cached channel still reads the breaker closed
    stale = assemble(ops.settings, channel_ttl=3600)
    httpserver.expect_request("/h").respond_with_data("", status=204)
    url = httpserver.url_for("/h")
    assert stale.service.deliver(envelope(url, "s0")).outcome is Outcome.DELIVERED
    until = "2999-01-01 00:00:00"
    with ops.log.engine.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE channels SET consecutive_failures = 2, breaker_open_until = '{until}'"
        )
    # When its send, let through on that reading, succeeds
    assert stale.service.deliver(envelope(url, "s1")).outcome is Outcome.DELIVERED
    stale.close()
    # Then the breaker stays open for its probe, which will announce the closing
    assert ops.channels.get("hooks").breaker_open_until is not None


def _published_events() -> list[Event]:
    """The events waiting in the in-memory broker for the fan-out task."""
    return [
        Event.model_validate(message.args[0])
        for message in take_waiting()
        if message.task == "delivery.fanout"
    ]


def test_a_person_pausing_and_resuming_a_channel_is_announced_when_it_changes(
    ops: Assembly,
) -> None:
    subscriptions = Notifier(ops.log).subscriptions
    for name in (CHANNEL_PAUSED, CHANNEL_RESUMED):
        subscriptions.add(name, "dev", "#oncall")
    _published_events()
    assert pause_by_hand(ops, "hooks", paused=True)
    assert pause_by_hand(ops, "hooks", paused=True)  # already paused: nothing to say
    assert pause_by_hand(ops, "hooks", paused=False)
    assert pause_by_hand(ops, "hooks", paused=False)  # not held: nothing to say
    assert not pause_by_hand(ops, "nope", paused=True)
    events = _published_events()
    assert [(e.name, e.context["reason"]) for e in events] == [
        (CHANNEL_PAUSED, "paused by a person"),
        (CHANNEL_RESUMED, "resumed by a person"),
    ]
    assert ops.channels.summaries()[1]["paused"] is False
