"""The dispatcher base class: one kind of transport (the Bitcaster shape from the seeds)."""

import contextlib
import threading
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr

from delivery.dispatchers.protocol import AddressType, Protocol
from delivery.dispatchers.receipts import ProviderReceipt
from schemas import Payload

T = TypeVar("T")

#: How a secret value is shown wherever a person may see it.
MASK = "********"


class DispatcherConfig(BaseModel):
    """A dispatcher's channel config. Fields typed ``SecretStr`` are encrypted at rest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def secret_fields(cls) -> frozenset[str]:
        return frozenset(
            name for name, info in cls.model_fields.items() if _mentions_secret(info.annotation)
        )

    @classmethod
    def describe_fields(cls) -> list[dict[str, object]]:
        secrets = cls.secret_fields()
        fields = []
        for name, info in cls.model_fields.items():
            fields.append(
                {
                    "name": name,
                    "type": _type_name(info.annotation),
                    "required": info.is_required(),
                    "default": None
                    if info.is_required()
                    else _jsonable(info.get_default(call_default_factory=True)),
                    "secret": name in secrets,
                    "description": info.description or "",
                }
            )
        return fields


def _mentions_secret(annotation: object) -> bool:
    if annotation is SecretStr:
        return True
    return any(_mentions_secret(arg) for arg in typing.get_args(annotation))


def _type_name(annotation: object) -> str:
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    return str(annotation).replace("typing.", "")


def _jsonable(value: object) -> object:
    if isinstance(value, SecretStr):
        return MASK
    if value is None or isinstance(value, str | int | float | bool | dict | list):
        return value
    return str(value)


class EmptyConfig(DispatcherConfig):
    pass


@dataclass(frozen=True, slots=True)
class DispatcherEnvironment:
    """What a dispatcher may know of the deployment, handed to it by whoever builds it
    (the worker builds it from settings), never read from global settings."""

    #: Outbound HTTP may reach loopback, private and link-local targets (tests, sinks).
    allow_private_networks: bool = False
    #: Where providers reach ``delivery serve`` (status callbacks), if anywhere.
    public_url: str | None = None


@dataclass(frozen=True, slots=True)
class SendContext:
    """What the worker knows about the delivery being sent."""

    delivery_id: str
    attempt: int = 1
    channel: str = ""
    #: The recipient's one-click unsubscribe link (RFC 8058), when the message has one.
    unsubscribe_url: str | None = None
    #: The W3C traceparent of the attempt's span (OpenTelemetry), for dispatchers whose
    #: provider can carry it on (the webhook's ``traceparent`` header); None: no tracing.
    traceparent: str | None = None
    #: Seconds left before the delivery's deadline (its ``ttl``), for providers that take
    #: one (Twilio's ``ValidityPeriod``); None when it has none.
    ttl: float | None = None


@dataclass(slots=True)
class SendResult:
    """What the provider said about an accepted message."""

    #: The provider's reference, so a person can find the message there (Slack ts, SID…).
    provider_ref: str | None = None
    #: The provider's status code (HTTP status, SMTP reply code).
    status: int | None = None
    #: Anything else worth keeping on the attempt record (segment count, queue id…).
    detail: dict[str, Any] = field(default_factory=dict)


class Dispatcher(ABC):
    """Delivers payloads over one kind of transport.

    Subclasses set the class attributes, implement ``_send`` and register through the
    ``delivery.dispatchers`` entry-point group. They take their validated config through
    ``__init__`` and get their I/O client per thread with ``get_local``.
    """

    slug: ClassVar[str]
    verbose_name: ClassVar[str]
    protocol: ClassVar[Protocol]
    config_class: ClassVar[type[DispatcherConfig]] = EmptyConfig
    address_types: ClassVar[frozenset[AddressType]] = frozenset({AddressType.ANY})

    def __init__(
        self,
        config: DispatcherConfig | None = None,
        *,
        environment: DispatcherEnvironment | None = None,
    ) -> None:
        self.config = config if config is not None else self.config_class()
        #: The safe default refuses private networks.
        self.environment = environment if environment is not None else DispatcherEnvironment()
        self._local = threading.local()
        self._clients: list[object] = []
        self._clients_lock = threading.Lock()

    def get_local(self, name: str, factory: Callable[[], T]) -> T:
        """This thread's instance of a client, made by ``factory`` on first use.

        Clients such as ``requests.Session`` are not safe to share between threads, but
        making one per message would throw away keep-alive connections.
        """
        try:
            return typing.cast(T, getattr(self._local, name))
        except AttributeError:
            client = factory()
            setattr(self._local, name, client)
            with self._clients_lock:
                self._clients.append(client)
            return client

    def drop_local(self, name: str) -> None:
        """Forget this thread's client (after the server closed it, say)."""
        client = self._local.__dict__.pop(name, None)
        if client is not None:
            with self._clients_lock:
                self._clients = [c for c in self._clients if c is not client]
            _close_quietly(client)

    def close(self) -> None:
        """Close every client this dispatcher made, in every thread."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            _close_quietly(client)
        self._local = threading.local()

    def validate_address(self, address: str) -> str:
        """Return the address in canonical form.

        Raises:
            InvalidAddress: the address is not one this dispatcher can reach.
        """
        return address.strip()

    def send(self, address: str, payload: Payload, *, context: SendContext) -> SendResult:
        """Validate the address, adapt the payload to the protocol, then call ``_send``.

        Raises:
            RetryableError: the provider may accept it later.
            PermanentError: retrying cannot help.
        """
        return self._send(
            self.validate_address(address), self.protocol.adapt(payload), context=context
        )

    def lookup_receipt(self, reference: str) -> ProviderReceipt | None:
        """Optional: ask the provider what became of the message ``reference`` names (a
        ``SendResult.provider_ref``), for a delivery whose receipt never came. None: the
        provider has nothing final or useful to say. Dispatchers that can ask override
        this (the SMS dispatcher reads Twilio's message resource); the default cannot, and
        deliveries through it are left as they are when their receipt timeout passes.

        Raises:
            NotImplementedError: this dispatcher cannot look receipts up (the default).
            RetryableError: ask again later.
            PermanentError: the provider will never say (the message is unknown to it).
        """
        raise NotImplementedError

    @classmethod
    def looks_up_receipts(cls) -> bool:
        """Whether ``lookup_receipt`` is implemented."""
        return cls.lookup_receipt is not Dispatcher.lookup_receipt

    @abstractmethod
    def _send(self, address: str, payload: Payload, *, context: SendContext) -> SendResult:
        """Deliver and return what the provider said.

        Raises:
            RetryableError: the provider may accept it later.
            PermanentError: retrying cannot help.
        """


def _close_quietly(client: object) -> None:
    close = getattr(client, "close", None)
    if callable(close):
        # Closing a dead client must not mask the real work.
        with contextlib.suppress(Exception):
            close()
