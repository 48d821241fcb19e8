"""OpenTelemetry's SDK set up for one test: spans kept in memory, then forgotten."""

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


def _set_global(provider: TracerProvider | None) -> None:
    # OpenTelemetry lets a process set its tracer provider once; its own tests reset it so.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)


@contextmanager
def recording_spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider records into the exporter yielded, until the end."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _set_global(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _set_global(None)


def span_named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    """The one span called ``name``."""
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def ids(traceparent: str) -> tuple[int, int]:
    """The trace id and the parent span id a traceparent names."""
    _, trace_id, span_id, _ = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)
