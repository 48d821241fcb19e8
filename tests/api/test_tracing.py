"""One trace from ``POST /v1/deliveries`` to the webhook's receiver: the caller's span, the
API's server span, the worker's attempt, the receiver's ``traceparent`` header."""

import re
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pytest_httpserver import HTTPServer

from delivery.engine.assembly import Assembly, assemble
from schemas import Envelope, Settings
from schemas.tracing import valid_traceparent
from tests.api.conftest import Api, drain, message
from tests.conftest import webhook_secret
from tests.support.tracing import ids, recording_spans, span_named


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording_spans() as exporter:
        yield exporter


@pytest.fixture
def worker(settings: Settings) -> Assembly:
    """A worker's engine, and the webhook channel the messages name."""
    engine = assemble(settings, channel_ttl=0)
    engine.channels.add("hooks", "webhook", {"secret": webhook_secret()}, replace=True)
    return engine


def descends(span: ReadableSpan, ancestor: ReadableSpan, spans: Sequence[ReadableSpan]) -> bool:
    """Whether ``span`` is ``ancestor``'s child, or a child's child… (FastAPI's own
    instrumentation puts spans of its own between the request's and the endpoint's)."""
    by_id = {s.context.span_id: s for s in spans}
    parent = span.parent
    while parent is not None:
        if parent.span_id == ancestor.context.span_id:
            return True
        above = by_id.get(parent.span_id)
        parent = above.parent if above is not None else None
    return False


@pytest.mark.parametrize("server_spans", ["fastapi", "ours"])
def test_one_trace_from_the_request_to_the_receiver(
    api: Api,
    worker: Assembly,
    httpserver: HTTPServer,
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    server_spans: str,
) -> None:
    if server_spans == "ours" and hasattr(api.app, "_telemetry"):
        # FastAPI 0.16x traces requests itself (and our middleware stands aside): without
        # it, as before 0.16x, our middleware continues the caller's trace.
        monkeypatch.setitem(api.app._telemetry, "tracing", False)
    # Given a webhook channel, a receiver, and a caller inside a span of its own
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    with trace.get_tracer("tests").start_as_current_span("checkout", kind=SpanKind.CLIENT):
        headers: dict[str, str] = {}
        propagate.inject(headers)
    # When it asks the API for a delivery, and a worker delivers the task message
    response = api.post(
        "/v1/deliveries", json=message(address=httpserver.url_for("/hook")), headers=headers
    )
    assert response.status_code == 202, response.text
    [task] = drain()
    sent = Envelope.model_validate(task["args"][0])
    assert worker.service.deliver(sent).outcome == "delivered"
    # Then the caller, the API, the attempt and the receiver's request are one trace
    finished = spans.get_finished_spans()
    caller = span_named(finished, "checkout")
    server = span_named(finished, "POST /v1/deliveries")
    attempt = span_named(finished, "delivery.attempt")
    trace_id = caller.context.trace_id
    assert {s.context.trace_id for s in finished} == {trace_id}
    if server_spans == "ours":
        assert not [s.name for s in finished if s.name.startswith("fastapi.")]
    assert server.kind is SpanKind.SERVER and server.parent is not None
    assert server.parent.span_id == caller.context.span_id
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 202
    assert sent.traceparent is not None and ids(sent.traceparent)[0] == trace_id
    assert descends(attempt, server, finished)
    request, _ = httpserver.log[0]
    assert ids(request.headers["traceparent"]) == (trace_id, attempt.context.span_id)


def test_each_delivery_of_a_batch_carries_the_request_trace(
    api: Api, worker: Assembly, spans: InMemorySpanExporter
) -> None:
    response = api.post(
        "/v1/deliveries/batch",
        json={"messages": [message(i) for i in range(3)]},
        headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 202, response.text
    bodies = [task["args"][0] for task in drain()]
    envelopes = [e for body in bodies for e in (body if isinstance(body, list) else [body])]
    assert len(envelopes) == 3
    server = span_named(spans.get_finished_spans(), "POST /v1/deliveries/batch")
    assert server.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    [carried] = {e["traceparent"] for e in envelopes}  # the same span published them all
    assert ids(carried)[0] == server.context.trace_id


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    value=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=70).map(
        lambda s: s.strip()
    )
    | st.sampled_from(
        ["00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff-" + "a" * 32 + "-" + "b" * 16 + "-01"]
    )
)
def test_a_malformed_traceparent_header_is_ignored(
    api: Api, worker: Assembly, spans: InMemorySpanExporter, value: str
) -> None:
    response = api.post("/v1/deliveries", json=message(), headers={"traceparent": value})
    assert response.status_code == 202, response.text
    [task] = drain()
    carried = task["args"][0]["traceparent"]
    # Always the API's own span; the caller's trace only if its header was a valid one.
    assert valid_traceparent(carried) == carried
    if carried[3:35] == value[3:35]:
        # The caller's trace was continued: its header named one.
        assert re.fullmatch("[0-9a-f]{32}", value[3:35]) and int(value[3:35], 16)
        assert value[:2] != "ff"


def test_an_event_carries_the_request_trace(api: Api, spans: InMemorySpanExporter) -> None:
    response = api.post(
        "/v1/events",
        json={"event": "order.shipped", "context": {"order": 42}},
        headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 202, response.text
    [task] = drain()
    carried = task["args"][0]["traceparent"]
    assert ids(carried)[0] == 0x4BF92F3577B34DA6A3CE929D0E0E4736
