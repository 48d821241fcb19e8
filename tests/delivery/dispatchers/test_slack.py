"""The Slack dispatcher against a local HTTP server standing in for Slack."""

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from pytest_httpserver import HTTPServer

from delivery.dispatchers.base import SendContext
from delivery.dispatchers.slack import SlackConfig, SlackDispatcher
from delivery.errors import (
    DeliveryError,
    InvalidAddress,
    PayloadRejected,
    PermanentError,
    RateLimited,
    RecipientRejected,
    RetryableError,
)
from schemas import Payload
from tests.support.environment import LOCAL
from tests.support.servers import free_port

CONTEXT = SendContext(delivery_id="d-1")
TOKEN = "xoxb-test-token"
POST_MESSAGE = "/api/chat.postMessage"

Factory = Callable[..., SlackDispatcher]


@pytest.fixture
def slack(httpserver: HTTPServer) -> Iterator[Factory]:
    """Slack dispatchers pointed at the local server (bot token unless told otherwise)."""
    made: list[SlackDispatcher] = []

    def make(**config: Any) -> SlackDispatcher:
        if "webhook_url" not in config:
            config = {"bot_token": TOKEN, "api_base_url": httpserver.url_for("/api/"), **config}
        made.append(
            SlackDispatcher(SlackConfig.model_validate({"timeout": 5, **config}), environment=LOCAL)
        )
        return made[-1]

    yield make
    for dispatcher in made:
        dispatcher.close()


def answer(httpserver: HTTPServer, body: Any, status: int = 200, **headers: str) -> None:
    httpserver.expect_oneshot_request(POST_MESSAGE, method="POST").respond_with_json(
        body, status=status, headers=headers
    )


def test_bot_posts_mrkdwn_with_bold_subject_and_records_ts(
    httpserver: HTTPServer, slack: Factory
) -> None:
    # Given Slack accepting the message
    answer(httpserver, {"ok": True, "channel": "C0123456", "ts": "1712345678.000200"})
    # When we send with a subject
    result = slack().send(
        "#ops", Payload(message="Disk is _full_", subject="Disk alert"), context=CONTEXT
    )
    # Then Slack got the bot token, the channel and the subject as a bold first line
    [(request, _)] = httpserver.log
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    body = request.get_json()
    assert body == {"channel": "#ops", "text": "*Disk alert*\n\nDisk is _full_", "mrkdwn": True}
    assert result.provider_ref == "1712345678.000200"
    assert result.status == 200
    assert result.detail == {"channel": "C0123456"}


def test_blocks_are_passed_through(httpserver: HTTPServer, slack: Factory) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    answer(httpserver, {"ok": True, "ts": "1.2"})
    slack().send("C0123456", Payload(message="hi", data={"blocks": blocks}), context=CONTEXT)
    [(request, _)] = httpserver.log
    assert request.get_json()["blocks"] == blocks
    assert request.get_json()["text"] == "hi"  # still the notification fallback


def test_malformed_blocks_are_rejected_before_sending(
    httpserver: HTTPServer, slack: Factory
) -> None:
    with pytest.raises(PayloadRejected, match="blocks"):
        slack().send("C0123456", Payload(message="hi", data={"blocks": "nope"}), context=CONTEXT)
    assert httpserver.log == []


def test_429_is_rate_limited_with_retry_after(httpserver: HTTPServer, slack: Factory) -> None:
    answer(httpserver, {"ok": False, "error": "ratelimited"}, status=429, **{"Retry-After": "30"})
    with pytest.raises(RateLimited) as caught:
        slack().send("#ops", Payload(message="hi"), context=CONTEXT)
    assert caught.value.retry_after == 30
    assert caught.value.status == 429
    assert "ratelimited" in str(caught.value)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("channel_not_found", RecipientRejected),
        ("not_in_channel", RecipientRejected),
        ("is_archived", RecipientRejected),
        ("invalid_auth", PermanentError),
        ("token_revoked", PermanentError),
        ("account_inactive", PermanentError),
        ("no_permission", PermanentError),
        ("internal_error", RetryableError),
    ],
)
def test_slack_errors(
    httpserver: HTTPServer, slack: Factory, error: str, kind: type[DeliveryError]
) -> None:
    answer(httpserver, {"ok": False, "error": error})
    with pytest.raises(kind, match=error) as caught:
        slack().send("#ops", Payload(message="hi"), context=CONTEXT)
    assert TOKEN not in str(caught.value)


