"""``GET /metrics``: the Prometheus text format.

The delivery figures are read at scrape time from where they are true for the whole
deployment: the log and the broker (queue depth). So they are right however many worker
processes run on however many machines, whichever API process answers, and survive
restarts; no worker needs a metrics port or prometheus-client's multi-process files.

What has happened (deliveries ended, attempts and their durations) comes from the log's
counts (``delivery.log.counts``), kept by the transactions that record the work: a
scrape sums a small table, as cheap on a log of 10 million deliveries as on one of 1,000,
and purging old deliveries takes nothing off a ``_total``. What is waiting (deliveries
not yet in a final status, the oldest of them, each channel's breaker) is counted from
the log through indexes on the status, which lead straight to the few such rows.

The API's own request counts and latencies are per process (ordinary counters and a
histogram). ``delivery serve --workers N`` sets ``PROMETHEUS_MULTIPROC_DIR`` so that the
processes behind one port add up (prometheus-client's multi-process mode).
"""

import collections
import logging
import os
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delivery.api.broker import BrokerProbe
from delivery.clock import utcnow
from delivery.log.counts import DURATION_BUCKETS, UNKNOWN_CHANNEL, Totals, totals
from delivery.log.tables import FINAL_STATUSES, ChannelRow, DeliveryRow, Status

logger = logging.getLogger(__name__)

#: Request latency buckets of the API itself, seconds.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: Deliveries not yet sent, waiting for a worker or for their next attempt.
WAITING = (Status.QUEUED, Status.RETRYING, Status.SCHEDULED)
#: Statuses a delivery has not ended in: the few rows the log holds at any time.
NOT_ENDED = tuple(sorted(status for status in Status if status not in FINAL_STATUSES))

# Through (status, created_at): only the rows of deliveries not yet ended are read.
_NOT_ENDED = (
    select(DeliveryRow.channel, DeliveryRow.status, func.count())
    .where(DeliveryRow.status.in_(NOT_ENDED))
    .group_by(DeliveryRow.channel, DeliveryRow.status)
)
# One index step per status (ix_deliveries_status_created), rather than a grouped scan.
_OLDEST_WAITING = select(
    *(
        select(func.min(DeliveryRow.created_at))
        .where(DeliveryRow.status == status)
        .scalar_subquery()
        for status in WAITING
    )
)
_CHANNELS = select(
    ChannelRow.name,
    ChannelRow.paused,
    ChannelRow.consecutive_failures,
    ChannelRow.breaker_open_until,
)


