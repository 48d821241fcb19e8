"""KIND ``standard-webhooks``: JSON signed as the Standard Webhooks specification says.

The ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers are verified
with the ``standardwebhooks`` library (which also refuses timestamps more than five
minutes off, so a captured request cannot be replayed later); ``webhook-id`` is the
provider id, so a sender's retry is not a second message. ``identity`` and ``text`` name
fields of the JSON object, dotted for nested ones (``data.from``).
"""

import base64
import binascii
import json
from typing import Any

from pydantic import Field, SecretStr, field_validator
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from delivery.errors import BadSignature, InvalidInbound
from delivery.inbound.base import (
    BackendConfig,
    InboundBackend,
    InboundMessage,
    InboundRequest,
    scalar,
)


def _webhook(secret: str) -> Webhook:
    """Raises: ValueError when the secret is not base64 (optionally after ``whsec_``)."""
    # Decoded strictly here: the library's own decoding skips stray characters.
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not a Standard Webhooks secret: not base64") from None
    if not key:
        raise ValueError("not a Standard Webhooks secret: empty")
    return Webhook(key)


class StandardWebhooksConfig(BackendConfig):
    secret: SecretStr = Field(description="Signing secret (whsec_…, base64)")
    identity: str = Field(default="identity", min_length=1, description="Field of the sender")
    text: str = Field(default="text", min_length=1, description="Field of the message text")

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        _webhook(value.get_secret_value())
        return value


class StandardWebhooksBackend(InboundBackend):
    slug = "standard-webhooks"
    verbose_name = "Standard Webhooks signed JSON"
    config_class = StandardWebhooksConfig

    config: StandardWebhooksConfig

    def __init__(self, config: StandardWebhooksConfig) -> None:
        super().__init__(config)
        self._webhook = _webhook(config.secret.get_secret_value())

    def parse(self, request: InboundRequest) -> InboundMessage:
        try:
            # (standardwebhooks before 1.1 always parses the verified body as JSON)
            self._webhook.verify(request.body, dict(request.headers))
        except WebhookVerificationError as exc:
            raise BadSignature(f"Standard Webhooks signature: {exc}") from None
        except json.JSONDecodeError:
            raise InvalidInbound("the body must be JSON") from None
        except (ValueError, binascii.Error) as exc:
            # A malformed signature header or a body that is not UTF-8.
            raise BadSignature(
                f"Standard Webhooks signature: malformed ({type(exc).__name__})"
            ) from None
        try:
            body: Any = json.loads(request.body)
        except ValueError:
            raise InvalidInbound("the body must be JSON") from None
        if not isinstance(body, dict):
            raise InvalidInbound("the JSON body must be an object")
        config = self.config
        return InboundMessage(
            identity=scalar(body, config.identity, what="identity"),
            text=scalar(body, config.text, what="text"),
            extra={k: v for k, v in body.items() if k not in (config.identity, config.text)},
            provider_id=request.headers.get("webhook-id"),
        )
