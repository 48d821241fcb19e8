from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from pytest_httpserver import HTTPServer

from delivery.clock import utcnow
from delivery.engine.assembly import assemble
from delivery.engine.service import DeliveryService
from schemas import Envelope, Payload, Settings
from tests.conftest import webhook_secret


@pytest.fixture
def service(settings: Settings) -> DeliveryService:
    engine = assemble(settings, channel_ttl=0)
    engine.channels.add(
        "hooks", "webhook", {"secret": webhook_secret()}, retry_schedule=(0, 10, 10)
    )
    return engine.service


def envelope(url: str, delivery_id: str = "d1", channel: str = "hooks") -> Envelope:
    return Envelope(id=delivery_id, channel=channel, address=url, payload=Payload(message="m"))


def test_delivered_then_a_duplicate_is_skipped(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=202)
    assert service.deliver(envelope(httpserver.url_for("/h"))).outcome == "delivered"
    assert service.deliver(envelope(httpserver.url_for("/h"))).action == "done"
    assert len(httpserver.log) == 1


def test_retryable_failure_schedules_the_next_attempt(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=503)
    decision = service.deliver(envelope(httpserver.url_for("/h")))
    assert decision.action == "requeue"
    assert 5 <= decision.countdown <= 12  # 10 s ± 20 % jitter, less the time since (a busy machine)
    record = service.log.get("d1")
    assert record is not None and record.status == "retrying"
    assert record.next_attempt_at is not None and record.next_attempt_at > utcnow()
    # a copy arriving early waits for the schedule instead of sending now
    early = service.deliver(envelope(httpserver.url_for("/h")))
    assert early.action == "requeue" and early.countdown > 2
    assert len(httpserver.log) == 1


def test_schedule_exhausted_fails_with_the_last_error(
    service: DeliveryService, httpserver: HTTPServer, settings: Settings
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=500)
    url = httpserver.url_for("/h")
    service.deliver(envelope(url))
    for _ in range(2):
        # move the schedule along instead of waiting for it
        with service.log.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE deliveries SET next_attempt_at = NULL")
        decision = service.deliver(envelope(url))
    assert decision.action == "done" and decision.outcome == "failed"
    record = service.log.get("d1")
    assert record is not None and record.status == "failed"
    assert [a.outcome for a in record.attempts] == ["retry", "retry", "failed"]
    assert "500" in (record.last_error or "")


def test_unknown_channel_fails_once_without_retry(service: DeliveryService) -> None:
    decision = service.deliver(envelope("https://example.com", channel="gone"))
    assert (decision.action, decision.outcome) == ("done", "failed")
    record = service.log.get("d1")
    assert record is not None and "no channel named 'gone'" in (record.last_error or "")


def test_payload_the_protocol_cannot_carry_fails_permanently(service: DeliveryService) -> None:
    service.dispatchers.channels.add("dev", "console", {})
    decision = service.deliver(
        Envelope(id="d2", channel="dev", address="x", payload=Payload(message="  "))
    )
    assert decision.outcome == "failed"
    record = service.log.get("d2")
    assert record is not None and "PayloadRejected" in (record.last_error or "")


