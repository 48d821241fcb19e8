"""``/v1/events``: ``delivery.notify`` for services that are not Python, and an event read
back with the deliveries it made.

Like ``notify``, the route only validates and publishes one fan-out task; the workers
resolve the subscriptions and render the templates.

A key owns the events it publishes, as it owns its deliveries: their ids are its own
(``owned_event_id``: two teams' ``order-42`` are two events), every delivery an event
makes is the key's (and a test key's are tests: no provider is called), and another key's
event, or an id nobody published, is 404. An admin key's events are its own as well; it
reads every event.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path
from fastapi.responses import JSONResponse
from pydantic import Field

from delivery.api.auth import api_key, caller
from delivery.api.deliveries import ID_PATTERN, IDEMPOTENCY_KEY_PATTERN
from delivery.api.errors import invalid
from delivery.api.keys import Caller
from delivery.api.models import BODY_ERRORS, ERRORS, Problem
from delivery.api.ownership import owned_event_id
from delivery.api.state import State
from delivery.notifications.events import EventStore
from delivery.producer.events import build_event
from schemas import Category, Model
from schemas.events import EVENT_NAME_PATTERN, MAX_EVENT_NAME

router = APIRouter(prefix="/v1", tags=["events"], dependencies=[Depends(api_key)])


class EventRequest(Model):
    """``POST /v1/events``: as ``delivery.notify(event, context, idempotency_key=…,
    category=…)``."""

    event: str = Field(
        description="A dotted lower-case name, e.g. `order.shipped`.",
        # Documented here; enforced by build_event, whose 422 says what a name may be.
        json_schema_extra={"pattern": EVENT_NAME_PATTERN, "maxLength": MAX_EVENT_NAME},
    )
    context: dict[str, Any] = Field(
        default_factory=dict,
        description="A JSON object (at most 64 KiB) the templates are rendered with.",
    )
    idempotency_key: str | None = Field(
        default=None, description="The same event and key always yield the same event id."
    )
    category: Category | None = Field(
        default=None,
        description="The deliveries' category (`security`, `marketing`…); without it, each "
        "subscription's own.",
    )


class EventAccepted(Model):
    """Enqueued: ``GET /v1/events/{id}`` shows the event and its deliveries."""

    id: str
    event: str


@router.post(
    "/events",
    status_code=202,
    response_model=EventAccepted,
    responses=BODY_ERRORS,
)
def create_event(
    request: EventRequest,
    state: State,
    who: Annotated[Caller, Depends(caller)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="As the body's `idempotency_key` (give one or the other, or the "
            "same in both).",
            pattern=IDEMPOTENCY_KEY_PATTERN,
        ),
    ] = None,
) -> EventAccepted | JSONResponse:
    """Publish an event to its subscriptions (``delivery.notify``). 202 with its id. The
    deliveries it makes are this key's (a test key's are tests: no provider is called)."""
    key = request.idempotency_key
    if idempotency_key is not None:
        if key not in (None, idempotency_key):
            return invalid(["idempotency_key: differs from the Idempotency-Key header"])
        key = idempotency_key
    # Invalid names or contexts raise ValidationError: 422 naming the field, nothing sent.
    event = build_event(
        request.event,
        request.context,
        idempotency_key=key,
        category=request.category,
        owner=who.name,
        test=who.test,
        fixed_id=owned_event_id(who.name, request.event, key),
    )
    state.publisher.publish_event(event)
    return EventAccepted(id=event.id, event=event.name)


@router.get(
    "/events/{event_id}",
    responses={
        **ERRORS,
        404: {
            "model": Problem,
            "description": "the log does not know this event (yet), or another key published it",
        },
    },
)
def get_event(
    event_id: Annotated[str, Path(pattern=ID_PATTERN, description="The event's id.")],
    state: State,
    who: Annotated[Caller, Depends(caller)],
) -> dict[str, Any]:
    """The event and the deliveries it made, as ``delivery status EVENT_ID --json``: the
    key's own, or any for an admin key."""
    record = EventStore(state.log.engine).get(event_id)
    if record is None or not (who.admin or record.owner == who.name):
        raise HTTPException(404, "no such event in the log (not published, or not yet fanned out)")
    return record.to_json()
