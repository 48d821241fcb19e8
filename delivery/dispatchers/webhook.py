"""POST the payload as JSON, signed following the Standard Webhooks specification."""

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

import urllib3
from pydantic import Field, SecretStr, field_validator
from standardwebhooks.webhooks import Webhook

from delivery.dispatchers.base import (
    Dispatcher,
    DispatcherConfig,
    DispatcherEnvironment,
    SendContext,
    SendResult,
)
from delivery.dispatchers.http import is_http_url, raise_for_status, urllib3_error
from delivery.dispatchers.netguard import GuardedPoolManager, make_pool_manager
from delivery.dispatchers.protocol import WEBHOOK, AddressType
from delivery.errors import InvalidAddress
from schemas import Payload

USER_AGENT = "delivery-webhook/1"


class WebhookConfig(DispatcherConfig):
    secret: SecretStr = Field(description="Signing secret, whsec_ followed by base64 (24-64 bytes)")
    timeout: Annotated[float, Field(gt=0, le=120)] = Field(
        default=10.0, description="Seconds to wait for the receiver"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers (not secret)"
    )

    @field_validator("secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith("whsec_"):
            raise ValueError(
                "must start with 'whsec_' (generate one with `delivery keygen --webhook`)"
            )
        try:
            key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be whsec_ followed by base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError("must decode to 24-64 bytes")
        return value


class WebhookDispatcher(Dispatcher):
    slug = "webhook"
    verbose_name = "Webhook (Standard Webhooks)"
    protocol = WEBHOOK
    config_class = WebhookConfig
    address_types: ClassVar[frozenset[AddressType]] = frozenset({AddressType.URL})

    config: WebhookConfig

    def __init__(
        self, config: WebhookConfig, *, environment: DispatcherEnvironment | None = None
    ) -> None:
        super().__init__(config, environment=environment)
        self._signer = Webhook(config.secret.get_secret_value())

    def validate_address(self, address: str) -> str:
        address = address.strip()
        if not is_http_url(address):
            raise InvalidAddress(f"{address!r} is not an http(s) URL", dispatcher=self.slug)
        parts = urlsplit(address)
        if parts.username or parts.password:
            raise InvalidAddress("webhook URLs may not carry credentials", dispatcher=self.slug)
        return address

    def _pool(self) -> GuardedPoolManager:
        return make_pool_manager(allow_private_networks=self.environment.allow_private_networks)

    def _send(self, address: str, payload: Payload, *, context: SendContext) -> SendResult:
        # Only the payload is posted: channel config and secrets never reach the endpoint.
        body = json.dumps(
            payload.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False
        )
        now = datetime.now(UTC)
        headers = {
            **self.config.headers,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": context.delivery_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(context.delivery_id, now, body),
        }
        if context.traceparent:
            # The receiver's spans join the delivery's trace (W3C Trace Context).
            headers["traceparent"] = context.traceparent
        pool = self.get_local("http", self._pool)
        host = urlsplit(address).hostname
        try:
            response = pool.request(
                "POST", address, body=body.encode(), headers=headers, timeout=self.config.timeout
            )
        except urllib3.exceptions.HTTPError as exc:
            raise urllib3_error(exc, dispatcher=self.slug, host=host) from exc
        # The body was read whole (preload), so the connection is back in the pool.
        raise_for_status(
            response.status,
            reason=response.reason,
            headers=response.headers,
            # urllib3 gives the path alone (``/hook?token=…``): name the host we asked.
            url=address,
            dispatcher=self.slug,
        )
        return SendResult(provider_ref=response.headers.get("x-request-id"), status=response.status)
