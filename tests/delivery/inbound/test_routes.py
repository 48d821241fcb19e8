"""``/inbound/NAME`` on a real uvicorn server: verified, recorded once, enqueued, answered."""

import json
from collections.abc import Iterator

import pytest
import requests
from twilio.request_validator import RequestValidator

from delivery.inbound import receipts, routes
from delivery.inbound.wiring import Inbound, current_inbound
from delivery.producer import get_publisher
from delivery.producer.celery_config import ROUTE_INBOUND_TASK
from schemas import Settings
from tests.conftest import webhook_secret
from tests.support.uvicorn_server import app_with, serving

TOKEN = "inbound-auth-token-0123456789"
SID = "AC" + "0123456789abcdef" * 2


@pytest.fixture
def inbound(settings: Settings) -> Inbound:
    return current_inbound()


@pytest.fixture
def base(inbound: Inbound) -> Iterator[str]:
    with serving(app_with(routes.router, receipts.router)) as url:
        yield url


def twilio_form(sid: str = "SM" + "1" * 32, body: str = "PING", **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "AccountSid": SID,
        "From": "+14155552671",
        "To": "+14155550100",
        "Body": body,
        "NumMedia": "0",
        **extra,
    }


def signed(url: str, form: dict[str, str], token: str = TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, form)}


def routed_ids(settings: Settings) -> list[str]:
    """The message ids of the route tasks on the (in-memory) broker queue."""
    ids = []
    with get_publisher(settings).app.connection_for_write() as connection:
        queue = connection.SimpleQueue(settings.queue)
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                break
            assert message.headers["task"] == ROUTE_INBOUND_TASK
            args, _, _ = message.decode()
            ids.append(args[0]["id"])
            message.ack()
        queue.close()
    return ids


def test_twilio_signed_message_is_recorded_enqueued_and_answered_with_twiml(
    inbound: Inbound, base: str, settings: Settings
) -> None:
    # Given a Twilio backend with its auth token
    inbound.backends.add("tw", "twilio", {"auth_token": TOKEN, "channel": "sms-out"})
    url, form = f"{base}/inbound/tw", twilio_form()
    routed_ids(settings)  # the in-memory broker is the process's: drop other tests' tasks
    # When Twilio posts a signed inbound SMS, twice (its retry)
    first = requests.post(url, data=form, headers=signed(url, form), timeout=5)
    again = requests.post(url, data=form, headers=signed(url, form), timeout=5)
    # Then both are answered with empty TwiML, and the message is recorded once
    for response in (first, again):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/xml")
        assert response.text.endswith("<Response/>")
    [entry] = inbound.inbox.find(backend="tw")
    assert (entry.identity, entry.text, entry.provider_id) == (
        "+14155552671",
        "PING",
        form["MessageSid"],
    )
    assert entry.extra["To"] == "+14155550100" and entry.status == "received"
    # and handed to the router (again for the retry, as it was not routed yet)
    assert routed_ids(settings) == [entry.id, entry.id]


def test_twilio_tampered_unsigned_or_other_token_is_403_and_not_recorded(
    inbound: Inbound, base: str
) -> None:
    inbound.backends.add("tw", "twilio", {"auth_token": TOKEN})
    url, form = f"{base}/inbound/tw", twilio_form()
    headers = signed(url, form)
    tampered = {**form, "Body": "send money"}
    cases = [
        (tampered, headers),
        (form, {}),
        (form, signed(url, form, token="someone-elses-token")),
        (form, signed(f"{base}/inbound/other", form)),
    ]
    for data, sig in cases:
        response = requests.post(url, data=data, headers=sig, timeout=5)
        assert response.status_code == 403, response.text
        assert "X-Twilio-Signature" in response.json()["detail"]
        assert TOKEN not in response.text
    assert inbound.inbox.find() == []


