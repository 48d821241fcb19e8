"""The inbound backend kit: a kind of provider request turned into one inbound message.

The seed's RapidSMS backends in this project's shape: a backend kind subclasses
``InboundBackend``, declares its ``BackendConfig`` (secrets typed ``SecretStr``), and
implements ``parse``, which verifies the request and maps the provider's parameters to
``identity`` and ``text``. It registers in the entry-point group ``delivery.inbound``.
"""

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, JsonValue

from delivery.dispatchers.base import DispatcherConfig
from delivery.errors import InvalidInbound
from schemas import CHANNEL_NAME_PATTERN

#: Longest sender identity kept (E.164 numbers, e-mail addresses, user ids).
MAX_IDENTITY = 255
#: Longest message text kept; far beyond a concatenated SMS (1,600 characters).
MAX_TEXT = 10_000
#: Largest extra fields kept, as JSON.
MAX_EXTRA_BYTES = 32_768
#: Longest provider message id kept.
MAX_PROVIDER_ID = 255


class BackendConfig(DispatcherConfig):
    """A backend's config. Built on the dispatchers' config model, so secret fields are
    found, encrypted at rest and masked the same way."""

    channel: str | None = Field(
        default=None,
        pattern=CHANNEL_NAME_PATTERN,
        description="Channel that replies and opt-outs for this backend go through",
    )


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """A provider's HTTP request, as a backend kind needs it (no web framework inside)."""

    method: str
    #: The URL the provider called, as the provider knows it (``DELIVERY_PUBLIC_URL``
    #: and the path behind a proxy), query string included: signatures cover it.
    url: str
    #: Header names in lower case.
    headers: Mapping[str, str]
    #: The query string's parameters, in order, repeats kept.
    query: list[tuple[str, str]]
    body: bytes
    #: The body's media type in lower case, without parameters ("" when none was given).
    content_type: str = ""
    #: Form-encoded body parameters, in order, repeats kept.
    form: list[tuple[str, str]] = field(default_factory=list)
    #: The JSON body, when it was JSON.
    json: Any = None

    @property
    def is_json(self) -> bool:
        return self.content_type == "application/json" or self.content_type.endswith("+json")

    def params(self) -> dict[str, Any]:
        """The request's parameters: the query string's, overlaid with a form body's or a
        JSON object body's. The last of repeated parameters wins."""
        merged: dict[str, Any] = dict(self.query)
        if self.is_json:
            if not isinstance(self.json, dict):
                raise InvalidInbound("the JSON body must be an object")
            merged.update(self.json)
        else:
            merged.update(self.form)
        return merged


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """What a backend made of a request."""

    identity: str
    text: str
    extra: dict[str, JsonValue] = field(default_factory=dict)
    #: The provider's id for the message: a retry with the same id is the same message.
    provider_id: str | None = None

    def checked(self) -> "InboundMessage":
        """The message, if it is within the limits the log keeps.

        Raises:
            InvalidInbound: a field is empty or too long.
        """
        if not self.identity.strip():
            raise InvalidInbound("identity: required")
        if len(self.identity) > MAX_IDENTITY:
            raise InvalidInbound(f"identity: longer than {MAX_IDENTITY} characters")
        if len(self.text) > MAX_TEXT:
            raise InvalidInbound(f"text: longer than {MAX_TEXT} characters")
        if self.provider_id is not None and not 0 < len(self.provider_id) <= MAX_PROVIDER_ID:
            raise InvalidInbound(f"provider id: must be 1-{MAX_PROVIDER_ID} characters")
        if len(json.dumps(self.extra, default=str)) > MAX_EXTRA_BYTES:
            raise InvalidInbound(f"extra fields: larger than {MAX_EXTRA_BYTES} bytes")
        return self


@dataclass(frozen=True, slots=True)
class Reply:
    """The body a backend answers an accepted request with."""

    body: str
    media_type: str = "application/json"


class InboundBackend(ABC):
    """Turns one kind of provider request into an ``InboundMessage``.

    Subclasses set the class attributes and implement ``parse``; they take their
    validated config through ``__init__``.
    """

    slug: ClassVar[str]
    verbose_name: ClassVar[str]
    config_class: ClassVar[type[BackendConfig]] = BackendConfig

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    @abstractmethod
    def parse(self, request: InboundRequest) -> InboundMessage:
        """Verify the request and map it to a message.

        Raises:
            BadSignature: the signature is missing or does not verify (answered 403).
            InvalidInbound: the request is malformed or misses a field (answered 400).
        """

    def accepted(self, message_id: str, *, duplicate: bool) -> Reply:
        """What the provider is answered once the message is recorded and enqueued."""
        return Reply(json.dumps({"id": message_id, "duplicate": duplicate}))


def scalar(params: Mapping[str, Any], name: str, *, what: str) -> str:
    """The parameter ``name`` as text (numbers allowed: phone numbers arrive as JSON
    numbers), or InvalidInbound naming it. A dotted name reaches into JSON objects.

    Raises:
        InvalidInbound: missing, or not text or a number.
    """
    value: Any = params
    for part in name.split(".") if name not in params else [name]:
        if not isinstance(value, Mapping) or part not in value:
            raise InvalidInbound(f"{what} parameter {name!r}: required")
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidInbound(f"{what} parameter {name!r}: must be text")
    return value if isinstance(value, str) else str(value)
