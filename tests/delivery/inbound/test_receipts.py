"""Receipts: the SMS dispatcher asks Twilio for them, ``/receipts/CHANNEL`` (real uvicorn)
verifies and records them, and moves deliveries on; permanent bounces suppress."""

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs

import pytest
import requests
from pytest_httpserver import HTTPServer
from twilio.request_validator import RequestValidator

from delivery.api import create_app
from delivery.engine.assembly import Assembly, assemble
from delivery.inbound.wiring import Inbound, current_inbound
from delivery.log.inbound import ReceiptRow
from delivery.log.receipt_tables import EarlyReceiptRow
from schemas import Envelope, Payload, Settings, get_settings
from tests.support.servers import free_port
from tests.support.uvicorn_server import serving

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "channel-auth-token"
MESSAGES = f"/2010-04-01/Accounts/{SID}/Messages.json"


@dataclass
class World:
    base: str
    engine: Assembly
    inbound: Inbound
    twilio: HTTPServer
    key: str

    def send(self, delivery_id: str, to: str, sid: str, channel: str = "sms-out") -> None:
        self.twilio.expect_oneshot_request(MESSAGES, method="POST").respond_with_json(
            {"sid": sid, "status": "queued", "num_segments": "1"}, status=201
        )
        envelope = Envelope(
            id=delivery_id, channel=channel, address=to, payload=Payload(message="hi")
        )
        assert self.engine.service.deliver(envelope).outcome == "delivered"

    def receipt(self, form: dict[str, str], *, token: str = TOKEN, channel: str = "sms-out"):
        url = f"{self.base}/receipts/{channel}"
        signature = RequestValidator(token).compute_signature(url, form)
        return requests.post(url, data=form, headers={"X-Twilio-Signature": signature}, timeout=5)


