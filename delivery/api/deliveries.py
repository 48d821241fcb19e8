"""``/v1/deliveries``: the producer for services that are not Python, and the log read back.

The API never sends to a provider: it enqueues through the producer, exactly as
``delivery.send`` and ``send_many`` do, and reads what the workers recorded.
"""

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from delivery.api.auth import api_key
from delivery.api.errors import invalid
from delivery.api.models import (
    ERRORS,
    Accepted,
    AcceptedBatch,
    BatchRequest,
    Cancelled,
    DeliveryDocument,
    DeliveryPage,
    Problem,
)
from delivery.api.state import State
from delivery.log import Status
from schemas import CHANNEL_NAME_PATTERN, Message
from schemas.messages import storable_problem

#: Delivery ids are UUIDs; anything of this shape is looked up, anything else is refused.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
#: Deliveries one page lists at most.
MAX_PAGE = 1000

router = APIRouter(prefix="/v1", tags=["deliveries"], dependencies=[Depends(api_key)])

DeliveryId = Annotated[str, Path(pattern=ID_PATTERN, description="The delivery's id.")]
NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "description": "the log does not know this delivery (yet)"}
}
CONFLICT: dict[int | str, dict[str, object]] = {
    409: {"model": Problem, "description": "the delivery is not in a state that allows it"}
}


@router.post("/deliveries", status_code=202, response_model=Accepted, responses=ERRORS)
def create_delivery(
    message: Message,
    state: State,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="As the message's `idempotency_key`: the same key (on the same "
            "channel) always yields the same id and is delivered at most once.",
        ),
    ] = None,
) -> Accepted | JSONResponse:
    """Enqueue one delivery (``delivery.send``). 202: look it up by the id."""
    if idempotency_key is not None:
        if message.idempotency_key not in (None, idempotency_key):
            return invalid(["idempotency_key: differs from the Idempotency-Key header"])
        # Validated again, as the header's value must pass the same checks as the field's.
        message = Message.model_validate(
            {**message.model_dump(), "idempotency_key": idempotency_key}
        )
    receipt = state.publisher.publish([message])[0]
    return Accepted(id=receipt.id)


@router.post("/deliveries/batch", status_code=202, response_model=AcceptedBatch, responses=ERRORS)
def create_deliveries(batch: BatchRequest, state: State) -> AcceptedBatch:
    """Enqueue many deliveries (``delivery.send_many``): all are validated before any is
    enqueued, in one broker round trip. 202: their ids, in order."""
    receipts = state.publisher.publish(batch.messages)
    return AcceptedBatch(ids=[r.id for r in receipts])


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryDocument,
    responses={**ERRORS, **NOT_FOUND},
)
def get_delivery(delivery_id: DeliveryId, state: State) -> JSONResponse:
    """A delivery, every attempt and every receipt: ``delivery status ID --json``."""
    record = state.log.get(delivery_id)
    if record is None:
        raise HTTPException(
            404,
            f"no delivery {delivery_id!r} in the log (not sent, or not yet picked up by a worker)",
        )
    return JSONResponse(record.to_json())


@router.get("/deliveries", response_model=DeliveryPage, responses=ERRORS)
def list_deliveries(
    state: State,
    status: Annotated[Status | None, Query(description="Only deliveries in this state.")] = None,
    channel: Annotated[
        str | None, Query(pattern=CHANNEL_NAME_PATTERN, description="Only this channel.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="`next_cursor` of the page before."),
    ] = None,
) -> JSONResponse:
    """Deliveries, newest first (``delivery log --json``), a page at a time. Pages hold
    still while new deliveries arrive: follow ``next_cursor`` until it is null."""
    after = _decode(cursor) if cursor else None
    if cursor and after is None:
        return invalid(["query.cursor: not a cursor this service gave out"])
    records = state.log.find(status=status, channel=channel, limit=limit + 1, after=after)
    page, more = records[:limit], len(records) > limit
    last = page[-1] if page else None
    return JSONResponse(
        {
            "deliveries": [r.to_json(with_attempts=False) for r in page],
            "next_cursor": _encode(last.created_at, last.id) if more and last else None,
        }
    )


@router.post(
    "/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=Accepted,
    responses={**ERRORS, **NOT_FOUND, **CONFLICT},
)
def retry_delivery(delivery_id: DeliveryId, state: State) -> Accepted:
    """Send a failed delivery again, keeping its attempts (``delivery retry ID``)."""
    reopened = state.log.reopen(delivery_id)
    if reopened is None:
        current = state.log.get(delivery_id)
        if current is None:
            raise HTTPException(404, f"no delivery {delivery_id!r} in the log")
        raise HTTPException(409, f"{delivery_id} is {current.status}, not failed")
    # Should this publish fail, the sweep re-enqueues the reopened delivery later.
    state.publisher.publish_envelopes([(reopened.envelope(), None)], batch=True)
    return Accepted(id=delivery_id)


@router.post(
    "/deliveries/{delivery_id}/cancel",
    response_model=Cancelled,
    responses={**ERRORS, **CONFLICT},
)
def cancel_delivery(delivery_id: DeliveryId, state: State) -> Cancelled:
    """Make sure a delivery not yet sent is never sent: one still in the broker, waiting in
    the log for a retry, or held by a paused channel or an open breaker. 409 when it was
    sent already, is being sent now, or has failed."""
    done = state.log.cancel(delivery_id)
    if not done.cancelled:
        raise HTTPException(409, done.explain(delivery_id))
    return Cancelled(id=delivery_id, status=done.status, detail=done.explain(delivery_id))


def _encode(created_at: datetime, delivery_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), delivery_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, delivery_id = json.loads(raw)
        when = datetime.fromisoformat(created)
    except (binascii.Error, ValueError, TypeError):
        return None
    if (
        when.tzinfo is None
        or not isinstance(delivery_id, str)
        or len(delivery_id) > 64
        or storable_problem(delivery_id) is not None
    ):
        return None
    return when, delivery_id
