"""Post to Slack with slack-sdk: through an incoming webhook, or with a bot token.

An incoming webhook is bound to one Slack channel when it is created, so a webhook channel
takes the address ``-``. A bot token posts with ``chat.postMessage`` to the channel (or
user) given as the address. Text goes as mrkdwn; the SLACK protocol folds the subject into
it as a bold first line. Block Kit blocks come from ``payload.data["blocks"]``.
"""

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, NoReturn
from urllib.error import URLError
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from requests.structures import CaseInsensitiveDict
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from delivery.dispatchers.base import (
    Dispatcher,
    DispatcherConfig,
    SendContext,
    SendResult,
)
from delivery.dispatchers.http import is_http_url, raise_for_status
from delivery.dispatchers.protocol import SLACK, AddressType
from delivery.errors import (
    InvalidAddress,
    PayloadRejected,
    PermanentError,
    RecipientRejected,
    RetryableError,
)
from schemas import Payload

#: The address of a webhook channel: the webhook already knows where it posts.
WEBHOOK_ADDRESS = "-"

#: Channel IDs (C…, G…, D…), user IDs (U…, W…) and channel names, with or without '#'.
_CHANNEL = re.compile(r"^(?:[CGDUW][A-Z0-9]{6,}|#?[a-z0-9][a-z0-9._-]{0,79})$")

#: ``error`` values (with HTTP 200) that mean "not now" rather than "never".
_RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
     "request_timeout"}
)  # fmt: skip
#: ``error`` values that are about the recipient rather than the message or credentials.
_RECIPIENT_ERRORS = frozenset(
    {"channel_not_found", "not_in_channel", "is_archived", "channel_is_archived",
     "cannot_dm_bot", "user_not_found", "user_disabled"}
)  # fmt: skip


def _http_url(value: str, *, what: str) -> str:
    if not is_http_url(value):
        raise ValueError(f"{what} must be an http(s) URL")
    return value


