"""The app factory: ``create_app(settings)`` builds ``delivery serve``'s FastAPI app.

A router per concept; a capability of its own (events, inbound, receipts) adds its
router to ``ROUTERS``. Middleware, outermost first: tracing, request metrics, the API-key
check on ``/v1/``, the body-size limit; then routing and the exception handlers.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from delivery.api import (
    deliveries,
    erasures,
    errors,
    events,
    health,
    metrics,
    preferences,
    unsubscribe,
)
from delivery.api.auth import KeyRequired
from delivery.api.broker import BrokerProbe
from delivery.api.keys import CACHE_SECONDS, KeyStore, KeyVerifier
from delivery.api.limits import MAX_BATCH_BODY, MAX_BODY, BodyLimit, KeyRate, RateLimited
from delivery.api.state import ApiState
from delivery.api.tracing import TraceRequests
from delivery.engine.assembly import assemble
from delivery.inbound import receipts as inbound_receipts
from delivery.inbound import routes as inbound_routes
from schemas import Settings, get_settings

#: The routers every app serves, in order. Append yours (``POST /v1/events``,
#: ``/inbound/NAME``, ``/receipts/CHANNEL``): under ``/v1/`` a key is required.
ROUTERS: list[APIRouter] = [
    health.router,
    metrics.router,
    deliveries.router,
    events.router,
    inbound_routes.router,  # /inbound/NAME: providers call it, no key; signatures
    inbound_receipts.router,  # /receipts/CHANNEL: the same
    preferences.router,
    erasures.router,  # POST /v1/erasures: admin keys only
    unsubscribe.router,  # /unsubscribe/TOKEN: reached from mailboxes, no key; signed tokens
]

DESCRIPTION = """\
Queued, retried and logged deliveries for any service that speaks HTTP. The service
never sends to a provider itself: it enqueues, like any producer, and reads back the
delivery log the workers write.

Every `/v1/` route needs `Authorization: Bearer <key>` (`delivery keys add NAME`).
A key sees and acts only on the deliveries it sent (an `--admin` key on all); a
`--test` key's deliveries go the whole way through the workers, but no provider is
called. Errors are JSON `{"detail": …}`: 400 a body that is not JSON, 401 bad key,
404 unknown (or another key's), 409 wrong state, 413 body too large, 422 invalid input
(each field named in `errors`), 429 too many requests for the key (see `Retry-After`),
503 broker or log down.
"""


def create_app(
    settings: Settings | None = None,
    *,
    key_cache_seconds: float = CACHE_SECONDS,
    max_body: int = MAX_BODY,
    max_batch_body: int = MAX_BATCH_BODY,
) -> FastAPI:
    """The HTTP service for ``settings`` (default: from the environment). Nothing
    connects until a request needs it."""
    settings = settings or get_settings()
    assembly = assemble(settings)
    keys = KeyStore(assembly.log.engine)
    broker = BrokerProbe(settings)
    exposition = metrics.Exposition(metrics.DeliveryCollector(assembly.log.engine, broker))
    state = ApiState(
        settings=settings,
        assembly=assembly,
        keys=keys,
        verifier=KeyVerifier(keys, cache_seconds=key_cache_seconds),
        broker=broker,
        exposition=exposition,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    from importlib.metadata import version

    app = FastAPI(
        title="delivery",
        version=version("delivery"),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.api = state
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    # add_middleware puts each outside the ones before it.
    app.add_middleware(BodyLimit, limit=max_body, batch_limit=max_batch_body)
    rate = KeyRate(assembly.limiter, per_minute=settings.api_rate_limit)
    app.add_middleware(RateLimited, rate=rate)  # inside the key check: it names the key
    app.add_middleware(KeyRequired, verifier=state.verifier)
    requests, latency = metrics.request_metrics(exposition.own)
    app.add_middleware(
        metrics.RequestMetrics,
        requests=requests,
        latency=latency,
        routes=metrics.route_templates(app.routes),
    )
    app.add_middleware(TraceRequests)  # outermost: the span covers the whole request
    return app
