"""The body-size limit: 413 before a large body is read, and while one streams in.

Checked on ``Content-Length`` when given, and counted as the body arrives (chunked
uploads, or a client that lies about its length), so no request holds more than the
limit in memory.
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delivery.api.errors import problem

#: One message: its payload is at most 256 KiB of UTF-8, which JSON escapes can inflate.
MAX_BODY = 1024 * 1024
#: A batch of messages.
MAX_BATCH_BODY = 8 * 1024 * 1024
#: Paths allowed the batch limit.
BATCH_PATHS = frozenset({"/v1/deliveries/batch"})


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