@pytest.fixture
def world(
    settings: Settings, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    port = free_port()
    # Providers reach this service here: the SMS dispatcher gives Twilio this callback.
    monkeypatch.setenv("DELIVERY_PUBLIC_URL", f"http://127.0.0.1:{port}")
    get_settings.cache_clear()
    engine = assemble(get_settings(), channel_ttl=0)
    config = {
        "account_sid": SID,
        "auth_token": TOKEN,
        "from_number": "+14155550100",
        "api_base_url": httpserver.url_for("/"),
    }
    engine.channels.add("sms-out", "sms", config)
    engine.channels.add("sms-own", "sms", {**config, "status_callback": "https://cb.example/x"})
    engine.channels.add("console", "console", {})
    # delivery serve's own app: its /receipts route, and GET /v1/deliveries/{id}
    app = create_app(get_settings())
    _, key = app.state.api.keys.add("tests", admin=True)  # reads deliveries sent from Python
    with serving(app, port=port) as base:
        yield World(base, engine, current_inbound(), httpserver, key)
    engine.close()


def status_form(sid: str, status: str, code: str | None = None) -> dict[str, str]:
    form = {
        "MessageSid": sid,
        "MessageStatus": status,
        "AccountSid": SID,
        "To": "+14155552671",
        "From": "+14155550100",
    }
    return {**form, "ErrorCode": code} if code else form


def test_dispatcher_asks_for_receipts_at_the_public_url(world: World) -> None:
    world.send("d1", "+14155552671", "SM" + "1" * 32)
    world.send("d2", "+14155552671", "SM" + "2" * 32, channel="sms-own")
    sent = [parse_qs(request.get_data(as_text=True)) for request, _ in world.twilio.log]
    assert sent[0]["StatusCallback"] == [f"{world.base}/receipts/sms-out"]
    # a channel's own status_callback wins
    assert sent[1]["StatusCallback"] == ["https://cb.example/x"]


def test_delivered_receipt_confirms_and_status_shows_every_receipt(world: World) -> None:
    sid = "SM" + "a" * 32
    world.send("d1", "+14155552671", sid)
    assert world.receipt(status_form(sid, "sent")).status_code == 200
    assert world.engine.log.get("d1").status == "delivered"  # type: ignore[union-attr]
    ok = world.receipt(status_form(sid, "delivered"))
    assert ok.status_code == 200 and ok.json() == {"recorded": True, "known": True}
    # Twilio retrying the same callback records nothing new
    assert world.receipt(status_form(sid, "delivered")).status_code == 200
    record = world.engine.log.get("d1")
    assert record is not None and record.status == "confirmed"
    doc = record.to_json()
    assert [(r["status"], r["provider_status"]) for r in doc["receipts"]] == [
        ("pending", "sent"),
        ("confirmed", "delivered"),
    ]
    assert doc["receipts"][1]["provider_ref"] == sid
    # and `delivery status` shows them
    from typer.testing import CliRunner

    from delivery.cli import app, deliveries  # noqa: F401 - registers the commands

    shown = CliRunner().invoke(app, ["status", "d1"])
    assert shown.exit_code == 0 and "confirmed" in shown.stdout
    assert "delivered" in shown.stdout and "sent" in shown.stdout
    # and GET /v1/deliveries/{id}, the same document
    served = requests.get(
        f"{world.base}/v1/deliveries/d1",
        headers={"Authorization": f"Bearer {world.key}"},
        timeout=5,
    ).json()
    assert served["status"] == "confirmed" and served["receipts"] == doc["receipts"]
    # a late "undelivered" does not take a confirmed delivery back
    assert world.receipt(status_form(sid, "undelivered", "30003")).status_code == 200
    assert world.engine.log.get("d1").status == "confirmed"  # type: ignore[union-attr]


def test_permanent_bounce_suppresses_and_later_sends_fail_without_twilio(world: World) -> None:
    # Given a message Twilio accepted, then reported undeliverable: unknown handset
    sid = "SM" + "b" * 32
    world.send("d1", "+14155552671", sid)
    assert world.receipt(status_form(sid, "undelivered", "30005")).status_code == 200
    record = world.engine.log.get("d1")
    assert record is not None and record.status == "bounced"
    assert record.receipts[0]["error_code"] == "30005"
    [suppressed] = world.inbound.suppressions.list(channel="sms-out")
    assert (suppressed.address, suppressed.reason) == ("+14155552671", "bounce 30005")
    # When the number is sent to again, written nationally
    calls = len(world.twilio.log)
    again = Envelope(
        id="d2", channel="sms-out", address="+1 415 555 2671", payload=Payload(message="hi")
    )
    assert world.engine.service.deliver(again).outcome == "failed"
    # Then it fails at once as suppressed, and Twilio is never called
    failed = world.engine.log.get("d2")
    assert failed is not None and failed.status == "failed"
    assert (failed.last_error or "").startswith("Suppressed: +14155552671 is on channel")
    assert len(world.twilio.log) == calls
    # and a temporary failure does not suppress
    sid3 = "SM" + "c" * 32
    world.send("d3", "+14155550199", sid3)
    assert world.receipt(status_form(sid3, "failed", "30003")).status_code == 200
    assert world.engine.log.get("d3").status == "bounced"  # type: ignore[union-attr]
    assert len(world.inbound.suppressions.list()) == 1


def test_unknown_reference_is_kept_and_answered_200(world: World) -> None:
    response = world.receipt(status_form("SM" + "f" * 32, "delivered"))
    assert response.status_code == 200 and response.json()["known"] is False
    with world.engine.log.engine.connect() as connection:
        rows = connection.execute(ReceiptRow.__table__.select()).all()
        kept = connection.execute(EarlyReceiptRow.__table__.select()).all()
    # Not against any delivery: kept until the worker records the reference
    assert rows == []
    assert [(r.channel, r.status, r.provider_ref) for r in kept] == [
        ("sms-out", "confirmed", "SM" + "f" * 32)
    ]


def test_bad_receipts_are_refused_and_not_recorded(world: World) -> None:
    sid = "SM" + "d" * 32
    world.send("d1", "+14155552671", sid)
    url = f"{world.base}/receipts/sms-out"
    form = status_form(sid, "delivered")
    tampered = {**form, "MessageStatus": "undelivered"}
    signature = RequestValidator(TOKEN).compute_signature(url, form)
    forged = requests.post(url, data=tampered, headers={"X-Twilio-Signature": signature}, timeout=5)
    assert forged.status_code == 403 and TOKEN not in forged.text
    assert requests.post(url, data=form, timeout=5).status_code == 403
    assert world.receipt(form, token="not-the-channels-token").status_code == 403
    other_account = {**form, "AccountSid": "AC" + "e" * 32}
    assert world.receipt(other_account).status_code == 403
    assert world.receipt({"MessageSid": sid}).status_code == 400
    assert world.receipt(form, channel="nosuch").status_code == 404
    assert world.receipt(form, channel="console").status_code == 404
    record = world.engine.log.get("d1")
    assert record is not None and record.status == "delivered" and record.receipts == []
