"""Every failure as a deliberate status with a JSON body ``{"detail": …}``; never a
traceback. Foreign exceptions are translated here, once: the broker's (``PublishError``)
and the log's (``SQLAlchemyError``) into 503, validation errors into 422 naming the field.
"""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from delivery.errors import ConfigurationError, PublishError, RegistryError

logger = logging.getLogger(__name__)

#: Problems listed in a 422 at most: a batch of a thousand bad messages needs no more.
MAX_PROBLEMS = 20
#: Seconds a client is asked to wait before trying again after a 503.
RETRY_AFTER = "5"

BROKER_DOWN = "the message queue is unavailable; nothing was enqueued; try again later"
LOG_DOWN = "the delivery log is unavailable; try again later"


def problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def describe(errors: Sequence[Any]) -> list[str]:
    """One line per problem, naming the field, in the words of ``schemas.validation.explain``;
    never the input values (they may be large or secret). The body's fields are named as
    in the JSON document (``payload.message``), the rest by where they came from
    (``query.limit``, ``header.idempotency-key``)."""
    lines = []
    for error in list(errors)[:MAX_PROBLEMS]:
        loc = [str(part) for part in error.get("loc", ())]
        if loc[:1] == ["body"]:
            loc = loc[1:]
        where = ".".join(loc) or "body"
        kind = error.get("type", "")
        if kind == "json_invalid":
            lines.append("body: not valid JSON")
        elif kind == "extra_forbidden":
            lines.append(f"unknown field {where!r}")
        elif kind == "missing":
            lines.append(f"{where}: required")
        else:
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            lines.append(f"{where}: {message}")
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"… and {len(errors) - MAX_PROBLEMS} more problems")
    return lines


def invalid(lines: list[str]) -> JSONResponse:
    """422: what is wrong, field by field; nothing was enqueued."""
    return problem(422, "invalid request: " + "; ".join(lines[:3]), errors=lines)


async def _request_invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return invalid(describe(exc.errors()))


async def _model_invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return invalid(describe(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer, but a 405 lists in ``Allow`` every method the path takes (several
    routes may share a path, one per method; Starlette names only the first's)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = _methods(request.app.router.routes, request.scope)
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
    return await http_exception_handler(request, exc)


def _methods(routes: Sequence[Any], scope: Any) -> set[str]:
    """The methods of the routes whose path matches (in routers included too): of those
    with a fixed path, if any (``/v1/deliveries/batch`` rather than ``…/{delivery_id}``),
    as the OpenAPI document reads."""
    fixed: set[str] = set()
    templated: set[str] = set()
    pending = list(routes)
    while pending:
        route = pending.pop()
        included = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            pending.extend(included.routes)
            continue
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods = set(getattr(route, "methods", None) or ())
            (templated if getattr(route, "param_convertors", None) else fixed).update(methods)
    return fixed or templated


async def _broker_down(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("%s %s: broker unreachable", request.method, request.url.path)
    return problem(503, BROKER_DOWN)


async def _log_down(request: Request, exc: Exception) -> JSONResponse:
    logger.warning(
        "%s %s: delivery log unavailable (%s)",
        request.method,
        request.url.path,
        type(exc).__name__,
    )
    return problem(503, LOG_DOWN)


async def _misconfigured(request: Request, exc: Exception) -> JSONResponse:
    # A person must fix the setup; the message names what, never a secret.
    logger.error("%s %s: %s", request.method, request.url.path, exc)
    return problem(503, f"the service is misconfigured: {exc}")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the server's log, never to the client.
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal error; the server's log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(ValidationError, _model_invalid)
    app.add_exception_handler(PublishError, _broker_down)
    app.add_exception_handler(SQLAlchemyError, _log_down)
    app.add_exception_handler(ConfigurationError, _misconfigured)
    app.add_exception_handler(RegistryError, _misconfigured)
    app.add_exception_handler(Exception, _unexpected)
