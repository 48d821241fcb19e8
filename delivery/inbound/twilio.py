"""KIND ``twilio``: Twilio's inbound SMS webhook (``From``, ``To``, ``Body``, ``MessageSid``…).

Every request must carry ``X-Twilio-Signature``, checked with the twilio library's own
``RequestValidator`` and the account's auth token over the URL Twilio called: behind a
proxy that is ``DELIVERY_PUBLIC_URL`` and the path, which the route puts in
``InboundRequest.url``. Accepted messages are answered with empty TwiML, so Twilio sends
no reply of its own; replies go through a channel (see ``delivery.inbound.handlers``).
"""

from typing import Any

from pydantic import Field, SecretStr
from twilio.request_validator import RequestValidator

from delivery.errors import BadSignature, InvalidInbound
from delivery.inbound.base import (
    BackendConfig,
    InboundBackend,
    InboundMessage,
    InboundRequest,
    Reply,
)

SIGNATURE_HEADER = "x-twilio-signature"
#: An empty TwiML document: "received, nothing to say".
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
#: Twilio's own names for the message id, newest first.
SID_FIELDS = ("MessageSid", "SmsMessageSid", "SmsSid")


class TwilioConfig(BackendConfig):
    auth_token: SecretStr = Field(description="Twilio Auth Token: verifies X-Twilio-Signature")
    account_sid: str | None = Field(
        default=None,
        pattern=r"^AC[0-9a-fA-F]{32}$",
        description="Only accept requests for this Account SID",
    )


class _FormParams(dict[str, list[str]]):
    """A form body's parameters, repeated names kept, read the way the twilio validator
    reads a MultiDict (``getall``). Ours, not starlette's: workers check receipts too, and
    a worker installs no web framework."""

    @classmethod
    def of(cls, form: list[tuple[str, str]]) -> "_FormParams":
        params = cls()
        for name, value in form:
            params.setdefault(name, []).append(value)
        return params

    def getall(self, name: str) -> list[str]:
        return self[name]


def verify_twilio(request: InboundRequest, auth_token: str) -> None:
    """Check ``X-Twilio-Signature`` over the URL and the parameters Twilio sent.

    Raises:
        BadSignature: the header is missing or does not verify.
    """
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        raise BadSignature("missing X-Twilio-Signature header")
    validator = RequestValidator(auth_token)
    params: Any
    if request.method == "GET":
        params = {}  # the query string is part of the signed URL
    elif request.is_json:
        # Twilio signs a JSON body through the bodySHA256 query parameter; without it
        # the validator would take the body for form parameters.
        if "bodySHA256" not in dict(request.query):
            raise BadSignature("X-Twilio-Signature: a JSON body needs bodySHA256 in the URL")
        params = request.body.decode("utf-8", "replace")
    else:
        params = _FormParams.of(request.form)
    try:
        valid = validator.validate(request.url, params, signature)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise BadSignature("X-Twilio-Signature does not match this request")


class TwilioBackend(InboundBackend):
    slug = "twilio"
    verbose_name = "Twilio inbound SMS webhook"
    config_class = TwilioConfig

    config: TwilioConfig

    def parse(self, request: InboundRequest) -> InboundMessage:
        verify_twilio(request, self.config.auth_token.get_secret_value())
        params = {k: v for k, v in request.params().items() if isinstance(v, str)}
        account = self.config.account_sid
        if account is not None and params.get("AccountSid") != account:
            # Signed by this token, but for another (sub)account: not ours to take.
            raise BadSignature("request is for another Twilio account")
        sender = params.get("From", "").strip()
        if not sender:
            raise InvalidInbound("From: required")
        sid = next((params[f] for f in SID_FIELDS if params.get(f)), None)
        if sid is None:
            raise InvalidInbound("MessageSid: required")
        extra = {k: v for k, v in params.items() if k not in ("From", "Body", *SID_FIELDS)}
        return InboundMessage(
            identity=sender, text=params.get("Body", ""), extra=dict(extra), provider_id=sid
        )

    def accepted(self, message_id: str, *, duplicate: bool) -> Reply:
        return Reply(EMPTY_TWIML, media_type="text/xml")
