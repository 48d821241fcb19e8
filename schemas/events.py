"""Events: what ``delivery.notify`` publishes and the fan-out task carries.

An event is a name (``order.shipped``) and a context, a JSON object the subscriptions'
templates are rendered with. The context is strict JSON (no NaN or infinities, no NUL
characters) and small: it travels in a task message and is kept in the log.
"""

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
)

from schemas.messages import Address, Category, IdempotencyKey, Model, Receipt
from schemas.tracing import Traceparent

#: Dotted lower-case words: ``order.shipped``, ``user.signed-up``, ``invoice.paid_late``.
#: Lower case only, so ``Order.Shipped`` cannot silently miss the subscriptions of
#: ``order.shipped``.
EVENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$"
#: Longest event name.
MAX_EVENT_NAME = 128
#: Largest context, once encoded as JSON. It is rendered into every subscription's
#: payload, so it must leave room in a payload (``MAX_PAYLOAD_BYTES``) for the text.
MAX_CONTEXT_BYTES = 64 * 1024
#: Deepest nesting of objects and arrays in a context.
MAX_CONTEXT_DEPTH = 32
#: Most addresses one ``send`` may name.
MAX_RECIPIENTS = 1000

_EVENT_NAME = re.compile(EVENT_NAME_PATTERN)


def _event_name(value: str) -> str:
    if len(value) > MAX_EVENT_NAME or not _EVENT_NAME.match(value):
        raise ValueError(
            f"event names are dotted lower-case words such as 'order.shipped' "
            f"(letters, digits, '_' and '-', at most {MAX_EVENT_NAME} characters)"
        )
    return value


EventName = Annotated[str, AfterValidator(_event_name)]

#: Several identities for one ``send``: one delivery each.
Recipients = Annotated[list[Address], Field(min_length=1, max_length=MAX_RECIPIENTS)]


def check_json(value: Any, *, depth: int = 0, where: str = "context") -> None:
    """Refuse what strict JSON cannot carry or the log cannot store.

    Raises:
        ValueError: a NaN or infinite number, a NUL character, or too deep a nesting.
    """
    if depth > MAX_CONTEXT_DEPTH:
        raise ValueError(f"{where} is nested more than {MAX_CONTEXT_DEPTH} levels deep")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds {value}, which JSON cannot carry")
    if isinstance(value, str):
        if "\x00" in value:
            # PostgreSQL cannot store NUL in text, and no template needs one.
            raise ValueError(f"{where} holds a NUL character")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{where} holds a lone surrogate (no UTF-8 form)") from None
    if isinstance(value, dict):
        for key, item in value.items():
            check_json(key, depth=depth + 1, where=f"{where} key")
            check_json(item, depth=depth + 1, where=f"{where}.{key}"[:200])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json(item, depth=depth + 1, where=f"{where}[{index}]"[:200])


class Event(Model):
    """One event as the fan-out task carries it."""

    schema_version: Literal[1] = 1
    #: The event id: uuid5 of the name and idempotency key, or a random uuid4 (an API
    #: key's: ``delivery.api.ownership.owned_event_id``).
    id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: EventName
    context: dict[str, JsonValue] = Field(default_factory=dict)
    idempotency_key: IdempotencyKey | None = None
    #: When the producer published it.
    occurred_at: AwareDatetime | None = None
    #: The deliveries' category; None leaves each subscription's own (``notify`` wins).
    category: Category | None = None
    #: The W3C traceparent of the span that published it, which each delivery it makes
    #: carries on (docs/tracing.md); a malformed one reads as None.
    traceparent: Traceparent = None
    #: The name of the API key that published it (None: Python or the command line); the
    #: deliveries it makes are that key's.
    owner: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    #: Published with a test key: the deliveries it makes are tests (no provider called).
    test: bool = False

    @field_validator("context", mode="before")
    @classmethod
    def _strict_json(cls, value: Any) -> Any:
        # Before pydantic's own checks, so the depth limit guards its recursion too.
        if not isinstance(value, dict):
            raise ValueError("the context must be a JSON object (a dict)")
        check_json(value)
        return value

    @field_validator("context")
    @classmethod
    def _not_too_large(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        size = len(json.dumps(value, allow_nan=False, separators=(",", ":")))
        if size > MAX_CONTEXT_BYTES:
            raise ValueError(
                f"context is {size} bytes once encoded; the limit is {MAX_CONTEXT_BYTES}"
            )
        return value


class EventReceipt(Receipt):
    """What ``notify`` returns at once: ``id`` is the event's id (``delivery status ID``
    shows the event and the deliveries it made). An event has no channel of its own."""

    channel: str = ""
    event: str
