"""Delivery errors.

* DeliveryError
  + RetryableError            try again later: timeouts, 408/425/429/5xx, connection reset
    - RateLimited             the provider asked us to slow down; carries retry_after
  + PermanentError            never retry: other 4xx, bad address, rejected payload
    - RecipientRejected       the provider refused this recipient
    - InvalidAddress          the address is not one this dispatcher can reach
    - PayloadRejected         the payload cannot be carried by this protocol
    - ForbiddenTarget         the target resolves to a network we may not reach (SSRF)
    - Suppressed              the address is on the channel's suppression list
    - DeliveryFailed          recorded as failed: how a worker tells Celery (and Flower)
    - RenderError             a template failed on a context or went over its budget
    - TemplateRefused         a template, address or filter the sandbox will not compile
  + Skipped                   the recipient's say: preferences or a throttle; never sent
  + Expired                   its ttl passed before it could be sent; never sent late
  + ConfigurationError        a channel or setting is wrong; a person must fix it
    - UnknownChannel
    - SecretKeyMissing
  + PublishError              the producer could not publish (broker unreachable, or it failed)
  + RegistryError             a plugin (dispatcher, inbound kind, handler) cannot be used
    - UnknownDispatcher
    - DispatcherLoadError
    - UnknownInboundKind
    - UnknownHandler
    - PluginLoadError         an inbound kind or handler that does not load
  + InboundError              a provider's request we cannot accept (``http_status`` answers it)
    - InvalidInbound          400: the request is malformed or misses a field
      - RequestTooLarge       413: the body is larger than a provider's request can be
    - BadSignature            403: the signature is missing or wrong
    - UnknownBackend          404: no inbound backend (or receipt channel) of that name

Every class keeps ``args == (message,)`` and takes its context as keyword-only arguments,
so Celery can pickle and unpickle it.
"""

from typing import ClassVar


class DeliveryError(Exception):
    def __init__(self, message: str, *, dispatcher: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.dispatcher = dispatcher
        #: The provider's status code (HTTP status, SMTP reply code) when there was one.
        self.status = status


class RetryableError(DeliveryError):
    def __init__(
        self,
        message: str,
        *,
        dispatcher: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, dispatcher=dispatcher, status=status)
        #: Seconds the provider asked us to wait, when it said.
        self.retry_after = retry_after


class RateLimited(RetryableError):
    pass


class PermanentError(DeliveryError):
    pass


class RecipientRejected(PermanentError):
    pass


class InvalidAddress(PermanentError):
    pass


class PayloadRejected(PermanentError):
    pass


class ForbiddenTarget(PermanentError):
    pass


class DeliveryFailed(PermanentError):
    """A delivery (or some of a batch) ended ``failed`` in the log; raised by the task
    after recording, so that Celery and Flower show a FAILURE with the reason."""


class RenderError(PermanentError):
    """A template failed on a context, or went over its budget: retrying cannot help."""


class TemplateRefused(PermanentError):
    """A template, address or filter that does not compile or uses what the sandbox forbids."""

    def __init__(self, message: str, *, lineno: int | None = None) -> None:
        super().__init__(message)
        #: The template line at fault, when the compiler named one.
        self.lineno = lineno


class ConfigurationError(DeliveryError):
    pass


class UnknownChannel(ConfigurationError):
    pass


class SecretKeyMissing(ConfigurationError):
    pass


class PublishError(DeliveryError):
    pass


class RegistryError(DeliveryError):
    pass


class UnknownDispatcher(RegistryError):
    pass


class DispatcherLoadError(RegistryError):
    pass


class Suppressed(PermanentError):
    pass


class Skipped(DeliveryError):
    """Not a failure: the delivery ends ``skipped``, as the recipient asked."""


class Expired(DeliveryError):
    """Too late: the delivery ends ``expired``, never sent after its ttl."""


class UnknownInboundKind(RegistryError):
    pass


class UnknownHandler(RegistryError):
    pass


class PluginLoadError(RegistryError):
    pass


class InboundError(DeliveryError):
    #: The HTTP status a provider is answered with.
    http_status: ClassVar[int] = 400


class InvalidInbound(InboundError):
    http_status = 400


class RequestTooLarge(InvalidInbound):
    http_status = 413


class BadSignature(InboundError):
    http_status = 403


class UnknownBackend(InboundError):
    http_status = 404
