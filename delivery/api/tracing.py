"""Tracing ``/v1/`` requests: each continues its caller's trace (``traceparent``), so the
deliveries it enqueues carry it on to the workers and the receivers (docs/tracing.md).

Without OpenTelemetry installed the middleware passes requests straight through.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delivery import tracing


class TraceRequests:
    """A server span around each ``/v1/`` request, named after its route's template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not tracing.ENABLED or scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        # ASGI gives header names in lower case; values as sent (latin-1, as HTTP's are).
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        status = 500

        async def watching_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with tracing.request_span(str(scope["method"]), headers) as span:
            try:
                await self.app(scope, receive, watching_send)
            finally:
                span.finish(route=getattr(scope.get("route"), "path", None), status=status)
