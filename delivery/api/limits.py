"""What one request may cost: its body's size, and its key's rate.

The body-size limit answers 413 before a large body is read, and while one streams in:
checked on ``Content-Length`` when given, and counted as the body arrives (chunked
uploads, or a client that lies about its length), so no request holds more than the
limit in memory. The rate limit answers 429 with ``Retry-After`` to a key that makes
more than ``DELIVERY_API_RATE_LIMIT`` requests a minute.
"""

import logging
import math

from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delivery.api.errors import problem
from delivery.engine.ratelimit import LocalRateLimiter, RateLimiter

logger = logging.getLogger(__name__)

#: One message: its payload is at most 256 KiB of UTF-8, which JSON escapes can inflate.
MAX_BODY = 1024 * 1024
#: A batch of messages.
MAX_BATCH_BODY = 8 * 1024 * 1024
#: Paths allowed the batch limit.
BATCH_PATHS = frozenset({"/v1/deliveries/batch"})
#: Where a key's schedule is kept, beside the channels' (channel names have no ':').
RATE_PREFIX = "api-key:"
#: A key may run this many seconds ahead of its pace: a burst of 10 s worth of requests
#: (500 at 3,000 a minute) goes at once, the rest at the pace.
BURST_SECONDS = 10.0


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimit:
    def __init__(
        self, app: ASGIApp, *, limit: int = MAX_BODY, batch_limit: int = MAX_BATCH_BODY
    ) -> None:
        self.app = app
        self.limit = limit
        self.batch_limit = batch_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.batch_limit if scope["path"] in BATCH_PATHS else self.limit
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(limit, scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body parsing, where FastAPI passes an
                    # HTTPException on: the client gets the 413.
                    raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            # A route that read the body itself let it through.
            if started:
                raise
            await _refuse(limit, scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem(413, f"request body larger than {limit} bytes")
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


class KeyRate:
    """Requests per API key, a GCRA schedule (the channels' rate limiter, by key name).

    With a Redis broker the schedule is kept in Redis, so every API process behind a load
    balancer shares one pace per key. With any other broker each process keeps its own:
    N processes let a key make up to N times the limit (run one, or use Redis).
    """

    def __init__(self, limiter: RateLimiter, *, per_minute: int) -> None:
        self.limiter = limiter
        self.per_minute = per_minute
        #: Whether ``retry_after`` asks another server (Redis): then off the event loop.
        self.remote = not isinstance(limiter, LocalRateLimiter)

    def retry_after(self, key_name: str) -> float | None:
        """None if a request of the key ``key_name`` may go now; otherwise the seconds it
        should wait. A limiter that cannot be asked lets the request go (and says so)."""
        if self.per_minute <= 0:
            return None
        try:
            wait, taken = self.limiter.reserve(
                RATE_PREFIX + key_name, self.per_minute / 60, max_wait=BURST_SECONDS
            )
        except Exception as exc:  # noqa: BLE001 - redis raises its own; never a 500 for this
            logger.warning(
                "API rate limit not checked: the limiter failed (%s)", type(exc).__name__
            )
            return None
        return None if taken else max(1.0, wait - BURST_SECONDS)


class RateLimited:
    """429 with ``Retry-After`` for a key over its rate; inside ``KeyRequired``, which
    puts the key's name in the request's state."""

    def __init__(self, app: ASGIApp, *, rate: KeyRate) -> None:
        self.app = app
        self.rate = rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope.get("state", {}).get("api_key") if scope["type"] == "http" else None
        if not name or self.rate.per_minute <= 0:
            await self.app(scope, receive, send)
            return
        if self.rate.remote:
            wait = await run_in_threadpool(self.rate.retry_after, name)
        else:
            wait = self.rate.retry_after(name)
        if wait is None:
            await self.app(scope, receive, send)
            return
        seconds = math.ceil(wait)
        response = problem(
            429,
            f"too many requests for this API key (at most {self.rate.per_minute} a minute); "
            f"try again in {seconds} s",
        )
        response.headers["Retry-After"] = str(seconds)
        await response(scope, receive, send)
