"""Send SMS through Twilio's Messages API with the ``twilio`` SDK.

Addresses are normalised to E.164 with ``phonenumbers``. Long texts go whole (Twilio splits
them into segments) and the segment count is recorded: Twilio's when it gives one, else our
own count from ``delivery.dispatchers.protocol.sms_segments``. The SDK talks through
``_Transport``, its documented custom-HTTP-client hook: a ``requests`` session per thread,
an optional base URL (``api_base_url``) and the last response kept for its Retry-After
header.
"""

import logging
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, NoReturn
from urllib.parse import urlsplit, urlunsplit

import phonenumbers
import requests
from pydantic import Field, SecretStr, field_validator, model_validator
from twilio.base.exceptions import TwilioRestException
from twilio.http import HttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from delivery.dispatchers.base import (
    Dispatcher,
    DispatcherConfig,
    DispatcherEnvironment,
    SendContext,
    SendResult,
)
from delivery.dispatchers.http import is_http_url, raise_for_delivery, retry_after, transport_error
from delivery.dispatchers.protocol import SMS, AddressType, sms_segments
from delivery.dispatchers.receipts import ProviderReceipt
from delivery.dispatchers.twilio_status import twilio_receipt_of
from delivery.errors import (
    InvalidAddress,
    PermanentError,
    RateLimited,
    RecipientRejected,
    RetryableError,
)
from schemas import Payload

#: Twilio's longest ``ValidityPeriod``, seconds (error 90007 beyond it).
MAX_VALIDITY_PERIOD = 36_000

logger = logging.getLogger(__name__)

#: Twilio error codes about the recipient: an invalid, unsubscribed, landline or
#: unreachable number, or a region the account may not send to.
RECIPIENT_CODES = frozenset({21211, 21217, 21408, 21610, 21612, 21614})
#: Twilio error codes that mean "not now": too many requests, internal error, unavailable,
#: queue overflow. Other codes follow their HTTP status (4xx permanent, 5xx retryable).
RETRYABLE_CODES = frozenset({20429, 20500, 20503, 30001})

_ALPHANUMERIC_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
_SHORT_CODE = re.compile(r"^\d{3,8}$")


