"""Which task messages the worker coalesces, and that anything unusual, however close to a
plain delivery, goes Celery's own way instead (where it is retried, revoked or recorded as
malformed as before). The coalesced path itself runs in a real worker: see
tests/integration/test_coalesce.py."""

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
from celery.utils.collections import LimitedSet
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kombu.connection import Connection

from delivery.producer.celery_config import DELIVER_TASK, PUBLISHED_AT_HEADER
from schemas import Settings
from workers.coalesce import ALONE_HEADER, Coalescer
from workers.tasks import LATEST_PUBLISH_TIME

ENVELOPE = {
    "id": "d-1",
    "channel": "hooks",
    "address": "https://example.com/hook",
    "payload": {"message": "hello"},
}


@pytest.fixture
def coalescer(settings: Settings) -> Coalescer:
    from workers.tasks import deliver

    revoked = LimitedSet()
    revoked.add("revoked-id")
    consumer = SimpleNamespace(
        pool=SimpleNamespace(limit=4),
        controller=SimpleNamespace(state=SimpleNamespace(revoked=revoked)),
    )
    return Coalescer(deliver, consumer, limit=25)


def message(*, args: Any = None, kwargs: Any = None, embed: Any = None, **headers: Any) -> Any:
    """A task message as the producer publishes it, read back from a broker."""
    from workers.app import app

    task_message = app.amqp.create_task_message(
        "task-1", DELIVER_TASK, [ENVELOPE] if args is None else args, kwargs or {}
    )
    body = list(task_message.body)
    if embed is not None:
        body[2] = embed
    merged = {**task_message.headers, **headers}
    with Connection("memory://") as connection:
        queue = connection.SimpleQueue("coalesce-test")
        queue.put(body, headers=merged, serializer="json")
        received = queue.get(timeout=1)
        queue.close()
    return received


def test_a_plain_delivery_is_taken_over(coalescer: Coalescer) -> None:
    pending = coalescer.take_over(message(), ack=lambda *_: None)
    assert pending is not None
    assert pending.envelope.id == "d-1" and pending.task_id == "task-1"
    assert pending.retries == 0


def test_the_envelope_may_come_by_keyword(coalescer: Coalescer) -> None:
    pending = coalescer.take_over(message(args=[], kwargs={"envelope": ENVELOPE}), ack=print)
    assert pending is not None and pending.envelope.channel == "hooks"


@pytest.mark.parametrize(
    "changes",
    [
        {"eta": "2026-12-03T10:00:00+00:00"},
        {"expires": "2026-12-03T10:00:00+00:00"},
        {ALONE_HEADER: True},
        {"timelimit": [5, None]},
        {"timelimit": 5},
        {"id": "revoked-id"},
        {"id": 12},
        {"retries": "1"},
        {"retries": -1},
        {"retries": True},
        {"retries": 1.5},
        {"task": "delivery.deliver_batch"},
        {"args": [ENVELOPE, "extra"]},
        {"args": ["not an envelope"]},
        {"args": [{**ENVELOPE, "address": "https://exa\x00mple.com/"}]},
        {"args": [{**ENVELOPE, "payload": {"message": "x", "data": {"n": float("nan")}}}]},
        {"args": [{k: v for k, v in ENVELOPE.items() if k != "payload"}]},
        {"args": [], "kwargs": {"envelope": ENVELOPE, "other": 1}},
        {"args": [], "kwargs": {"self": ENVELOPE}},
        {"embed": {"callbacks": [{"task": "x"}]}},
        {"embed": {"chain": [{"task": "x"}]}},
        {"embed": "not a dict"},
    ],
)
def test_anything_unusual_goes_celerys_way(coalescer: Coalescer, changes: dict[str, Any]) -> None:
    options = {k: changes.pop(k) for k in ("args", "kwargs", "embed") if k in changes}
    assert coalescer.take_over(message(**options, **changes), ack=print) is None


