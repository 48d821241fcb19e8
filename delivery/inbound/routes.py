"""``/inbound/NAME``: providers' requests, verified, recorded, enqueued, answered at once.

No API key: providers call these routes, and each backend verifies the provider's own
signature instead. Every outcome is a deliberate status: 200 accepted (a provider's retry
too), 400 invalid, 403 bad or missing signature, 404 unknown backend, 413 too large, 503
when the log or the broker is unreachable (so the provider tries again). Error bodies
name the problem, never a secret or an internal detail.
"""

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from delivery.engine.assembly import Assembly
from delivery.errors import (
    ConfigurationError,
    InboundError,
    InvalidInbound,
    PublishError,
    RegistryError,
    RequestTooLarge,
)
from delivery.inbound.base import InboundRequest
from delivery.inbound.wiring import Inbound, current_inbound
from delivery.producer.publisher import get_publisher

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Largest request body taken; providers' webhooks are a few kilobytes.
MAX_BODY = 64 * 1024

router = APIRouter(tags=["inbound"])

#: Every answer a provider's request may get, for the OpenAPI document (here and receipts).
PROVIDER_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "taken (a provider's retry too); the body is what the provider expects",
        "content": {"application/json": {}, "text/xml": {}, "text/plain": {}},
    },
    400: {"description": "the request is malformed or misses a field"},
    403: {"description": "the signature is missing or wrong"},
    404: {"description": "no backend (or receipt channel) of that name"},
    413: {"description": "the body is larger than a provider's request can be"},
    503: {"description": "the log or the broker is unreachable, or the setup is wrong"},
}


def inbound_for(request: Request) -> Inbound:
    """The inbound side built on the serving app's own engine (``delivery serve`` keeps its
    assembly in ``app.state.api``), else the process's for the environment's settings."""
    api = getattr(request.app.state, "api", None)
    assembly = getattr(api, "assembly", None)
    if not isinstance(assembly, Assembly):
        return current_inbound()
    built: Inbound | None = getattr(request.app.state, "inbound", None)
    if built is None or built.assembly is not assembly:
        built = Inbound.from_assembly(assembly)
        request.app.state.inbound = built
    return built


def problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


async def read_request(request: Request, public_url: str | None) -> InboundRequest:
    """The provider's request as backends take it.

    Raises:
        InvalidInbound: the body is too large, not UTF-8, or neither a form nor JSON.
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestTooLarge(f"request body larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    url = str(request.url)
    if public_url:
        # Behind a proxy the provider signed the public URL, not the one we see.
        query = request.url.query
        url = public_url.rstrip("/") + request.url.path + (f"?{query}" if query else "")
    form: list[tuple[str, str]] = []
    parsed_json = None
    try:
        text = body.decode("utf-8")
        query_params = parse_qsl(request.url.query, keep_blank_values=True)
        if content_type == "application/json" or content_type.endswith("+json"):
            parsed_json = json.loads(text) if body else None
        elif content_type == "application/x-www-form-urlencoded" or not body:
            form = parse_qsl(text, keep_blank_values=True, errors="strict")
        else:
            raise InvalidInbound(
                "send the body as application/x-www-form-urlencoded or application/json"
            )
    except UnicodeDecodeError:
        raise InvalidInbound("the request is not UTF-8") from None
    except ValueError:
        raise InvalidInbound("the body is not valid JSON") from None
    return InboundRequest(
        method=request.method,
        url=url,
        headers={k.lower(): v for k, v in request.headers.items()},
        query=query_params,
        body=body,
        content_type=content_type,
        form=form,
        json=parsed_json,
    )


def _accept(inbound: Inbound, name: str, incoming: InboundRequest) -> Response:
    """Verify and record the message, hand it to the router, answer the provider."""
    backend = inbound.backends.get(name)
    kind = inbound.backends.instance(backend)
    try:
        message = kind.parse(incoming).checked()
    except InboundError:
        raise
    except Exception as exc:  # a plugin's bug on odd input is still odd input
        logger.exception("inbound backend %s (%s) could not read a request", name, backend.kind)
        raise InvalidInbound(f"the {backend.kind} backend could not read this request") from exc
    recorded = inbound.inbox.record(name, backend.kind, message)
    if not recorded.duplicate or recorded.status == "received":
        # A retry of a message not routed yet (its first enqueue may have failed) goes
        # again; the router skips what was already handled.
        get_publisher(inbound.assembly.settings).publish_inbound(recorded.id)
    logger.info(
        "inbound %s on %s%s", recorded.id, name, " (duplicate)" if recorded.duplicate else ""
    )
    reply = kind.accepted(recorded.id, duplicate=recorded.duplicate)
    return Response(reply.body, status_code=200, media_type=reply.media_type)


async def answer(work: Callable[[], T], *, what: str) -> T | JSONResponse:
    """Run ``work`` off the event loop and turn every failure into a deliberate status."""
    try:
        return await run_in_threadpool(work)
    except InboundError as exc:
        return problem(exc.http_status, str(exc))
    except PublishError:
        logger.warning("%s: broker unreachable", what)
        return problem(503, "the message queue is unavailable; try again later")
    except SQLAlchemyError as exc:
        logger.warning("%s: delivery log unavailable (%s)", what, type(exc).__name__)
        return problem(503, "the delivery log is unavailable; try again later")
    except (ConfigurationError, RegistryError) as exc:
        # A person must fix the setup; the provider should try again later.
        logger.error("%s: %s", what, exc)
        return problem(503, "this endpoint is misconfigured; try again later")
    except Exception:  # never a traceback or a 500 to a provider
        logger.exception("%s failed", what)
        return problem(503, "the request could not be taken; try again later")


async def take(request: Request, *, what: str) -> tuple[Inbound, InboundRequest] | Response:
    """The serving engine and the provider's request read whole, or the answer to give
    when it cannot be read (never a 500 to a provider)."""
    try:
        inbound = await run_in_threadpool(inbound_for, request)
        return inbound, await read_request(request, inbound.assembly.settings.public_url)
    except InboundError as exc:
        return problem(exc.http_status, str(exc))
    except Exception:  # never a 500 to a provider
        logger.exception("%s could not be read", what)
        return problem(503, "the request could not be taken; try again later")


async def inbound_message(name: str, request: Request) -> Response:
    """A provider's inbound message for backend ``name`` (form-encoded or JSON)."""
    taken = await take(request, what=f"inbound request to {name}")
    if isinstance(taken, Response):
        return taken
    inbound, incoming = taken
    return await answer(lambda: _accept(inbound, name, incoming), what=f"inbound {name}")


# One route per method, so each has an OpenAPI operation id of its own.
for _method in ("GET", "POST"):
    router.add_api_route(
        "/inbound/{name}",
        inbound_message,
        methods=[_method],
        operation_id=f"inbound_message_{_method.lower()}",
        summary=f"A provider's inbound message ({_method})",
        responses=PROVIDER_ANSWERS,
    )
