"""The SMS dispatcher against a local HTTP server standing in for Twilio's REST API."""

import base64
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from pytest_httpserver import HTTPServer

from delivery.dispatchers.base import SendContext
from delivery.dispatchers.protocol import sms_segments
from delivery.dispatchers.sms import SmsConfig, SmsDispatcher
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
SID = "AC" + "0123456789abcdef" * 2
SERVICE = "MG" + "fedcba9876543210" * 2
TOKEN = "twilio-auth-token"
MESSAGES = f"/2010-04-01/Accounts/{SID}/Messages.json"

Factory = Callable[..., SmsDispatcher]


@pytest.fixture
def sms(httpserver: HTTPServer) -> Iterator[Factory]:
    """SMS dispatchers whose Twilio client talks to the local server."""
    made: list[SmsDispatcher] = []

    def make(**overrides: Any) -> SmsDispatcher:
        config = {
            "account_sid": SID,
            "auth_token": TOKEN,
            "from_number": "+14155550100",
            "api_base_url": httpserver.url_for("/"),
            "timeout": 5,
            **overrides,
        }
        made.append(SmsDispatcher(SmsConfig.model_validate(config), environment=LOCAL))
        return made[-1]

    yield make
    for dispatcher in made:
        dispatcher.close()


def message_resource(**fields: Any) -> dict[str, Any]:
    return {
        "sid": "SM" + "a" * 32,
        "account_sid": SID,
        "status": "queued",
        "num_segments": "1",
        "to": "+14155552671",
        "body": "hi",
        **fields,
    }


def twilio_error(code: int, status: int, message: str = "error") -> dict[str, Any]:
    return {"code": code, "message": message, "more_info": "", "status": status}


def test_sends_records_sid_and_segments(httpserver: HTTPServer, sms: Factory) -> None:
    # Given Twilio accepting the message and saying it takes two segments
    httpserver.expect_oneshot_request(MESSAGES, method="POST").respond_with_json(
        message_resource(num_segments="2"), status=201
    )
    # When we send to a number written nationally, with a default region
    result = sms(default_region="US").send(
        "(415) 555-2671", Payload(message="x" * 200, subject="Alert"), context=CONTEXT
    )
    # Then Twilio got the E.164 number, our sender, the folded subject and our credentials
    [(request, _)] = httpserver.log
    assert request.form["To"] == "+14155552671"
    assert request.form["From"] == "+14155550100"
    assert request.form["Body"] == "Alert\n\n" + "x" * 200
    assert "MessagingServiceSid" not in request.form
    expected = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert result.provider_ref == "SM" + "a" * 32
    assert result.status == 201
    assert result.detail == {
        "segments": 2,
        "segments_from": "twilio",
        "encoding": "GSM-7",
        "twilio_status": "queued",
    }


def test_messaging_service_and_status_callback(httpserver: HTTPServer, sms: Factory) -> None:
    # Given a Messaging Service, for which Twilio reports 0 segments until a sender is chosen
    httpserver.expect_oneshot_request(MESSAGES, method="POST").respond_with_json(
        message_resource(num_segments="0", status="accepted"), status=201
    )
    dispatcher = sms(
        from_number=None,
        messaging_service_sid=SERVICE,
        status_callback="https://example.com/twilio/status",
    )
    result = dispatcher.send("+447911123456", Payload(message="Zażółć " * 20), context=CONTEXT)
    [(request, _)] = httpserver.log
    assert request.form["MessagingServiceSid"] == SERVICE
    assert request.form["StatusCallback"] == "https://example.com/twilio/status"
    assert "From" not in request.form
    # Then the count is our own: 140 characters outside GSM-7 take three UCS-2 parts
    assert result.detail["segments"] == 3
    assert result.detail["segments_from"] == "estimate"
    assert result.detail["encoding"] == "UCS-2"


def test_html_only_payload_is_rejected_before_any_request(
    httpserver: HTTPServer, sms: Factory
) -> None:
    with pytest.raises(PayloadRejected, match="only HTML"):
        sms().send("+14155552671", Payload(message="", html_message="<p>hi</p>"), context=CONTEXT)
    assert httpserver.log == []


def test_longer_than_twilio_takes_is_rejected(httpserver: HTTPServer, sms: Factory) -> None:
    with pytest.raises(PayloadRejected, match="1600"):
        sms().send("+14155552671", Payload(message="x" * 1601), context=CONTEXT)
    assert httpserver.log == []


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        (21211, 400, RecipientRejected),
        (21610, 400, RecipientRejected),
        (21614, 400, RecipientRejected),
        (21408, 400, RecipientRejected),
        (20003, 401, PermanentError),
        (21606, 400, PermanentError),
        (20500, 500, RetryableError),
    ],
)
def test_twilio_error_codes(
    httpserver: HTTPServer, sms: Factory, code: int, status: int, kind: type[DeliveryError]
) -> None:
    httpserver.expect_oneshot_request(MESSAGES).respond_with_json(
        twilio_error(code, status, "The reason"), status=status
    )
    with pytest.raises(kind, match=f"Twilio error {code}: .*The reason") as caught:
        sms().send("+14155552671", Payload(message="hi"), context=CONTEXT)
    assert caught.value.status == status
    assert TOKEN not in str(caught.value)


