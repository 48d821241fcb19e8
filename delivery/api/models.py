"""What the HTTP service takes and answers, beyond ``schemas.Message`` itself; the
OpenAPI document is generated from these."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas import Message, Model

#: Messages one batch request may carry.
MAX_BATCH = 1000


class MessageRequest(Message):
    """One delivery, as ``POST /v1/deliveries`` takes it: a ``Message`` with JSON's own
    types (``false`` is not a number, ``"5"`` is not a countdown)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class BatchRequest(Model):
    """``POST /v1/deliveries/batch``: every message is validated before any is enqueued."""

    messages: list[MessageRequest] = Field(min_length=1, max_length=MAX_BATCH)


class Accepted(Model):
    """Enqueued: look the delivery up by this id."""

    id: str


class AcceptedBatch(Model):
    """Enqueued: the ids, in the order of the messages."""

    ids: list[str]


class Cancelled(Model):
    id: str
    status: str
    detail: str


class Problem(Model):
    """Every error: what is wrong, in words; ``errors`` lists each invalid field."""

    detail: str
    errors: list[str] | None = None


class AttemptDocument(BaseModel):
    number: int
    started_at: str
    duration_ms: float
    outcome: str
    status_code: int | None
    error: str | None
    provider_ref: str | None
    detail: dict[str, Any]
    worker: str | None


class DeliverySummary(BaseModel):
    """A delivery as ``delivery log --json`` lists it."""

    id: str
    channel: str
    dispatcher: str | None
    address: str
    idempotency_key: str | None
    status: str
    attempt_count: int
    created_at: str
    updated_at: str
    next_attempt_at: str | None
    delivered_at: str | None
    last_error: str | None
    provider_ref: str | None
    #: ``security``, ``marketing``… as the producer or the subscription gave it.
    category: str | None = None
    #: The API key that sent it (null: Python or the command line).
    owner: str | None = None
    #: Sent with a test key: no provider was called.
    test: bool = False
    #: Not to be sent after this (the producer's ``ttl``): it ends ``expired``.
    expires_at: str | None = None


class DeliveryDocument(DeliverySummary):
    """A delivery as ``delivery status ID --json`` shows it: every attempt and receipt."""

    payload: dict[str, Any] | None
    attempts: list[AttemptDocument]
    receipts: list[dict[str, Any]]


class DeliveryPage(BaseModel):
    """``delivery log --json``'s document, and the cursor of the next page (None: the last)."""

    deliveries: list[DeliverySummary]
    next_cursor: str | None


#: Error answers every /v1/ route may give, for the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing, wrong or revoked API key"},
    422: {"model": Problem, "description": "invalid input; each field named"},
    429: {
        "model": Problem,
        "description": "too many requests for this API key; `Retry-After` says when to try",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
    503: {"model": Problem, "description": "the broker or the delivery log is unreachable"},
}
#: And those of routes that take a JSON body.
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": Problem, "description": "the body is not JSON (or not UTF-8)"},
    413: {"model": Problem, "description": "the body is larger than the service takes"},
}
