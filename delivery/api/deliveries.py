"""``/v1/deliveries``: the producer for services that are not Python, and the log read back.

The API never sends to a provider: it enqueues through the producer, exactly as
``delivery.send`` and ``send_many`` do, and reads what the workers recorded. What a worker
could only fail (an unknown channel, an address or payload its dispatcher cannot take) is
refused at once, by the worker's own dry run (``DeliveryService.preview``).

A key sees and acts only on what it sent: another key's delivery, or an id nobody sent,
is 404, and nothing is written. An admin key sees everything.
"""

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from delivery.api.auth import api_key, caller
from delivery.api.errors import invalid
from delivery.api.keys import Caller
from delivery.api.models import (
    BODY_ERRORS,
    ERRORS,
    Accepted,
    AcceptedBatch,
    BatchRequest,
    Cancelled,
    DeliveryDocument,
    DeliveryPage,
    MessageRequest,
    Problem,
)
from delivery.api.ownership import is_owned, owned_id
from delivery.api.state import State
from delivery.engine.service import DeliveryService
from delivery.errors import InvalidAddress, PayloadRejected, PermanentError, UnknownChannel
from delivery.log import DeliveryRecord, Status
from schemas import CHANNEL_NAME_PATTERN, Envelope, Message
from schemas.messages import storable_problem

logger = logging.getLogger(__name__)

#: Delivery ids are UUIDs; anything of this shape is looked up, anything else is refused.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
#: Deliveries one page lists at most.
MAX_PAGE = 1000
#: An ``Idempotency-Key`` header: visible ASCII, inner spaces allowed (HTTP trims the ends).
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
#: What ``next_cursor`` looks like (unpadded URL-safe base64).
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,200}$"

router = APIRouter(prefix="/v1", tags=["deliveries"], dependencies=[Depends(api_key)])

DeliveryId = Annotated[str, Path(pattern=ID_PATTERN, description="The delivery's id.")]
NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {
        "model": Problem,
        "description": "the log does not know this delivery (yet), or another key sent it",
    }
}
CONFLICT: dict[int | str, dict[str, object]] = {
    409: {"model": Problem, "description": "the delivery is not in a state that allows it"}
}


@router.post("/deliveries", status_code=202, response_model=Accepted, responses=BODY_ERRORS)
def create_delivery(
    message: MessageRequest,
    state: State,
    who: Annotated[Caller, Depends(caller)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="As the message's `idempotency_key` (give one or the other, or the "
            "same in both): the same key on the same channel, from the same API key, always "
            "yields the same id and is delivered at most once.",
            pattern=IDEMPOTENCY_KEY_PATTERN,
        ),
    ] = None,
) -> Accepted | JSONResponse:
    """Enqueue one delivery (``delivery.send``). 202: look it up by the id."""
    if idempotency_key is not None:
        if message.idempotency_key not in (None, idempotency_key):
            return invalid(["idempotency_key: differs from the Idempotency-Key header"])
        # Validated again, as the header's value must pass the same checks as the field's.
        message = MessageRequest.model_validate(
            {**message.model_dump(), "idempotency_key": idempotency_key}
        )
    refused = _refusals(state.assembly.service, [message], prefix=None)
    if refused:
        return invalid(refused)
    return Accepted(id=_publish(state, who, [message])[0])


@router.post(
    "/deliveries/batch", status_code=202, response_model=AcceptedBatch, responses=BODY_ERRORS
)
def create_deliveries(
    batch: BatchRequest, state: State, who: Annotated[Caller, Depends(caller)]
) -> AcceptedBatch | JSONResponse:
    """Enqueue many deliveries (``delivery.send_many``): all are validated before any is
    enqueued, in one broker round trip. 202: their ids, in order."""
    refused = _refusals(state.assembly.service, batch.messages, prefix="messages")
    if refused:
        return invalid(refused)
    return AcceptedBatch(ids=_publish(state, who, batch.messages))


def _publish(state: State, who: Caller, messages: Sequence[Message]) -> list[str]:
    """Enqueue as ``who``: ids of its own, the deliveries marked its own (and a test
    key's as tests)."""
    ids: list[str | None] = [owned_id(who.name, m.channel, m.idempotency_key) for m in messages]
    receipts = state.publisher.publish(messages, ids=ids, owner=who.name, test=who.test)
    return [r.id for r in receipts]