def test_20429_is_rate_limited_with_retry_after(httpserver: HTTPServer, sms: Factory) -> None:
    httpserver.expect_oneshot_request(MESSAGES).respond_with_json(
        twilio_error(20429, 429, "Too Many Requests"), status=429, headers={"Retry-After": "12"}
    )
    with pytest.raises(RateLimited) as caught:
        sms().send("+14155552671", Payload(message="hi"), context=CONTEXT)
    assert caught.value.retry_after == 12
    assert caught.value.status == 429


def test_503_without_a_body_is_retryable(httpserver: HTTPServer, sms: Factory) -> None:
    httpserver.expect_oneshot_request(MESSAGES).respond_with_data("", status=503)
    with pytest.raises(RetryableError) as caught:
        sms().send("+14155552671", Payload(message="hi"), context=CONTEXT)
    assert caught.value.status == 503


def test_connection_refused_is_retryable(sms: Factory) -> None:
    dispatcher = sms(api_base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RetryableError, match=r"cannot reach 127\.0\.0\.1"):
        dispatcher.send("+14155552671", Payload(message="hi"), context=CONTEXT)


def test_client_is_reused_per_thread(httpserver: HTTPServer, sms: Factory) -> None:
    httpserver.expect_request(MESSAGES).respond_with_json(message_resource(), status=201)
    dispatcher = sms()
    for _ in range(2):
        dispatcher.send("+14155552671", Payload(message="hi"), context=CONTEXT)
    assert len(httpserver.log) == 2
    assert len(dispatcher._clients) == 1


@pytest.mark.parametrize(
    ("address", "region", "expected"),
    [
        ("+1 415 555 2671", None, "+14155552671"),
        ("07911 123456", "GB", "+447911123456"),
        ("+44 (0)7911 123456", None, "+447911123456"),
    ],
)
def test_addresses_are_normalised_to_e164(
    sms: Factory, address: str, region: str | None, expected: str
) -> None:
    assert sms(default_region=region).validate_address(address) == expected


@pytest.mark.parametrize("address", ["07911 123456", "+1 555", "not a number", "+999123456789"])
def test_invalid_addresses(sms: Factory, address: str) -> None:
    with pytest.raises(InvalidAddress):
        sms().validate_address(address)


@pytest.mark.parametrize("sender", ["+44 7911 123456", "12345", "AcmeAlerts"])
def test_senders(sender: str) -> None:
    config = SmsConfig(account_sid=SID, auth_token=TOKEN, from_number=sender)
    assert config.from_number in {"+447911123456", "12345", "AcmeAlerts"}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"from_number": "+14155550100", "messaging_service_sid": SERVICE},
        {"from_number": "not-a-sender!"},
        {"from_number": "+14155550100", "account_sid": "AC123"},
        {"from_number": "+14155550100", "default_region": "Narnia"},
        {"from_number": "+14155550100", "status_callback": "ftp://example.com"},
    ],
)
def test_config_is_checked(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SmsConfig.model_validate({"account_sid": SID, "auth_token": TOKEN, **overrides})


@pytest.mark.parametrize(
    ("text", "encoding", "count"),
    [
        ("x" * 160, "GSM-7", 1),
        ("x" * 161, "GSM-7", 2),
        ("x" * 306, "GSM-7", 2),
        ("x" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # extension characters cost two septets
        ("€" * 81, "GSM-7", 2),
        ("x" * 152 + "€" + "x" * 152, "GSM-7", 3),  # an escape pair is not split
        ("ż" * 70, "UCS-2", 1),
        ("ż" * 71, "UCS-2", 2),
        ("😀" * 35, "UCS-2", 1),  # surrogate pairs: two code units each
        ("😀" * 36, "UCS-2", 2),
    ],
)
def test_segment_count(text: str, encoding: str, count: int) -> None:
    segments = sms_segments(text)
    assert (segments.encoding, segments.count) == (encoding, count)


@pytest.mark.parametrize(
    ("left", "sent"), [(None, None), (90.7, "90"), (0.2, "1"), (10 * 24 * 3600.0, "36000")]
)
def test_what_is_left_of_the_ttl_is_twilios_validity_period(
    httpserver: HTTPServer, sms: Factory, left: float | None, sent: str | None
) -> None:
    httpserver.expect_oneshot_request(MESSAGES, method="POST").respond_with_json(
        message_resource(), status=201
    )
    context = dataclasses.replace(CONTEXT, ttl=left)
    sms().send("+14155552671", Payload(message="code 123456"), context=context)
    [(request, _)] = httpserver.log
    assert request.form.get("ValidityPeriod") == sent