class DeliveryCollector(Collector):
    """The deployment's figures, read from the log and the broker at each scrape."""

    def __init__(self, engine: Engine, broker: BrokerProbe) -> None:
        self.engine = engine
        self.broker = broker

    def collect(self) -> Iterable[Metric]:
        yield from self._from_log()
        yield from self._from_broker()

    def _from_log(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("delivery_log_up", "Whether the delivery log answered.")
        try:
            with self.engine.connect() as connection:
                channels = connection.execute(_CHANNELS).all()
                known = {str(row[0]) for row in channels}
                by_status = connection.execute(_NOT_ENDED).all()
                counted = totals(connection, channels=known)
                oldest = connection.execute(_OLDEST_WAITING).one()
        except SQLAlchemyError as exc:
            logger.warning("metrics: delivery log unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        deliveries = GaugeMetricFamily(
            "delivery_deliveries",
            "Deliveries not yet ended (queued, scheduled, sending, retrying), by channel "
            "and status.",
            labels=["channel", "status"],
        )
        waiting: collections.Counter[tuple[str, str]] = collections.Counter()
        for channel, status, count in by_status:
            # Only configured channels' names: a made-up one is not a series of its own.
            waiting[(channel if channel in known else UNKNOWN_CHANNEL, status)] += count
        for (channel, status), count in sorted(waiting.items()):
            deliveries.add_metric([channel, status], count)
        yield deliveries
        ended = CounterMetricFamily(
            "delivery_deliveries_ended",
            "Deliveries that ended in each final status, by channel (purging keeps them).",
            labels=["channel", "status"],
        )
        for (channel, status), count in sorted(counted.ended.items()):
            ended.add_metric([channel, status], float(count))
        yield ended
        yield from _attempt_metrics(counted)
        yield _oldest_metric(oldest)
        yield from _channel_metrics(channels)

    def _from_broker(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("delivery_broker_up", "Whether the broker answered.")
        try:
            depth = self.broker.depth()
        except OSError as exc:
            logger.warning("metrics: broker unreachable (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        if depth is None:
            return
        queue = self.broker.settings.queue
        messages = GaugeMetricFamily(
            "delivery_queue_messages",
            "Task messages on the broker's delivery queue (a batch counts once).",
            labels=["queue", "state"],
        )
        messages.add_metric([queue, "ready"], depth.ready)
        if depth.unacked is not None:
            messages.add_metric([queue, "unacked"], depth.unacked)
        yield messages


def _attempt_metrics(counted: Totals) -> Iterator[Metric]:
    total = CounterMetricFamily(
        "delivery_attempts", "Attempts recorded in the log, by outcome.", labels=["outcome"]
    )
    durations = HistogramMetricFamily(
        "delivery_attempt_duration_seconds",
        "How long attempts took, by outcome.",
        labels=["outcome"],
    )
    for outcome, per_bucket in sorted(counted.attempts.items()):
        total.add_metric([outcome], float(sum(per_bucket)))
        cumulative, buckets = 0, []
        for bound, count in zip((*map(repr, DURATION_BUCKETS), "+Inf"), per_bucket, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        durations.add_metric(
            [outcome], buckets, sum_value=counted.attempt_ms.get(outcome, 0.0) / 1000
        )
    yield total
    yield durations


def _oldest_metric(row: tuple[datetime | None, ...]) -> Metric:
    oldest = GaugeMetricFamily(
        "delivery_oldest_waiting_seconds",
        "Age of the oldest delivery queued or waiting for a retry (0: none).",
    )
    found = [value for value in row if value is not None]
    now = utcnow()
    oldest.add_metric([], max(0.0, (now - _aware(min(found))).total_seconds()) if found else 0)
    return oldest


def _aware(value: datetime | str) -> datetime:
    # Defensive: should a driver hand back the raw SQLite text or a naive time.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _channel_metrics(rows: Iterable[tuple[object, ...]]) -> Iterator[Metric]:
    breaker = GaugeMetricFamily(
        "delivery_channel_breaker_open",
        "1 while the channel's circuit breaker is open (deliveries wait; probes go).",
        labels=["channel"],
    )
    paused = GaugeMetricFamily(
        "delivery_channel_paused", "1 while a person has paused the channel.", labels=["channel"]
    )
    failures = GaugeMetricFamily(
        "delivery_channel_consecutive_failures",
        "Failed attempts in a row on the channel (the breaker opens at its threshold).",
        labels=["channel"],
    )
    for name, is_paused, in_a_row, open_until in rows:
        breaker.add_metric([str(name)], 1 if open_until is not None else 0)
        paused.add_metric([str(name)], 1 if is_paused else 0)
        failures.add_metric([str(name)], float(in_a_row or 0))  # type: ignore[arg-type]
    yield breaker
    yield paused
    yield failures


#: Methods counted by name; any other a client sends is counted as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of a request no route took (any path a client makes up).
UNMATCHED = "unmatched"


def route_templates(routes: Iterable[object]) -> frozenset[str]:
    """The path templates of ``routes``, in routers included too: the only route labels."""
    found: set[str] = set()
    pending = list(routes)
    while pending:
        route = pending.pop()
        included = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            pending.extend(included.routes)
        elif isinstance(getattr(route, "path", None), str):
            found.add(route.path)  # type: ignore[attr-defined]
    return frozenset(found)


class RequestMetrics:
    """The API's own requests: counts by route and status, latencies by route.

    Labelled by the route's template (``/v1/deliveries/{delivery_id}``), never the raw
    path, so ids do not make a series each; methods and routes only from allow-lists
    (``METHODS``, the app's own templates), so no client can add series by making up
    methods or paths: those are ``other`` and ``unmatched``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        requests: Counter,
        latency: Histogram,
        routes: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watching_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            template = getattr(scope.get("route"), "path", None)
            if template not in self.routes:
                template = UNMATCHED
            method = str(scope.get("method", ""))
            if method not in METHODS:
                method = "other"
            self.requests.labels(method, template, str(status)).inc()
            self.latency.labels(method, template).observe(time.perf_counter() - started)


def request_metrics(registry: CollectorRegistry | None) -> tuple[Counter, Histogram]:
    requests = Counter(
        "delivery_api_requests",
        "HTTP requests the API answered, by method, route and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "delivery_api_request_duration_seconds",
        "Time to answer HTTP requests, by method and route.",
        ["method", "route"],
        buckets=REQUEST_BUCKETS,
        registry=registry,
    )
    return requests, latency


class Exposition:
    """What a scrape reads: this process's registry, or every process's files."""

    def __init__(self, collector: DeliveryCollector) -> None:
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        #: Where the request metrics are registered (None in multi-process mode: their
        #: values go to the shared files instead).
        self.own: CollectorRegistry | None = None
        if self.multiprocess_dir is None:
            self.own = CollectorRegistry()
            self.own.register(collector)
        self.collector = collector

    def render(self) -> bytes:
        if self.own is not None:
            return generate_latest(self.own)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=self.multiprocess_dir
        )
        registry.register(self.collector)
        return generate_latest(registry)


router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(request: Request) -> Response:
    """The deployment's delivery figures and this service's requests (no key needed)."""
    exposition: Exposition = request.app.state.api.exposition
    return Response(exposition.render(), media_type=CONTENT_TYPE_LATEST)
