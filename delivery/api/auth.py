"""``Authorization: Bearer <key>`` on every ``/v1/`` route.

Checked in a middleware, before routing, so a missing, wrong or revoked key is 401
whatever the request: a known route, an unknown path, a wrong method or a bad body alike
(a dependency would run only after routing and body validation, and let 404, 405 and 422
tell a stranger what exists). The key is never logged; only who made a request (the
key's name, whether it is an admin or a test key) is kept, in the request's state.
"""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Receive, Scope, Send

from delivery.api.errors import LOG_DOWN, problem
from delivery.api.keys import Caller, KeyVerifier

#: Routes under this prefix need a key.
PROTECTED = "/v1"

#: For the OpenAPI document: every /v1/ route declares the scheme. The check itself is
#: the middleware's.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="A key from `delivery keys add NAME`.",
)


async def api_key(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> str:
    """The name of the key the request came with (the middleware has checked it). async,
    so it runs on the event loop rather than costing a hop to a worker thread."""
    return str(request.scope.get("state", {}).get("api_key", ""))


async def caller(request: Request) -> Caller:
    """Who made the request (the middleware has checked the key)."""
    found = request.scope.get("state", {}).get("caller")
    return found if isinstance(found, Caller) else Caller("")


class KeyRequired:
    def __init__(self, app: ASGIApp, *, verifier: KeyVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == PROTECTED or path.startswith(PROTECTED + "/")):
            await self.app(scope, receive, send)
            return
        presented = _bearer(scope)
        if presented is None:
            await _unauthorised("send an API key as `Authorization: Bearer <key>`")(
                scope, receive, send
            )
            return
        try:
            if self.verifier.fresh:
                # A hash and a dict lookup: cheaper than a hop to a worker thread.
                who = self.verifier.verify(presented)
            else:
                who = await run_in_threadpool(self.verifier.verify, presented)
        except SQLAlchemyError:
            # A key that cannot be checked is neither accepted nor called wrong.
            await problem(503, LOG_DOWN)(scope, receive, send)
            return
        if who is None:
            await _unauthorised("the API key is wrong or revoked")(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["api_key"] = who.name
        state["caller"] = who
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                return token
            return None
    return None


def _unauthorised(detail: str) -> JSONResponse:
    response = problem(401, detail)
    response.headers["WWW-Authenticate"] = 'Bearer realm="delivery"'
    return response
