"""What a producer sends and what travels in a task message.

Every value is one the delivery log can store and a provider can take, so a bad one is
refused where it enters: no NUL characters (PostgreSQL text and JSON hold none), no lone
surrogates (they have no UTF-8 form), strict JSON in ``data`` (no NaN or Infinity), sizes
counted in UTF-8 bytes, and finite, bounded countdowns.
"""

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
)

from schemas.tracing import Traceparent

#: Channel names are identifiers users type on the command line and see in Flower.
CHANNEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Categories (``security``, ``marketing``) are short lower-case names: preferences and
#: ``DELIVERY_CRITICAL_CATEGORIES`` compare them as written, so ``Security`` must not slip by.
CATEGORY_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
#: A throttle per recipient: a whole number above 0 per period of seconds, minutes, hours
#: or days (``3/h``, ``10/d``, ``5/30m``), for channels and subscriptions alike.
PER_RECIPIENT_PATTERN = r"^([0-9]{1,6})/([0-9]{0,4})([smhd])$"
_PERIOD_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: A payload larger than this is refused where it enters: brokers and providers are no
#: place for bulk data, and one huge message must not stall a worker.
MAX_PAYLOAD_BYTES = 256 * 1024

#: The longest a producer may ask a delivery to wait: a year.
MAX_COUNTDOWN = 366 * 24 * 3600.0


def storable_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored in the log or sent to a provider, or None."""
    if "\x00" in text:
        return "contains a NUL character (\\x00)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate at position {exc.start}, which has no UTF-8 form"
    return None


def _storable(text: str) -> str:
    problem = storable_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


def _strict_json(value: dict[str, Any]) -> dict[str, Any]:
    """Refuse what JSON cannot carry: NaN and Infinity, unstorable strings (keys too)."""
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key, nested in item.items():
                _storable(key)
                pending.append(nested)
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            _storable(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{item} is not JSON (only finite numbers are)")
    return value


def _category(value: str) -> str:
    if not re.fullmatch(CATEGORY_PATTERN, value):
        raise ValueError(
            "a category is a short lower-case name such as 'security' or 'marketing' "
            "(1-32 of a-z, 0-9, '_', '.' and '-', starting with a letter or digit)"
        )
    return value


def parse_per_recipient(value: str) -> tuple[int, float]:
    """How many deliveries one address may get, and in how many seconds, for a throttle
    such as ``3/h``, ``10/d`` or ``5/30m``.

    Raises:
        ValueError: the throttle is not in that form.
    """
    match = re.fullmatch(PER_RECIPIENT_PATTERN, value.strip()) if isinstance(value, str) else None
    count = int(match.group(1)) if match else 0
    span = int(match.group(2) or 1) if match else 0
    if not match or count < 1 or span < 1:
        raise ValueError(
            f"per-recipient throttle {str(value)[:40]!r} must be a whole number above 0 per "
            "period of s, m, h or d, e.g. 3/h, 10/d or 5/30m"
        )
    return count, float(span * _PERIOD_SECONDS[match.group(3)])


def _per_recipient(value: str) -> str:
    parse_per_recipient(value)
    return value.strip()


#: A string the log can store: no NUL, no lone surrogate.
Text = Annotated[str, AfterValidator(_storable)]
ChannelName = Annotated[str, StringConstraints(pattern=CHANNEL_NAME_PATTERN)]
Address = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2048),
    AfterValidator(_storable),
]
IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=255), AfterValidator(_storable)
]
JsonObject = Annotated[dict[str, JsonValue], AfterValidator(_strict_json)]
#: What kind of message a delivery is (``security``, ``marketing``): preferences and
#: unsubscribe links work per category, and critical categories are never skipped.
Category = Annotated[str, StringConstraints(strict=True), AfterValidator(_category)]
#: At most N deliveries to one address per period, e.g. ``3/h``.
PerRecipient = Annotated[str, StringConstraints(strict=True), AfterValidator(_per_recipient)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Payload(Model):
    """What to say. Dispatchers adapt it to what their protocol can carry."""

    message: Text
    subject: Text | None = None
    html_message: Text | None = None
    data: JsonObject = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_too_large(self) -> "Payload":
        # In UTF-8 bytes, as the broker, the log and the provider count them.
        size = len(self.model_dump_json().encode())
        if size > MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"payload is {size} bytes once encoded; the limit is {MAX_PAYLOAD_BYTES}"
            )
        return self


class Message(Model):
    """One delivery request as a producer states it (`delivery.send_many` takes these)."""

    channel: ChannelName
    address: Address
    payload: Payload
    idempotency_key: IdempotencyKey | None = None
    #: Seconds to wait before sending: finite, at most a year.
    countdown: Annotated[float, Field(ge=0, le=MAX_COUNTDOWN, allow_inf_nan=False)] | None = None
    category: Category | None = None
    #: Seconds from now within which it must be sent, or never (it ends ``expired``): a
    #: one-time code is no use hours later. Finite, above 0, at most a year.
    ttl: (
        Annotated[float, Field(gt=0, le=MAX_COUNTDOWN, allow_inf_nan=False, strict=True)] | None
    ) = None

    @model_validator(mode="after")
    def _sendable_in_time(self) -> "Message":
        if self.ttl is not None and self.countdown is not None and self.countdown >= self.ttl:
            raise ValueError(
                f"countdown ({self.countdown:g} s) must be shorter than ttl ({self.ttl:g} s): "
                "the delivery would expire before it could be sent"
            )
        return self


class Envelope(Model):
    """The task message. Carries the channel's *name*; its config stays on the worker side."""

    schema_version: Literal[1] = 1
    id: Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_storable)]
    channel: ChannelName
    address: Address
    payload: Payload
    idempotency_key: IdempotencyKey | None = None
    #: Not to be sent before this time: a producer's countdown too long to wait in the
    #: broker (longer than its visibility timeout) is scheduled from the delivery log.
    not_before: AwareDatetime | None = None
    category: Category | None = None
    #: The W3C traceparent of the span that sent it (OpenTelemetry, docs/tracing.md); a
    #: malformed one reads as None, so it can never fail the delivery.
    traceparent: Traceparent = None
    #: The subscription a fanned-out delivery came from (None: sent directly).
    subscription: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    #: The subscription's throttle per recipient (``3/h``), which the worker enforces.
    per_recipient: PerRecipient | None = None
    #: The name of the API key that sent it (None: Python or the command line).
    owner: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    #: Sent with a test key: it goes the whole way through the workers and the log, but
    #: no provider is called.
    test: bool = False
    #: Not to be sent after this time (the producer's ``ttl``): it ends ``expired``.
    expires_at: AwareDatetime | None = None


class Receipt(Model):
    """What `send` returns at once: the delivery id to look up later."""

    id: str
    channel: str
    idempotency_key: str | None = None
