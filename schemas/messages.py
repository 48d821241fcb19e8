"""What a producer sends and what travels in a task message."""

from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
)

#: Channel names are identifiers users type on the command line and see in Flower.
CHANNEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

#: A payload larger than this is refused where it enters: brokers and providers are no
#: place for bulk data, and one huge message must not stall a worker.
MAX_PAYLOAD_BYTES = 256 * 1024

ChannelName = Annotated[str, StringConstraints(pattern=CHANNEL_NAME_PATTERN)]
Address = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2048)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Payload(Model):
    """What to say. Dispatchers adapt it to what their protocol can carry."""

    message: str
    subject: str | None = None
    html_message: str | None = None
    data: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_too_large(self) -> "Payload":
        size = len(self.model_dump_json())
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
    countdown: Annotated[float, Field(ge=0)] | None = None


class Envelope(Model):
    """The task message. Carries the channel's *name*; its config stays on the worker side."""

    schema_version: Literal[1] = 1
    id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    channel: ChannelName
    address: Address
    payload: Payload
    idempotency_key: IdempotencyKey | None = None
    #: Not to be sent before this time: a producer's countdown too long to wait in the
    #: broker (longer than its visibility timeout) is scheduled from the delivery log.
    not_before: AwareDatetime | None = None


class Receipt(Model):
    """What `send` returns at once: the delivery id to look up later."""

    id: str
    channel: str
    idempotency_key: str | None = None
