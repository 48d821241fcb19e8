"""Tracing with OpenTelemetry, where it is installed (``pip install 'delivery[tracing]'``).

The one module that imports OpenTelemetry; the rest of delivery calls the functions here,
which do nothing without it (and record nothing until the application configures an SDK
tracer provider, as with any library instrumented with OpenTelemetry's API).

One delivery, one trace (docs/tracing.md):

* the caller's span: ``delivery.send`` inside an active span, or the ``traceparent``
  header of a request to ``delivery serve`` (``request_span``), whose ``POST /v1/…``
  span is then the active one;
* the task message's ``traceparent`` (``current_traceparent``, in ``Envelope``);
* a ``delivery.attempt`` span on the worker around each send (``attempt_span``);
* the ``traceparent`` header of the webhook's request, naming that span.

Only W3C ``traceparent`` travels on to the worker and out to receivers: never baggage,
which may hold anything the caller put there, and no ``tracestate``.
"""

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from delivery.errors import PermanentError, RetryableError
from schemas.tracing import valid_traceparent

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    #: Whether OpenTelemetry's API is installed.
    ENABLED = True
    _W3C = TraceContextTextMapPropagator()
except ImportError:  # the extra is not installed: every function here does nothing
    ENABLED = False

#: The instrumentation scope of delivery's spans.
TRACER_NAME = "delivery"


def _recording() -> bool:
    """Whether the application has configured a tracer provider (an SDK): until it does,
    OpenTelemetry's API only hands out spans that record nothing."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the span active here, or None: no span (or none that
    an SDK records), or no OpenTelemetry."""
    if not ENABLED or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return valid_traceparent(carrier.get("traceparent"))


@contextlib.contextmanager
def attempt_span(
    *, delivery_id: str, channel: str, attempt: int, traceparent: str | None
) -> Iterator[None]:
    """A ``delivery.attempt`` span around one send, the child of the span that published
    the delivery (``traceparent``; without one, of whatever span is active, or a trace of
    its own). Its attributes name the delivery, its channel, the attempt and the outcome:
    ``delivered``, ``retryable``, ``failed`` or ``error``, and the error's class. Never
    the address, the message or an error's text, which may quote either.
    """
    if not ENABLED or (traceparent is None and not _recording()):
        # Nothing to record and no caller's trace to carry on: a span would cost a
        # tenth of a millisecond a send for nothing (bench section 1).
        yield
        return
    parent = _W3C.extract({"traceparent": traceparent}) if traceparent else None
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        "delivery.attempt",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "delivery.id": delivery_id,
            "delivery.channel": channel,
            "delivery.attempt": attempt,
        },
        # An exception's message may quote the address: the class alone is recorded.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except BaseException as exc:
            span.set_attribute("delivery.outcome", _outcome(exc))
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise
        span.set_attribute("delivery.outcome", "delivered")


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, RetryableError):
        return "retryable"
    if isinstance(exc, PermanentError):
        return "failed"
    return "error"


class RequestSpan:
    """The span of one HTTP request, told its route and status once they are known."""

    def __init__(self, span: Any, method: str) -> None:
        self._span = span
        self._method = method

    def finish(self, *, route: str | None, status: int) -> None:
        """Name the span after the route's template (``POST /v1/deliveries``), never
        the raw path, whose ids would make every span name different."""
        if self._span is None:
            return
        if route:
            self._span.update_name(f"{self._method} {route}")
            self._span.set_attribute("http.route", route)
        self._span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self._span.set_status(trace.Status(trace.StatusCode.ERROR))


@contextlib.contextmanager
def request_span(method: str, headers: Mapping[str, str]) -> Iterator[RequestSpan]:
    """A server span for an HTTP request, continuing the caller's trace from its headers
    (with the propagators the deployment configured: W3C Trace Context by default). A
    malformed ``traceparent`` is ignored: the span starts a trace of its own."""
    if not ENABLED or trace.get_current_span().get_span_context().is_valid:
        # Without OpenTelemetry, nothing; and where an outer instrumentation (recent
        # FastAPI's own, OpenTelemetry's ASGI middleware) has already continued the
        # caller's trace, its span is the request's.
        yield RequestSpan(None, method)
        return
    parent = propagate.extract(headers)
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        method,
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method},
    ) as span:
        yield RequestSpan(span, method)
