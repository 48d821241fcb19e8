"""Backend kinds on their own: requests in, messages or the right refusal out."""

import datetime
import hashlib
import json
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from twilio.request_validator import RequestValidator

from delivery.errors import BadSignature, InvalidInbound
from delivery.inbound import InboundMessage, InboundRequest
from delivery.inbound.http import HttpBackend, HttpConfig
from delivery.inbound.standard_webhooks import StandardWebhooksBackend, StandardWebhooksConfig
from delivery.inbound.twilio import TwilioBackend, TwilioConfig
from tests.conftest import webhook_secret

TOKEN = "kinds-token"


def request(body: bytes, url: str = "https://x.example/inbound/b", **kw: object) -> InboundRequest:
    fields: dict[str, Any] = {
        "method": "POST",
        "url": url,
        "headers": {},
        "query": [],
        "body": body,
    }
    fields.update(kw)
    return InboundRequest(**fields)


def test_twilio_json_body_is_signed_through_body_sha256() -> None:
    body = json.dumps({"From": "+1", "Body": "x", "MessageSid": "SM1"}).encode()
    digest = hashlib.sha256(body).hexdigest()
    url = f"https://x.example/inbound/b?bodySHA256={digest}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    backend = TwilioBackend(TwilioConfig(auth_token=TOKEN))
    message = backend.parse(
        request(
            body,
            url=url,
            headers={"x-twilio-signature": signature},
            query=[("bodySHA256", digest)],
            content_type="application/json",
            json=json.loads(body),
        )
    )
    assert (message.identity, message.provider_id) == ("+1", "SM1")
    # the same body without bodySHA256 cannot be verified
    with pytest.raises(BadSignature, match="bodySHA256"):
        backend.parse(
            request(
                body,
                headers={"x-twilio-signature": signature},
                content_type="application/json",
                json=json.loads(body),
            )
        )


def test_http_kind_reaches_into_json_and_refuses_non_text() -> None:
    backend = HttpBackend(HttpConfig(identity="sender.id", text="body"))
    params = {"sender": {"id": 42}, "body": "hi"}
    parsed = backend.parse(request(b"", content_type="application/json", json=params))
    assert (parsed.identity, parsed.text) == ("42", "hi")
    for bad in ({"sender": {"id": True}, "body": "hi"}, {"sender": "x", "body": "hi"}):
        with pytest.raises(InvalidInbound, match=r"'sender\.id'"):
            backend.parse(request(b"", content_type="application/json", json=bad))


def test_message_limits() -> None:
    assert InboundMessage("+1", "hi").checked().text == "hi"
    for message, problem in (
        (InboundMessage("  ", "hi"), "identity: required"),
        (InboundMessage("x" * 256, "hi"), "identity: longer"),
        (InboundMessage("+1", "x" * 10_001), "text: longer"),
        (InboundMessage("+1", "hi", {"a": "x" * 40_000}), "extra fields"),
        (InboundMessage("+1", "hi", provider_id=""), "provider id"),
    ):
        with pytest.raises(InvalidInbound, match=problem):
            message.checked()


def test_standard_webhooks_refuses_an_old_replayed_request() -> None:
    secret = webhook_secret()
    backend = StandardWebhooksBackend(StandardWebhooksConfig(secret=secret))
    body = json.dumps({"identity": "u", "text": "t"})
    then = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(minutes=10)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(then.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_1", then, body),
    }
    with pytest.raises(BadSignature, match="too old"):
        backend.parse(request(body.encode(), headers=headers, content_type="application/json"))
