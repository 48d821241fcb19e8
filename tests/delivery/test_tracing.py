"""Tracing: a ``traceparent`` from the caller's span travels in the task message, the
worker's ``delivery.attempt`` span continues it and the webhook's request carries it on.
A malformed one is ignored wherever it comes from; without OpenTelemetry nothing changes."""

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pytest_httpserver import HTTPServer

import delivery
from delivery import tracing
from delivery.engine.assembly import assemble
from delivery.engine.service import DeliveryService
from delivery.notifications import Notifier
from delivery.producer.publisher import get_publisher
from schemas import Envelope, Payload, Settings
from schemas.events import Event
from schemas.tracing import valid_traceparent
from tests.api.conftest import drain
from tests.conftest import webhook_secret
from tests.support.tracing import ids, recording_spans, span_named

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording_spans() as exporter:
        yield exporter


@pytest.fixture
def service(settings: Settings) -> DeliveryService:
    engine = assemble(settings, channel_ttl=0)
    engine.channels.add("hooks", "webhook", {"secret": webhook_secret()}, retry_schedule=(0, 10))
    return engine.service


def envelope(url: str, delivery_id: str = "d1", **fields: Any) -> Envelope:
    return Envelope.model_validate(
        {"id": delivery_id, "channel": "hooks", "address": url, "payload": {"message": "m"}}
        | fields
    )


@pytest.mark.parametrize(
    "value",
    [
        VALID.upper(),  # the recommendation's hex is lower case
        "01" + VALID[2:],  # a version this does not know
        VALID + "-00",
        VALID[:-1],
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # no trace
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # no parent span
        " " + VALID,
        VALID + "\n",
        "",
        12,
        None,
        ["00"],
    ],
)
def test_a_malformed_traceparent_reads_as_none(value: Any) -> None:
    assert valid_traceparent(value) is None
    assert envelope("https://example.com/h", traceparent=value).traceparent is None


def test_a_valid_traceparent_is_kept() -> None:
    assert envelope("https://example.com/h", traceparent=VALID).traceparent == VALID


def _mutated(base: str) -> st.SearchStrategy[str]:
    """``base`` with characters replaced, dropped or added."""
    edits = st.lists(
        st.tuples(
            st.integers(0, len(base)),
            st.sampled_from(["replace", "drop", "add"]),
            st.text(max_size=2),
        ),
        min_size=1,
        max_size=4,
    )

    def apply(changes: list[tuple[int, str, str]]) -> str:
        text = base
        for place, how, chars in changes:
            place = min(place, len(text))
            if how == "replace":
                text = text[:place] + chars + text[place + 1 :]
            elif how == "drop":
                text = text[:place] + text[place + 1 :]
            else:
                text = text[:place] + chars + text[place:]
        return text

    return edits.map(apply)


_anything = st.one_of(
    _mutated(VALID),
    st.text(max_size=80),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=2),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


@hypothesis_settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=_anything)
def test_a_mutated_traceparent_never_fails_a_task_message(
    spans: InMemorySpanExporter, value: Any
) -> None:
    # The envelope still validates; the traceparent is kept only if it is still a valid one.
    kept = envelope("https://example.com/h", traceparent=value).traceparent
    assert kept is None or (kept == value and valid_traceparent(value) == value)
    # And the worker's span starts whatever it was given: a trace of its own if invalid.
    with tracing.attempt_span(delivery_id="d", channel="c", attempt=1, traceparent=kept):
        inside = tracing.current_traceparent()
    assert inside is not None
    if kept is not None:
        assert ids(inside)[0] == ids(kept)[0]


@hypothesis_settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.one_of(_mutated(VALID), st.text(max_size=80)), state=st.text(max_size=40))
def test_mutated_request_headers_never_fail_the_request_span(
    spans: InMemorySpanExporter, value: str, state: str
) -> None:
    with tracing.request_span("POST", {"traceparent": value, "tracestate": state}) as span:
        inside = tracing.current_traceparent()
        span.finish(route="/v1/deliveries", status=202)
    assert inside is not None
    if valid_traceparent(value) is None:
        assert not trace.get_current_span().get_span_context().is_valid


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=_anything, number=st.integers(0, 10**9))
def test_a_worker_delivers_whatever_traceparent_came(
    service: DeliveryService,
    httpserver: HTTPServer,
    spans: InMemorySpanExporter,
    value: Any,
    number: int,
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=202)
    decision = service.deliver(envelope(httpserver.url_for("/h"), f"m-{number}", traceparent=value))
    assert decision.outcome in ("delivered", None)  # None: the same id drawn twice, skipped
    request, _ = httpserver.log[-1]
    assert valid_traceparent(request.headers.get("traceparent")) is not None