def e164(value: str, region: str | None = None) -> str:
    """``value`` as an E.164 number (``+447911123456``).

    Raises:
        ValueError: not a valid phone number (with ``region`` for numbers without ``+``).
    """
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{value!r} is not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"{value!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class SmsConfig(DispatcherConfig):
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$", description="Twilio Account SID")
    auth_token: SecretStr = Field(description="Twilio Auth Token")
    from_number: str | None = Field(
        default=None, description="Sender: an E.164 number, a short code or an alphanumeric ID"
    )
    messaging_service_sid: str | None = Field(
        default=None, pattern=r"^MG[0-9a-fA-F]{32}$", description="Messaging Service SID"
    )
    status_callback: str | None = Field(
        default=None, description="URL Twilio calls with status updates for each message"
    )
    default_region: str | None = Field(
        default=None, description="Region (e.g. GB) for numbers written without +country code"
    )
    api_base_url: str | None = Field(
        default=None, description="Send API calls to this base URL instead of Twilio's"
    )
    timeout: Annotated[float, Field(gt=0, le=120)] = Field(
        default=10.0, description="Seconds to wait for Twilio"
    )

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region code such as GB or US")
        return value.upper() if value else None

    @field_validator("status_callback", "api_base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not is_http_url(value):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _one_sender(self) -> "SmsConfig":
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from_number and messaging_service_sid")
        sender = self.from_number
        if sender is not None and not (
            _SHORT_CODE.match(sender) or _ALPHANUMERIC_SENDER.match(sender)
        ):
            # Frozen model: the normalised number replaces the one given.
            object.__setattr__(self, "from_number", e164(sender, self.default_region))
        return self


class _Transport(HttpClient):  # type: ignore[misc]  # twilio ships no type information
    """Twilio's custom HTTP client hook, backed by one ``requests`` session."""

    def __init__(self, base_url: str | None, timeout: float) -> None:
        super().__init__(logger, False, timeout)
        self.base_url = base_url
        self.session = requests.Session()
        #: The last raw response: Twilio's exceptions do not carry its headers.
        self.last_response: requests.Response | None = None

    def request(
        self,
        method: str,
        uri: str,
        params: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        body: dict[str, Any] = {"data": data}
        if headers and headers.get("Content-Type") == "application/json":
            body = {"json": data}
        self.last_response = None
        response = self.session.request(
            method,
            _rebase(uri, self.base_url) if self.base_url else uri,
            params=params,
            headers=headers,
            auth=auth,
            timeout=timeout or self.timeout,
            allow_redirects=allow_redirects,
            **body,
        )
        self.last_response = response
        return TwilioResponse(response.status_code, response.text, response.headers)

    def close(self) -> None:
        self.session.close()


def _rebase(url: str, base: str) -> str:
    """``url`` (on Twilio's hosts) moved under ``base``, keeping its path and query."""
    parts, to = urlsplit(url), urlsplit(base)
    return urlunsplit((to.scheme, to.netloc, to.path.rstrip("/") + parts.path, parts.query, ""))


@dataclass
class _Twilio:
    client: Client
    transport: _Transport

    def close(self) -> None:
        self.transport.close()


class SmsDispatcher(Dispatcher):
    slug = "sms"
    verbose_name = "SMS (Twilio)"
    protocol = SMS
    config_class = SmsConfig
    address_types: ClassVar[frozenset[AddressType]] = frozenset({AddressType.PHONE})

    config: SmsConfig

    def __init__(
        self, config: SmsConfig, *, environment: DispatcherEnvironment | None = None
    ) -> None:
        super().__init__(config, environment=environment)
        self._host = urlsplit(config.api_base_url or "https://api.twilio.com").hostname

    def validate_address(self, address: str) -> str:
        try:
            return e164(address.strip(), self.config.default_region)
        except ValueError as exc:
            raise InvalidAddress(str(exc), dispatcher=self.slug) from None

    def _connect(self) -> _Twilio:
        config = self.config
        transport = _Transport(config.api_base_url, config.timeout)
        client = Client(
            config.account_sid, config.auth_token.get_secret_value(), http_client=transport
        )
        return _Twilio(client, transport)

    def _send(self, address: str, payload: Payload, *, context: SendContext) -> SendResult:
        config = self.config
        sender: dict[str, str | int] = (
            {"messaging_service_sid": config.messaging_service_sid}
            if config.messaging_service_sid
            else {"from_": config.from_number or ""}
        )
        callback = config.status_callback or self._receipts_url(context)
        if callback:
            sender["status_callback"] = callback
        if context.ttl is not None:
            # What is left of the delivery's ttl, so Twilio does not send it late either
            # (whole seconds, 1 to Twilio's maximum of 10 hours).
            sender["validity_period"] = max(1, min(MAX_VALIDITY_PERIOD, math.floor(context.ttl)))
        twilio = self.get_local("twilio", self._connect)
        try:
            message = twilio.client.messages.create(to=address, body=payload.message, **sender)
        except TwilioRestException as exc:
            self._raise(exc, twilio.transport.last_response)
        except requests.RequestException as exc:
            raise transport_error(exc, dispatcher=self.slug, host=self._host) from exc
        counted = sms_segments(payload.message)
        # Twilio says 0 until a Messaging Service has picked a sender.
        reported = int(message.num_segments or 0)
        response = twilio.transport.last_response
        return SendResult(
            provider_ref=message.sid,
            status=response.status_code if response is not None else None,
            detail={
                "segments": reported or counted.count,
                "segments_from": "twilio" if reported else "estimate",
                "encoding": counted.encoding,
                "twilio_status": message.status,
            },
        )

    def lookup_receipt(self, reference: str) -> ProviderReceipt | None:
        """The message's status from Twilio's message resource
        (``GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json``), as a receipt.

        Raises:
            RetryableError: Twilio is unreachable, limiting or failing (5xx).
            PermanentError: Twilio does not know the message (404), or refuses (4xx).
        """
        twilio = self.get_local("twilio", self._connect)
        try:
            message = twilio.client.messages(reference).fetch()
        except TwilioRestException as exc:
            self._raise(exc, twilio.transport.last_response)
        except requests.RequestException as exc:
            raise transport_error(exc, dispatcher=self.slug, host=self._host) from exc
        if not message.status:
            return None
        code = message.error_code
        detail = {"looked_up": "twilio"}
        if message.error_message:
            detail["ErrorMessage"] = str(message.error_message)
        return twilio_receipt_of(
            message.sid or reference,
            str(message.status),
            str(code) if code else None,
            to=message.to,
            detail=detail,
        )

    def _receipts_url(self, context: SendContext) -> str | None:
        """Where Twilio reports on the message: ``delivery serve``'s receipts route for
        this channel, when the deployment says where providers reach it."""
        public = self.environment.public_url
        if not public or not context.channel:
            return None
        return f"{public.rstrip('/')}/receipts/{context.channel}"

    def _raise(self, exc: TwilioRestException, response: requests.Response | None) -> NoReturn:
        """Raise what Twilio's error means: its error code first, then the HTTP status.

        Raises:
            RecipientRejected: the number is invalid, unsubscribed, not mobile, unreachable.
            RateLimited: 429 / 20429, with Twilio's Retry-After.
            RetryableError: other "not now" codes, and 5xx.
            PermanentError: any other error.
        """
        code: int | None = exc.code
        status: int = exc.status
        what = f"Twilio error {code}: {' '.join(str(exc.msg).split())[:200]}" if code else ""
        wait = retry_after(response.headers) if response is not None else None
        if code in RECIPIENT_CODES:
            raise RecipientRejected(what, dispatcher=self.slug, status=status)
        if status == 429 or code == 20429:
            raise RateLimited(
                what or f"429 from {self._host}",
                dispatcher=self.slug,
                status=status,
                retry_after=wait,
            )
        if code in RETRYABLE_CODES:
            raise RetryableError(what, dispatcher=self.slug, status=status, retry_after=wait)
        if response is not None:
            if what:
                response.reason = what
            raise_for_delivery(response, dispatcher=self.slug)
        raise PermanentError(what or f"{status} from {self._host}", dispatcher=self.slug)