class SlackConfig(DispatcherConfig):
    webhook_url: SecretStr | None = Field(
        default=None,
        description="Incoming-webhook URL (it is the credential); posts to its own channel",
    )
    bot_token: SecretStr | None = Field(
        default=None, description="Bot token (xoxb-…) for chat.postMessage to the address"
    )
    api_base_url: str = Field(
        default="https://slack.com/api/", description="Slack Web API base URL"
    )
    timeout: Annotated[float, Field(gt=0, le=120)] = Field(
        default=10.0, description="Seconds to wait for Slack"
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            # Not the URL itself in the message: its path is the secret.
            _http_url(value.get_secret_value(), what="webhook_url")
        return value

    @field_validator("api_base_url")
    @classmethod
    def _api_base_url(cls, value: str) -> str:
        return _http_url(value, what="api_base_url").rstrip("/") + "/"

    @model_validator(mode="after")
    def _one_kind(self) -> "SlackConfig":
        if (self.webhook_url is None) == (self.bot_token is None):
            raise ValueError("set exactly one of webhook_url and bot_token")
        return self


class SlackDispatcher(Dispatcher):
    slug = "slack"
    verbose_name = "Slack (incoming webhook or bot token)"
    protocol = SLACK
    config_class = SlackConfig
    address_types: ClassVar[frozenset[AddressType]] = frozenset({AddressType.SLACK_CHANNEL})

    config: SlackConfig

    def validate_address(self, address: str) -> str:
        address = address.strip()
        if self.config.webhook_url is not None:
            if address != WEBHOOK_ADDRESS:
                raise InvalidAddress(
                    "this channel posts through an incoming webhook, which is bound to one "
                    f"Slack channel; use {WEBHOOK_ADDRESS!r} as the address",
                    dispatcher=self.slug,
                )
            return address
        if not _CHANNEL.match(address):
            raise InvalidAddress(
                f"{address!r} is not a Slack channel name or channel/user ID", dispatcher=self.slug
            )
        return address

    def _send(self, address: str, payload: Payload, *, context: SendContext) -> SendResult:
        blocks = payload.data.get("blocks")
        if blocks is not None and not (
            isinstance(blocks, list) and all(isinstance(block, dict) for block in blocks)
        ):
            raise PayloadRejected("data.blocks must be a list of Block Kit objects")
        extra: dict[str, Any] = {"blocks": blocks} if blocks else {}
        if self.config.webhook_url is not None:
            return self._post_webhook(self.config.webhook_url, payload.message, extra)
        return self._post_message(address, payload.message, extra)

    def _post_webhook(self, url: SecretStr, text: str, extra: dict[str, Any]) -> SendResult:
        host = urlsplit(url.get_secret_value()).hostname or "Slack"
        client = self.get_local(
            "webhook",
            lambda: WebhookClient(
                url.get_secret_value(), timeout=math.ceil(self.config.timeout), retry_handlers=[]
            ),
        )
        try:
            response = client.send(text=text, **extra)
        except OSError as exc:
            raise RetryableError(
                f"cannot reach {host}: {_cause(exc)}", dispatcher=self.slug
            ) from exc
        if not 200 <= response.status_code < 300:
            self._raise(response.status_code, response.headers, str(response.body or ""), host)
        return SendResult(status=response.status_code)

    def _post_message(self, channel: str, text: str, extra: dict[str, Any]) -> SendResult:
        config = self.config
        host = urlsplit(config.api_base_url).hostname or "Slack"
        token = config.bot_token.get_secret_value() if config.bot_token else None
        client = self.get_local(
            "web",
            lambda: WebClient(
                token=token,
                base_url=config.api_base_url,
                timeout=math.ceil(config.timeout),
                retry_handlers=[],
            ),
        )
        try:
            response = client.chat_postMessage(channel=channel, text=text, mrkdwn=True, **extra)
        except SlackApiError as exc:
            answer = exc.response
            self._raise(answer.status_code, answer.headers, str(answer.get("error", "")), host)
        except OSError as exc:
            raise RetryableError(
                f"cannot reach {host}: {_cause(exc)}", dispatcher=self.slug
            ) from exc
        return SendResult(
            provider_ref=response.get("ts"),
            status=response.status_code,
            detail={"channel": response.get("channel")},
        )

    def _raise(self, status: int, headers: Mapping[str, Any], error: str, host: str) -> NoReturn:
        """Raise what Slack's answer means: its HTTP status first, then its ``error``.

        Raises:
            RateLimited: 429, with Slack's Retry-After.
            RetryableError: 5xx, or an error such as ``internal_error``.
            RecipientRejected: the channel or user cannot be posted to.
            PermanentError: anything else (``invalid_auth``, ``token_revoked``…).
        """
        error = " ".join(error.split())[:120]
        reason = f"Slack said {error or 'nothing'} ({status})"
        if error in _RECIPIENT_ERRORS and 400 <= status < 500 and status != 429:
            raise RecipientRejected(reason, dispatcher=self.slug, status=status)
        raise_for_status(
            status,
            reason=error,
            # slack-sdk's headers are a plain dict, sometimes with a name in two cases:
            # look Retry-After up case-insensitively, keeping one of the values.
            headers=CaseInsensitiveDict({str(k): str(v) for k, v in headers.items()}),
            url=f"https://{host}/",  # the host alone: a webhook URL's path is its secret
            dispatcher=self.slug,
        )
        if error in _RETRYABLE_ERRORS:
            raise RetryableError(reason, dispatcher=self.slug, status=status)
        if error in _RECIPIENT_ERRORS:
            raise RecipientRejected(reason, dispatcher=self.slug, status=status)
        raise PermanentError(reason, dispatcher=self.slug, status=status)


def _cause(exc: OSError) -> str:
    # Only the kind of failure: urllib's messages can quote the URL, which may be secret.
    reason = exc.reason if isinstance(exc, URLError) else exc
    return type(reason).__name__