def test_a_body_that_is_not_a_task_body_goes_celerys_way(coalescer: Coalescer) -> None:
    from workers.app import app

    headers = app.amqp.create_task_message("task-2", DELIVER_TASK, [ENVELOPE], {}).headers
    for body in ({"args": [ENVELOPE]}, [[ENVELOPE], {}], "text", 7):
        with Connection("memory://") as connection:
            queue = connection.SimpleQueue("coalesce-odd")
            queue.put(body, headers=headers, serializer="json")
            received = queue.get(timeout=1)
            queue.close()
        assert coalescer.take_over(received, ack=print) is None


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.sampled_from(
        ["id", "task", "retries", "eta", "expires", "timelimit", "argsrepr", PUBLISHED_AT_HEADER]
    ),
    value=_values,
    field=st.sampled_from(["id", "channel", "address", "payload", "attempt_base", "extra"]),
    field_value=_values,
)
def test_mutated_messages_never_break_the_consumer(
    coalescer: Coalescer, header: str, value: Any, field: str, field_value: Any
) -> None:
    # Whatever the mutation, the consumer's thread gets an answer, never an exception; and
    # what it takes over is a valid delivery with a string id.
    for candidate in (
        message(**{header: value}),
        message(args=[{**ENVELOPE, field: field_value}]),
    ):
        pending = coalescer.take_over(candidate, ack=print)
        if pending is not None:
            assert isinstance(pending.task_id, str) and pending.envelope.id
            # a publish time is a time, or none (as from an older producer)
            published = pending.published_at
            assert published is None or 0 <= published <= LATEST_PUBLISH_TIME


def _buffered(coalescer: Coalescer, count: int) -> None:
    for n in range(count):
        pending = coalescer.take_over(message(args=[{**ENVELOPE, "id": f"d-{n}"}]), ack=print)
        assert pending is not None
        coalescer._buffer.append(pending)
    coalescer._draining = 1  # the thread that takes its share


def test_threads_split_the_buffer_evenly_while_they_wait_on_providers(
    coalescer: Coalescer,
) -> None:
    _buffered(coalescer, 10)
    # Half a second in which the process used almost no CPU: sends are waiting.
    coalescer._sampled_at -= 1.0
    assert [p.envelope.id for p in coalescer._share()] == ["d-0", "d-1", "d-2"]  # 10 / 4
    assert not coalescer._busy


def test_a_cpu_bound_process_takes_bigger_shares_with_fewer_threads(
    coalescer: Coalescer,
) -> None:
    import time

    from workers.coalesce import BUSY_DRAINERS, BUSY_SHARE

    _buffered(coalescer, 10)
    # The last half second cost as much CPU as it lasted: threads only wait for the GIL.
    coalescer._sampled_at = time.monotonic() - 0.5
    coalescer._cpu_at = time.process_time() - 0.5
    assert len(coalescer._share()) == BUSY_SHARE
    assert coalescer._busy and coalescer.busy_drainers == min(BUSY_DRAINERS, 4)  # of 4 threads
    assert len(coalescer._share()) == 2  # what is left
    assert coalescer._share() == [] and coalescer._draining == 0


def test_a_cpu_bound_process_reserves_more_beyond_the_prefetch(settings: Settings) -> None:
    from workers.coalesce import BUSY_CREDIT_PER_THREAD, CREDIT_PER_THREAD
    from workers.tasks import deliver

    raised: list[int] = []
    consumer = SimpleNamespace(
        pool=SimpleNamespace(limit=4, apply_async=lambda *_, **__: None),
        controller=SimpleNamespace(state=SimpleNamespace(revoked=LimitedSet())),
        qos=SimpleNamespace(increment_eventually=lambda: raised.append(1)),
        event_dispatcher=None,
    )
    coalescer = Coalescer(deliver, consumer, limit=25)
    pending = coalescer.take_over(message(), ack=print)
    assert pending is not None

    def buffer(count: int) -> None:
        for _ in range(count):
            coalescer.add(dataclasses.replace(pending, credit=None))

    # While threads wait on providers, the prefetch is raised by a few per thread at most
    buffer(100)
    assert len(raised) == 4 * CREDIT_PER_THREAD
    # and while the process is CPU-bound (batches drain fast), by more
    coalescer._busy = True
    buffer(100)
    assert len(raised) == 4 * BUSY_CREDIT_PER_THREAD > 4 * CREDIT_PER_THREAD