def test_500_is_retryable(httpserver: HTTPServer, slack: Factory) -> None:
    httpserver.expect_oneshot_request(POST_MESSAGE).respond_with_data("oops", status=500)
    with pytest.raises(RetryableError) as caught:
        slack().send("#ops", Payload(message="hi"), context=CONTEXT)
    assert caught.value.status == 500


def test_connection_refused_is_retryable(slack: Factory) -> None:
    dispatcher = slack(api_base_url=f"http://127.0.0.1:{free_port()}/api/")
    with pytest.raises(RetryableError, match="cannot reach"):
        dispatcher.send("#ops", Payload(message="hi"), context=CONTEXT)


def test_incoming_webhook(httpserver: HTTPServer, slack: Factory) -> None:
    # Given an incoming webhook that answers "ok", as Slack's do
    httpserver.expect_oneshot_request("/services/T1/B2/xyz", method="POST").respond_with_data("ok")
    blocks = [{"type": "divider"}]
    dispatcher = slack(webhook_url=httpserver.url_for("/services/T1/B2/xyz"))
    # When we send to the webhook's own channel
    result = dispatcher.send(
        "-", Payload(message="hi", subject="S", data={"blocks": blocks}), context=CONTEXT
    )
    # Then the text and blocks arrived; webhooks give no ts
    [(request, _)] = httpserver.log
    assert json.loads(request.get_data()) == {"text": "*S*\n\nhi", "blocks": blocks}
    assert result.status == 200
    assert result.provider_ref is None


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, "channel_not_found", RecipientRejected),
        (410, "channel_is_archived", RecipientRejected),
        (403, "invalid_token", PermanentError),
        (400, "invalid_payload", PermanentError),
        (500, "rollup_error", RetryableError),
        (429, "rate_limited", RateLimited),
    ],
)
def test_incoming_webhook_errors(
    httpserver: HTTPServer, slack: Factory, status: int, body: str, kind: type[DeliveryError]
) -> None:
    path = "/services/T1/B2/secret-part"
    httpserver.expect_oneshot_request(path).respond_with_data(
        body, status=status, headers={"Retry-After": "3"}
    )
    with pytest.raises(kind, match=body) as caught:
        slack(webhook_url=httpserver.url_for(path)).send(
            "-", Payload(message="hi"), context=CONTEXT
        )
    assert caught.value.status == status
    assert "secret-part" not in str(caught.value)
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 3


def test_webhook_connection_refused_does_not_reveal_the_url(slack: Factory) -> None:
    url = f"http://127.0.0.1:{free_port()}/services/T1/B2/secret-part"
    with pytest.raises(RetryableError) as caught:
        slack(webhook_url=url).send("-", Payload(message="hi"), context=CONTEXT)
    assert "secret-part" not in str(caught.value)


@pytest.mark.parametrize("address", ["#ops", "ops-alerts", "C0123ABCD", "U0123ABCD"])
def test_bot_addresses(slack: Factory, address: str) -> None:
    assert slack().validate_address(f" {address} ") == address


@pytest.mark.parametrize("address", ["-", "#Has Spaces", "http://example.com", "#" + "x" * 81])
def test_bad_bot_addresses(slack: Factory, address: str) -> None:
    with pytest.raises(InvalidAddress):
        slack().validate_address(address)


def test_webhook_channels_take_dash_only(slack: Factory) -> None:
    dispatcher = slack(webhook_url="https://hooks.slack.com/services/T/B/x")
    assert dispatcher.validate_address("-") == "-"
    with pytest.raises(InvalidAddress, match="incoming webhook"):
        dispatcher.validate_address("#ops")


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"bot_token": TOKEN, "webhook_url": "https://hooks.slack.com/services/T/B/x"},
        {"webhook_url": "hooks.slack.com/services/T/B/x"},
        {"bot_token": TOKEN, "api_base_url": "ftp://example.com"},
        {"bot_token": TOKEN, "channel": "#ops"},
    ],
)
def test_config_is_checked(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        SlackConfig.model_validate(config)
    # What `delivery channels add` shows (the messages, not pydantic's echo of the input).
    assert "T/B/x" not in " ".join(error["msg"] for error in caught.value.errors())