def test_twilio_public_url_is_what_the_signature_covers(
    inbound: Inbound, base: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the service behind a proxy at a public URL
    monkeypatch.setenv("DELIVERY_PUBLIC_URL", "https://sms.example.com/")
    from schemas import get_settings

    get_settings.cache_clear()
    behind = current_inbound()
    behind.backends.add("tw", "twilio", {"auth_token": TOKEN, "account_sid": SID})
    form = twilio_form()
    public = "https://sms.example.com/inbound/tw?source=proxy"
    # When Twilio signs the public URL, the request it reaches us with verifies
    ok = requests.post(
        f"{base}/inbound/tw?source=proxy", data=form, headers=signed(public, form), timeout=5
    )
    assert ok.status_code == 200, ok.text
    # and one signed for the URL we see behind the proxy does not
    seen = f"{base}/inbound/tw?source=proxy"
    assert requests.post(seen, data=form, headers=signed(seen, form), timeout=5).status_code == 403
    # and a request for another account is refused though signed with this token
    other = twilio_form(sid="SM" + "2" * 32, AccountSid="AC" + "f" * 32)
    refused = requests.post(
        f"{base}/inbound/tw?source=proxy", data=other, headers=signed(public, other), timeout=5
    )
    assert refused.status_code == 403


def test_twilio_get_webhook_is_signed_over_its_query(inbound: Inbound, base: str) -> None:
    inbound.backends.add("tw", "twilio", {"auth_token": TOKEN})
    form = twilio_form()
    url = requests.Request("GET", f"{base}/inbound/tw", params=form).prepare().url
    assert url is not None
    response = requests.get(url, headers=signed(url, {}), timeout=5)
    assert response.status_code == 200, response.text
    assert inbound.inbox.find()[0].text == "PING"


def test_twilio_without_sender_or_sid_is_400_naming_it(inbound: Inbound, base: str) -> None:
    inbound.backends.add("tw", "twilio", {"auth_token": TOKEN})
    url = f"{base}/inbound/tw"
    for missing, named in (("From", "From"), ("MessageSid", "MessageSid")):
        form = {k: v for k, v in twilio_form().items() if k != missing}
        response = requests.post(url, data=form, headers=signed(url, form), timeout=5)
        assert response.status_code == 400 and named in response.json()["detail"]
    assert inbound.inbox.find() == []


def test_http_backend_maps_params_and_keeps_required_fields(inbound: Inbound, base: str) -> None:
    # Given the seed's params map, and extra fields validated as its form does
    inbound.backends.add(
        "gw",
        "http",
        {
            "identity": "phone",
            "text": "message",
            "provider_id": "msgid",
            "required": "campaign,shortcode",
            "optional": "keyword",
        },
    )
    url = f"{base}/inbound/gw"
    # When a form post and a JSON post arrive (numbers allowed where text is meant)
    form = {"phone": "1112223333", "message": "ping", "campaign": "c1", "shortcode": "55"}
    assert requests.post(url, data={**form, "msgid": "a1"}, timeout=5).status_code == 200
    body = {"phone": 1112224444, "message": "hi", "campaign": "c2", "shortcode": "55", "msgid": 7}
    response = requests.post(url, json=body, timeout=5)
    # Then both are recorded with the mapped identity, text and the declared extras only
    assert response.status_code == 200 and response.json()["duplicate"] is False
    by_text = {e.text: e for e in inbound.inbox.find(backend="gw")}
    assert by_text["ping"].identity == "1112223333"
    assert by_text["ping"].extra == {"campaign": "c1", "shortcode": "55"}
    assert (by_text["hi"].identity, by_text["hi"].provider_id) == ("1112224444", "7")
    # and a message missing a required field, or the identity, is 400 naming it
    missing = requests.post(url, data={"phone": "1", "message": "x", "msgid": "b"}, timeout=5)
    assert missing.status_code == 400
    assert missing.json()["detail"] == "missing required parameter(s): campaign, shortcode"
    no_phone = requests.post(url, json={**body, "phone": None, "msgid": "c"}, timeout=5)
    assert no_phone.status_code == 400 and "'phone'" in no_phone.json()["detail"]
    assert len(inbound.inbox.find(backend="gw")) == 2


def test_http_backend_custom_validator_model(inbound: Inbound, base: str) -> None:
    # Given a backend whose parameters a pydantic model validates (the seed's custom form)
    inbound.backends.add(
        "only-me",
        "http",
        {
            "identity": "phone",
            "text": "message",
            "model": "tests.delivery.inbound.validators:OnlyTextMe",
        },
    )
    url = f"{base}/inbound/only-me"
    # When the number it accepts sends, its cleaned values are kept
    ok = requests.get(
        url, params={"phone": "1231231234", "message": "  hello ", "campaign": "x"}, timeout=5
    )
    assert ok.status_code == 200, ok.text
    [entry] = inbound.inbox.find(backend="only-me")
    assert (entry.text, entry.extra) == ("hello", {"campaign": "x"})
    # and another number is refused with the model's own words
    refused = requests.post(url, data={"phone": "999", "message": "hi", "campaign": "x"}, timeout=5)
    assert refused.status_code == 400
    assert "SMS received from number other than 1231231234" in refused.json()["detail"]
    assert len(inbound.inbox.find()) == 1


def test_http_backend_token_and_bad_bodies(inbound: Inbound, base: str) -> None:
    inbound.backends.add("gw", "http", {"token": "s3cret-token"})
    url = f"{base}/inbound/gw"
    message = {"identity": "alice", "text": "hello"}
    assert requests.post(url, json=message, timeout=5).status_code == 403
    wrong = requests.post(url, json=message, headers={"X-Inbound-Token": "guess"}, timeout=5)
    assert wrong.status_code == 403 and "s3cret" not in wrong.text
    good = {"X-Inbound-Token": "s3cret-token"}
    assert requests.post(url, json=message, headers=good, timeout=5).status_code == 200
    for data, content_type, status in (
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"\xff\xfe", "application/x-www-form-urlencoded", 400),
        (b"<xml/>", "text/xml", 400),
        (b"x" * (routes.MAX_BODY + 1), "application/json", 413),
    ):
        response = requests.post(
            url, data=data, headers={**good, "Content-Type": content_type}, timeout=5
        )
        assert response.status_code == status, (data[:20], response.text)
        assert set(response.json()) == {"detail"}
    assert len(inbound.inbox.find()) == 1