def _delivering_coalescer() -> Coalescer:
    """A coalescer whose batches the test delivers itself (``_deliver``), with no events."""
    from workers import tasks

    consumer = SimpleNamespace(
        pool=SimpleNamespace(limit=4),
        controller=SimpleNamespace(state=SimpleNamespace(revoked=LimitedSet())),
        event_dispatcher=None,
        connection_errors=(),
    )
    return Coalescer(tasks.deliver, consumer, limit=25)


def test_a_coalesced_delivery_failed_for_good_is_one_warning(
    settings: Settings, httpserver, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.conftest import webhook_secret
    from workers import tasks

    # Given a webhook receiver that refuses everything, behind a token in its path
    tasks.close_service()
    tasks.get_assembly().channels.add("hooks", "webhook", {"secret": webhook_secret()})
    httpserver.expect_request("/hook/T0KEN-abc123").respond_with_data("no", status=400)
    address = httpserver.url_for("/hook/T0KEN-abc123")
    acked: list[object] = []
    coalescer = _delivering_coalescer()
    pending = [
        coalescer.take_over(
            message(args=[{**ENVELOPE, "id": f"c-{n}", "address": address}]),
            ack=lambda *_: acked.append(1),
        )
        for n in range(2)
    ]
    caplog.set_level(logging.INFO)
    try:
        # When the coalescer delivers them as one batch
        coalescer._deliver([p for p in pending if p is not None])
    finally:
        tasks.close_service()
    # Then each is one WARNING: its id and masked address, not the message or the token
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(line.split()[1] for line in lines) == ["c-0", "c-1"], lines
    assert all("address http://localhost/***" in line for line in lines)
    assert all("hello" not in line and "T0KEN" not in line for line in lines)
    assert len(acked) == 2


def test_a_coalesced_task_shows_in_celerys_signals_and_worker_state(
    settings: Settings, httpserver: Any
) -> None:
    from celery.signals import task_postrun, task_prerun
    from celery.worker import state as worker_state

    from tests.conftest import webhook_secret
    from workers import tasks

    tasks.close_service()
    tasks.get_assembly().channels.add("hooks", "webhook", {"secret": webhook_secret()})
    httpserver.expect_request("/ok").respond_with_data("", status=202)
    httpserver.expect_request("/no").respond_with_data("", status=400)
    coalescer = _delivering_coalescer()
    pending = [
        coalescer.take_over(
            message(
                args=[{**ENVELOPE, "id": f"s-{path}", "address": httpserver.url_for(path)}],
                id=f"task-{path}",
                argsrepr="(masked)",
            ),
            ack=lambda *_: None,
        )
        for path in ("/ok", "/no")
    ]
    seen: list[tuple[str, str, object]] = []

    def started(task_id: str, **_: Any) -> None:
        # While it runs, `celery inspect active` lists it, with the masked arguments
        active = {r.id: r.info() for r in worker_state.active_requests}
        seen.append(("prerun", task_id, active[task_id]["args"]))

    def ended(task_id: str, state: str, **_: Any) -> None:
        seen.append(("postrun", task_id, state))

    task_prerun.connect(started, weak=False)
    task_postrun.connect(ended, weak=False)
    try:
        coalescer._deliver([p for p in pending if p is not None])
    finally:
        task_prerun.disconnect(started)
        task_postrun.disconnect(ended)
        tasks.close_service()
    assert sorted(seen, key=str) == sorted(
        [
            ("prerun", "task-/ok", "(masked)"),
            ("prerun", "task-/no", "(masked)"),
            ("postrun", "task-/ok", "SUCCESS"),
            ("postrun", "task-/no", "FAILURE"),
        ],
        key=str,
    )
    assert not {r.id for r in worker_state.active_requests} & {"task-/ok", "task-/no"}


def test_a_coalesced_delivery_keeps_its_traceparent(coalescer: Coalescer) -> None:
    # The trace travels in the envelope, so the coalesced path sends within it too.
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    pending = coalescer.take_over(
        message(args=[{**ENVELOPE, "traceparent": traceparent}]), ack=print
    )
    assert pending is not None and pending.envelope.traceparent == traceparent


@pytest.mark.parametrize("traceparent", ["00-zz", "", 42, ["00"], "00-" + "0" * 52])
def test_a_malformed_traceparent_is_coalesced_without_it(
    coalescer: Coalescer, traceparent: Any
) -> None:
    pending = coalescer.take_over(
        message(args=[{**ENVELOPE, "traceparent": traceparent}]), ack=print
    )
    assert pending is not None and pending.envelope.traceparent is None


def test_no_prefetch_restore_runs_from_a_pool_thread(settings: Settings) -> None:
    # Coalesced tasks are in Celery's worker state while they run, so after a broker
    # restart Celery would lower the prefetch and raise it again from each acknowledgement:
    # a blocking basic.qos from the pool thread that acknowledges (a worker wedged in CI's
    # RabbitMQ restart test). The coalescer sizes what it reserves itself.
    from delivery.producer.celery_config import celery_config
    from workers.app import app

    assert celery_config(settings)["worker_enable_prefetch_count_reduction"] is False
    assert app.conf.worker_enable_prefetch_count_reduction is False


def test_a_hand_back_shows_as_not_attempted_and_is_not_counted_as_a_retry(
    settings: Settings, httpserver: Any
) -> None:
    # Flower showed a send_many delivery as "retried: waiting; next attempt in 0.0s" when
    # its batch handed it back unsent; its only attempt, later, succeeded.
    from celery.signals import before_task_publish

    from tests.conftest import webhook_secret
    from workers import tasks

    # Given a batch whose first delivery fails on a channel the second one shares
    tasks.close_service()
    tasks.get_assembly().channels.add("hooks", "webhook", {"secret": webhook_secret()})
    httpserver.expect_request("/down").respond_with_data("", status=503)
    httpserver.expect_request("/up").respond_with_data("", status=202)
    events: list[tuple[str, str, str]] = []
    coalescer = _delivering_coalescer()
    coalescer.consumer.event_dispatcher = SimpleNamespace(
        enabled=True,
        send=lambda kind, uuid, **fields: events.append((kind, uuid, fields.get("exception", ""))),
    )
    pending = [
        coalescer.take_over(
            message(
                args=[{**ENVELOPE, "id": f"h-{path}", "address": httpserver.url_for(path)}],
                id=f"task-{path}",
            ),
            ack=lambda *_: None,
        )
        for path in ("/down", "/up")
    ]
    published: dict[str, int] = {}

    def publishing(headers: dict[str, Any], **_: Any) -> None:
        published[headers["id"]] = headers["retries"]

    # When the coalescer delivers them
    before_task_publish.connect(publishing, weak=False)
    try:
        coalescer._deliver([p for p in pending if p is not None])
    finally:
        before_task_publish.disconnect(publishing)
        tasks.close_service()
    # Then the second was handed back unsent, and says so; only the first is a retry
    retried = {uuid: shown for kind, uuid, shown in events if kind == "task-retried"}
    assert "not attempted yet, handed back" in retried["task-/up"]
    assert "not attempted" not in retried["task-/down"]
    sent = [request.path for request, _ in httpserver.log]
    assert sent == ["/down"]
    assert published == {"task-/down": 1, "task-/up": 0}