def test_send_inside_a_span_carries_its_context(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("checkout") as span:
        delivery.send("hooks", "https://example.com/h", Payload(message="m"))
    [message] = drain()
    sent = Envelope.model_validate(message["args"][0])
    assert sent.traceparent is not None
    context = span.get_span_context()
    assert ids(sent.traceparent) == (context.trace_id, context.span_id)


def test_the_attempt_span_continues_the_trace_to_the_receiver(
    service: DeliveryService, httpserver: HTTPServer, spans: InMemorySpanExporter
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=202)
    assert (
        service.deliver(envelope(httpserver.url_for("/h"), traceparent=VALID)).outcome
        == "delivered"
    )
    attempt = span_named(spans.get_finished_spans(), "delivery.attempt")
    assert attempt.kind is SpanKind.CONSUMER
    assert attempt.parent is not None and attempt.parent.is_remote
    assert (attempt.parent.trace_id, attempt.parent.span_id) == ids(VALID)
    assert dict(attempt.attributes or {}) == {
        "delivery.id": "d1",
        "delivery.channel": "hooks",
        "delivery.attempt": 1,
        "delivery.outcome": "delivered",
    }
    request, _ = httpserver.log[0]
    assert ids(request.headers["traceparent"]) == (
        attempt.context.trace_id,
        attempt.context.span_id,
    )


def test_a_failed_attempt_names_the_error_class_not_its_text(
    service: DeliveryService, httpserver: HTTPServer, spans: InMemorySpanExporter
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=503)
    url = httpserver.url_for("/h")
    service.deliver(envelope(url, traceparent=VALID))
    attempt = span_named(spans.get_finished_spans(), "delivery.attempt")
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.attributes is not None
    assert attempt.attributes["delivery.outcome"] == "retryable"
    assert attempt.attributes["error.type"] == "RetryableError"
    shown = repr(dict(attempt.attributes)) + repr(attempt.status.description) + repr(attempt.events)
    assert url not in shown and "127.0.0.1" not in shown and "503" not in shown


def test_without_a_configured_sdk_nothing_is_added(
    settings: Settings, service: DeliveryService, httpserver: HTTPServer
) -> None:
    # OpenTelemetry's API alone (FastAPI brings it) records nothing and propagates nothing.
    delivery.send("hooks", httpserver.url_for("/h"), Payload(message="m"))
    [message] = drain()
    assert "traceparent" not in message["args"][0] or message["args"][0]["traceparent"] is None
    httpserver.expect_request("/h").respond_with_data("", status=202)
    assert service.deliver(Envelope.model_validate(message["args"][0])).outcome == "delivered"
    request, _ = httpserver.log[0]
    assert "traceparent" not in request.headers


def test_without_opentelemetry_installed_every_function_does_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As after `pip install delivery` without [tracing]: the import finds nothing.
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    try:
        bare = importlib.reload(tracing)
        assert not bare.ENABLED
        assert bare.current_traceparent() is None
        with bare.attempt_span(delivery_id="d", channel="c", attempt=1, traceparent=VALID):
            assert bare.current_traceparent() is None
        with bare.request_span("POST", {"traceparent": VALID}) as span:
            span.finish(route="/v1/deliveries", status=202)
    finally:
        monkeypatch.undo()
        importlib.reload(tracing)
    assert tracing.ENABLED


def test_notify_inside_a_span_reaches_each_delivery_it_makes(
    service: DeliveryService, spans: InMemorySpanExporter
) -> None:
    notifier = Notifier(service.log)
    notifier.subscriptions.add("order.shipped", "hooks", "https://example.com/h")
    with trace.get_tracer("tests").start_as_current_span("checkout") as span:
        delivery.notify("order.shipped", {"order": 42})
    [published] = drain()
    event = Event.model_validate(published["args"][0])
    context = span.get_span_context()
    assert event.traceparent is not None
    assert ids(event.traceparent) == (context.trace_id, context.span_id)
    notifier.fan_out(event, get_publisher())
    [fanned] = drain()
    assert fanned["args"][0]["traceparent"] == event.traceparent