def test_unknown_backend_is_404(inbound: Inbound, base: str) -> None:
    response = requests.post(f"{base}/inbound/nobody", data={"a": "b"}, timeout=5)
    assert response.status_code == 404
    assert response.json() == {"detail": "no inbound backend named 'nobody'"}


def test_standard_webhooks_backend(inbound: Inbound, base: str) -> None:
    from standardwebhooks.webhooks import Webhook

    secret = webhook_secret()
    inbound.backends.add(
        "hooks", "standard-webhooks", {"secret": secret, "identity": "from", "text": "data.text"}
    )
    url = f"{base}/inbound/hooks"
    body = json.dumps({"from": "user-7", "data": {"text": "hello"}, "type": "message"})

    def headers(msg_id: str, payload: str = body) -> dict[str, str]:
        import datetime

        now = datetime.datetime.now(tz=datetime.UTC)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, payload),
            "Content-Type": "application/json",
        }

    assert requests.post(url, data=body, headers=headers("msg_1"), timeout=5).status_code == 200
    assert requests.post(url, data=body, headers=headers("msg_1"), timeout=5).json()["duplicate"]
    tampered = body.replace("hello", "hullo")
    assert requests.post(url, data=tampered, headers=headers("msg_2"), timeout=5).status_code == 403
    unsigned = {"Content-Type": "application/json"}
    assert requests.post(url, data=body, headers=unsigned, timeout=5).status_code == 403
    garbled = {**headers("msg_3"), "webhook-signature": "v1nocomma"}
    assert requests.post(url, data=body, headers=garbled, timeout=5).status_code == 403
    [entry] = inbound.inbox.find()
    assert (entry.identity, entry.text, entry.provider_id) == ("user-7", "hello", "msg_1")
    assert entry.extra == {"data": {"text": "hello"}, "type": "message"}