#: Where in a message each refusal is, for the 422's field name.
_REFUSED_FIELD: tuple[tuple[type[Exception], str], ...] = (
    (UnknownChannel, "channel"),
    (InvalidAddress, "address"),
    (PayloadRejected, "payload"),
)


def _refusals(
    service: DeliveryService, messages: Sequence[Message], *, prefix: str | None
) -> list[str]:
    """What a worker would certainly fail, one line per message, naming the field: the
    worker's own dry run (``preview``, as ``delivery send`` runs it) and the channel's
    protocol. Channels and dispatchers are cached, so this reads the log only now and
    then. A problem a person may fix before the worker gets to it (a channel's
    configuration, a plugin this process lacks) is left to the worker."""
    lines: list[str] = []
    for index, message in enumerate(messages):
        envelope = Envelope.model_validate(
            {**message.model_dump(include=set(Envelope.model_fields)), "id": "preview"}
        )
        try:
            service.preview(envelope)
            service.dispatchers.get(envelope.channel)[1].protocol.adapt(message.payload)
        except (UnknownChannel, PermanentError) as exc:
            field = next((f for kind, f in _REFUSED_FIELD if isinstance(exc, kind)), "message")
            where = f"{prefix}.{index}.{field}" if prefix else field
            lines.append(f"{where}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the worker decides, and records why
            logger.debug("not checked here, left to the worker: %s", type(exc).__name__)
    return lines


def _visible(record: DeliveryRecord | None, who: Caller) -> DeliveryRecord | None:
    """``record`` if ``who`` may see it: its own, or any for an admin key."""
    if record is None or not (who.admin or record.owner == who.name):
        return None
    return record


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryDocument,
    responses={**ERRORS, **NOT_FOUND},
)
def get_delivery(
    delivery_id: DeliveryId, state: State, who: Annotated[Caller, Depends(caller)]
) -> JSONResponse:
    """A delivery, every attempt and every receipt: ``delivery status ID --json``."""
    record = _visible(state.log.get(delivery_id), who)
    if record is None:
        raise HTTPException(
            404,
            f"no delivery {delivery_id!r} in the log (not sent, or not yet picked up by a worker)",
        )
    return JSONResponse(record.to_json())


@router.get("/deliveries", response_model=DeliveryPage, responses=ERRORS)
def list_deliveries(
    state: State,
    who: Annotated[Caller, Depends(caller)],
    status: Annotated[Status | None, Query(description="Only deliveries in this state.")] = None,
    channel: Annotated[
        str | None, Query(pattern=CHANNEL_NAME_PATTERN, description="Only this channel.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the page before."),
    ] = None,
) -> JSONResponse:
    """Deliveries, newest first (``delivery log --json``), a page at a time: the key's
    own, or every one for an admin key. Pages hold still while new deliveries arrive:
    follow ``next_cursor`` until it is null."""
    after = _decode(cursor) if cursor else None
    if cursor and after is None:
        return invalid(["query.cursor: not a cursor this service gave out"])
    records = state.log.find(
        status=status,
        channel=channel,
        limit=limit + 1,
        after=after,
        owner=None if who.admin else who.name,
    )
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
def retry_delivery(
    delivery_id: DeliveryId, state: State, who: Annotated[Caller, Depends(caller)]
) -> Accepted:
    """Send a failed delivery again, keeping its attempts (``delivery retry ID``)."""
    if _visible(state.log.get(delivery_id), who) is None:
        raise HTTPException(404, f"no delivery {delivery_id!r} in the log")
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
    responses={**ERRORS, **NOT_FOUND, **CONFLICT},
)
def cancel_delivery(
    delivery_id: DeliveryId, state: State, who: Annotated[Caller, Depends(caller)]
) -> Cancelled:
    """Make sure a delivery not yet sent is never sent: one still in the broker, waiting in
    the log for a retry, or held by a paused channel or an open breaker. 409 when it was
    sent already, is being sent now, or has failed; 404 for another key's delivery or an
    id this key was never given (nothing is written)."""
    owner: str | None = None
    if not who.admin:
        record = state.log.get(delivery_id)
        if record is not None and record.owner != who.name:
            raise HTTPException(404, f"no delivery {delivery_id!r} in the log")
        if record is None and not is_owned(delivery_id, who.name):
            raise HTTPException(404, f"no delivery {delivery_id!r} sent with this key")
        # Not in the log yet (its message waits in the broker): cancelled in advance, as
        # this key's, so the worker that takes the message finds it done.
        owner = who.name
    done = state.log.cancel(delivery_id, owner=owner)
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