def test_long_delays_are_left_to_the_sweep(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    # Given a channel whose next retry is further off than the broker may hold it
    service.dispatchers.channels.add(
        "slow", "webhook", {"secret": webhook_secret()}, retry_schedule=(0, 3600)
    )
    httpserver.expect_request("/h").respond_with_data("", status=503)
    url = httpserver.url_for("/h")
    decision = service.deliver(
        Envelope(id="d3", channel="slow", address=url, payload=Payload(message="m"))
    )
    # Then the task just acknowledges; the log holds the schedule
    assert decision.action == "done" and decision.outcome == "retry"
    now = utcnow()
    assert service.log.sweep(now=now, horizon=15, grace=30, resweep=60) == []
    due = service.log.sweep(
        now=now + timedelta(seconds=3600 * 1.2), horizon=15, grace=30, resweep=60
    )
    assert [e.id for e, _ in due] == ["d3"]
    # and a second pass does not enqueue it twice
    assert (
        service.log.sweep(now=now + timedelta(seconds=3600 * 1.2), horizon=15, grace=30, resweep=60)
        == []
    )


def test_a_parked_retry_is_rescued_only_when_overdue(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=503)
    service.deliver(envelope(httpserver.url_for("/h")))  # 10 s retry, parked in the broker
    now = utcnow()
    assert (
        service.log.sweep(now=now + timedelta(seconds=13), horizon=15, grace=30, resweep=30) == []
    )
    rescued = service.log.sweep(now=now + timedelta(seconds=60), horizon=15, grace=30, resweep=30)
    assert [e.id for e, _ in rescued] == ["d1"]


def test_breaker_opens_after_consecutive_failures_and_closes_on_success(
    settings: Settings, httpserver: HTTPServer
) -> None:
    tight = settings.model_copy(update={"breaker_threshold": 2, "breaker_probe_interval": 1000})
    engine = assemble(tight, channel_ttl=0)
    log, channels = engine.log, engine.channels
    channels.add("hooks", "webhook", {"secret": webhook_secret()}, retry_schedule=(0, 1, 1, 1, 1))
    service = engine.service
    httpserver.expect_request("/h").respond_with_data("", status=503)
    url = httpserver.url_for("/h")
    for i in range(2):
        service.deliver(envelope(url, delivery_id=f"f{i}"))
    assert channels.get("hooks").breaker_open_until is not None
    # While open, a delivery waits without spending an attempt or reaching the provider
    waiting = service.deliver(envelope(url, delivery_id="w1"))
    assert waiting.action == "done" and waiting.outcome is None
    record = log.get("w1")
    assert record is not None and record.status == "retrying" and record.attempt_count == 0
    assert len(httpserver.log) == 2
    assert channels.summaries()[0]["state"] == "breaker open"
    # A person resuming the channel closes it
    assert channels.set_paused("hooks", False)
    httpserver.clear()
    httpserver.expect_request("/h").respond_with_data("", status=200)
    assert service.deliver(envelope(url, delivery_id="ok")).outcome == "delivered"
    assert channels.get("hooks").breaker_open_until is None


def test_paused_channel_holds_deliveries(service: DeliveryService, httpserver: HTTPServer) -> None:
    service.dispatchers.channels.set_paused("hooks", True)
    decision = service.deliver(envelope(httpserver.url_for("/h")))
    assert decision.outcome is None
    assert httpserver.log == []
    assert service.dispatchers.channels.summaries()[0]["state"] == "paused"


def test_rate_limit_spaces_sends(settings: Settings, httpserver: HTTPServer) -> None:
    engine = assemble(settings, channel_ttl=0)
    log, channels = engine.log, engine.channels
    channels.add("hooks", "webhook", {"secret": webhook_secret()}, rate_limit="1/h")
    service = engine.service
    httpserver.expect_request("/h").respond_with_data("", status=200)
    url = httpserver.url_for("/h")
    assert service.deliver(envelope(url, delivery_id="r1")).outcome == "delivered"
    # the next slot is an hour away: the delivery waits in the log, no attempt spent
    later = service.deliver(envelope(url, delivery_id="r2"))
    assert later.outcome is None
    record = log.get("r2")
    assert record is not None and record.status == "retrying" and record.attempt_count == 0
    assert record.next_attempt_at is not None and record.next_attempt_at > utcnow() + timedelta(
        minutes=50
    )
    assert len(httpserver.log) == 1


def test_a_failed_probe_does_not_spend_the_deliverys_attempts(
    settings: Settings, httpserver: HTTPServer
) -> None:
    tight = settings.model_copy(update={"breaker_threshold": 1, "breaker_probe_interval": 1000})
    engine = assemble(tight, channel_ttl=0)
    log, channels = engine.log, engine.channels
    channels.add("hooks", "webhook", {"secret": webhook_secret()}, retry_schedule=(0, 1))
    service = engine.service
    httpserver.expect_request("/h").respond_with_data("", status=503)
    url = httpserver.url_for("/h")
    # Given a delivery whose first attempt opened the breaker
    service.deliver(envelope(url))
    with log.engine.begin() as conn:  # the probe is due, and so is the delivery
        conn.exec_driver_sql("UPDATE channels SET breaker_open_until = '2000-01-01 00:00:00'")
        conn.exec_driver_sql("UPDATE deliveries SET next_attempt_at = NULL")
    # When its second, last, attempt goes as the breaker's probe and fails
    decision = service.deliver(envelope(url))
    # Then the delivery waits for the provider rather than failing
    record = log.get("d1")
    assert record is not None and record.status == "retrying", decision
    assert [a.outcome for a in record.attempts] == ["retry", "retry"]
    assert len(httpserver.log) == 2


def test_single_deliveries_from_many_threads_are_each_sent_once(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    # Concurrent single tasks share claim transactions; copies of one message among them
    # (a redelivery racing the original) must still send once.
    httpserver.expect_request("/h").respond_with_data("", status=204)
    url = httpserver.url_for("/h")
    unique = [envelope(url, delivery_id=f"t{i}") for i in range(48)]
    work = unique + unique[:16]
    with ThreadPoolExecutor(max_workers=16) as pool:
        decisions = list(pool.map(service.deliver, work))
    sent = Counter(request.headers["webhook-id"] for request, _ in httpserver.log)
    waiting = [d for d in decisions if d.action == "requeue"]
    # A copy that found the original still sending comes back later, to find it done.
    for copy in waiting:
        assert copy.outcome is None
    assert len(httpserver.log) == 48 and set(sent.values()) == {1}
    assert service.log.count_by_status() == {"delivered": 48}
    assert sum(d.outcome == "delivered" for d in decisions) == 48


def test_a_batch_is_delivered_and_recorded_like_single_deliveries(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=204)
    url = httpserver.url_for("/h")
    batch = [envelope(url, delivery_id=f"b{i}") for i in range(5)]
    decisions = service.deliver_many([*batch, batch[0]])
    assert [(d.action, d.outcome) for d in decisions] == [("done", "delivered")] * 5 + [
        ("done", None)  # the copy of b0 in the same batch is not sent again
    ]
    assert len(httpserver.log) == 5
    assert service.log.count_by_status() == {"delivered": 5}
    record = service.log.get("b3")
    assert record is not None and [a.outcome for a in record.attempts] == ["delivered"]
    # a redelivered batch (the worker died before acknowledging it) sends nothing again
    assert {d.action for d in service.deliver_many(batch)} == {"done"}
    assert len(httpserver.log) == 5


def test_a_batch_records_its_attempts_as_they_end_a_few_at_a_time(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    from werkzeug import Request, Response

    from delivery.engine.service import RECORD_EVERY

    # The receiver notes, as each request arrives, how many of the batch the log has
    # recorded as delivered: what a crash at that moment would not send again.
    recorded_before: list[int] = []

    def respond(request: Request) -> Response:
        recorded_before.append(service.log.count_by_status().get("delivered", 0))
        return Response(status=204)

    httpserver.expect_request("/h").respond_with_handler(respond)
    url = httpserver.url_for("/h")
    batch = [envelope(url, delivery_id=f"r{i}") for i in range(7)]
    decisions = service.deliver_many(batch)
    assert [d.outcome for d in decisions] == ["delivered"] * 7
    # Before each send, those before it are in the log two at a time (RECORD_EVERY), not
    # only at the end of the batch: a crash re-sends at most the last two
    assert RECORD_EVERY == 2
    assert recorded_before == [0, 0, 2, 2, 4, 4, 6]
    assert service.log.count_by_status() == {"delivered": 7}


def test_after_a_failure_the_rest_of_the_batch_goes_one_task_each(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    # Given a provider that is down, and a second channel that is fine
    service.dispatchers.channels.add("other", "webhook", {"secret": webhook_secret()})
    httpserver.expect_request("/down").respond_with_data("", status=503)
    httpserver.expect_request("/up").respond_with_data("", status=204)
    down, up = httpserver.url_for("/down"), httpserver.url_for("/up")
    batch = [envelope(down, delivery_id=f"d{i}") for i in range(4)]
    batch.insert(2, envelope(up, delivery_id="fine", channel="other"))
    decisions = service.deliver_many(batch)
    # Then only the first delivery to the failing channel was tried; the rest were handed
    # back unspent, to be requeued at once, while the other channel went ahead
    assert [r.path for r in (req for req, _ in httpserver.log)] == ["/down", "/up"]
    assert decisions[0].action == "requeue" and decisions[0].outcome == "retry"
    assert (decisions[2].action, decisions[2].outcome) == ("done", "delivered")
    for later in (decisions[1], decisions[3], decisions[4]):
        assert (later.action, later.countdown, later.outcome) == ("requeue", 0.0, None)
    handed_back = service.log.get("d3")
    assert handed_back is not None
    assert (handed_back.status, handed_back.attempt_count, handed_back.attempts) == (
        "retrying",
        0,
        [],
    )
    # and a handed-back delivery is claimed again as its first attempt
    retried = service.deliver(envelope(down, delivery_id="d3"))
    assert retried.outcome == "retry"
    record = service.log.get("d3")
    assert record is not None and [a.number for a in record.attempts] == [1]


def test_a_batch_past_its_time_budget_hands_the_rest_back(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=204)
    url = httpserver.url_for("/h")
    service.batch_budget = 0.0
    decisions = service.deliver_many([envelope(url, delivery_id=f"t{i}") for i in range(3)])
    # the first is always sent, so a batch makes progress however slow its provider
    assert [d.outcome for d in decisions] == ["delivered", None, None]
    assert [d.action for d in decisions[1:]] == ["requeue", "requeue"]
    assert len(httpserver.log) == 1


def test_a_batch_looks_up_suppressions_once_and_fails_only_the_suppressed(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=204)
    url = httpserver.url_for("/h")
    stopped = httpserver.url_for("/stopped")
    service.suppressions.add("hooks", stopped, "opt-out")
    # The address as given is compared in the dispatcher's canonical form (stripped).
    batch = [envelope(url, "s0"), envelope(f"  {stopped} ", "s1"), envelope(url, "s2")]
    decisions = service.deliver_many(batch)
    assert [d.outcome for d in decisions] == ["delivered", "failed", "delivered"]
    assert decisions[1].error is not None and "suppression list" in decisions[1].error
    assert [request.path for request, _ in httpserver.log] == ["/h", "/h"]
    assert service.suppressions.among([("hooks", stopped), ("hooks", url)]) == {
        ("hooks", stopped): "opt-out",
        ("hooks", url): None,
    }


@pytest.mark.parametrize("status", ["confirmed", "bounced", "skipped"])
def test_a_copy_of_a_final_delivery_is_done_not_put_back(
    service: DeliveryService, httpserver: HTTPServer, status: str
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=202)
    assert service.deliver(envelope(httpserver.url_for("/h"))).outcome == "delivered"
    with service.log.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE deliveries SET status = ?", (status,))
    # Before, a receipt's status was not final: the copy came back every second, for ever
    assert service.deliver(envelope(httpserver.url_for("/h"))).action == "done"
    assert len(httpserver.log) == 1
