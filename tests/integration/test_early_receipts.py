"""Receipts always land, end to end: real uvicorn serving ``/receipts``, real redis-server,
a real ``delivery worker``, the log on SQLite and on a real PostgreSQL, and a local Twilio
stand-in that calls back before it answers (as real Twilio may), or never calls back."""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from delivery import send
from delivery.inbound import receipts, routes
from delivery.inbound.wiring import current_inbound
from schemas import Payload, get_settings
from tests.integration.conftest import Stack
from tests.integration.test_inbound import ACCOUNT, TOKEN, TwilioStandIn, twilio_post
from tests.support.servers import free_port
from tests.support.uvicorn_server import app_with, serving

pytestmark = pytest.mark.integration

ALICE, BOB = "+14155552671", "+14155552672"
#: Twilio's message resource, which the worker reads when no receipt came.
MESSAGE = re.compile(rf"/2010-04-01/Accounts/{ACCOUNT}/Messages/(SM[0-9a-f]{{32}})\.json")


class CallingBackTwilio(TwilioStandIn):
    """Twilio that posts a message's status callback, signed as Twilio signs it, before it
    answers the request that sent the message: the worker cannot have recorded the SID.
    Without a callback URL it keeps quiet, and answers for its message resource instead."""

    def __init__(self, server: HTTPServer) -> None:
        super().__init__(server)
        #: What each recipient's message ends as: (MessageStatus, ErrorCode).
        self.fate: dict[str, tuple[str, str | None]] = {}
        self.callbacks: list[int] = []
        self.lookups: list[str] = []
        server.expect_request(MESSAGE, method="GET").respond_with_handler(self._resource)

    def _create(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}
        answer = super()._create(request)
        sid, callback = self.sent[-1]["sid"], form.get("StatusCallback")
        if callback:
            status, code = self.fate[form["To"]]
            report = {"MessageSid": sid, "MessageStatus": status, "AccountSid": ACCOUNT,
                      "To": form["To"], "From": form.get("From", "")}  # fmt: skip
            if code:
                report["ErrorCode"] = code
            base, path = callback.split("/receipts/")
            self.callbacks.append(twilio_post(base, f"/receipts/{path}", report).status_code)
        return answer

    def _resource(self, request: Request) -> Response:
        sid = MESSAGE.fullmatch(request.path).group(1)  # type: ignore[union-attr]
        self.lookups.append(sid)
        [message] = [m for m in self.sent if m["sid"] == sid]
        status, code = self.fate[message["To"]]
        body = {"sid": sid, "status": status, "to": message["To"],
                "error_code": int(code) if code else None, "error_message": None}  # fmt: skip
        return Response(json.dumps(body), status=200, content_type="application/json")


@dataclass
class World:
    stack: Stack
    twilio: CallingBackTwilio

    def status(self, delivery_id: str) -> str:
        record = self.stack.log.get(delivery_id)
        return record.status if record is not None else "unknown"


@pytest.fixture(params=["redis_stack", "postgres_stack"])
def world(
    request: pytest.FixtureRequest, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    # The log on SQLite and on PostgreSQL: the match and the look-ups are SQL of their own.
    stack: Stack = request.getfixturevalue(request.param)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("DELIVERY_PUBLIC_URL", public)
    get_settings.cache_clear()
    twilio = CallingBackTwilio(httpserver)
    config = {
        "account_sid": ACCOUNT,
        "auth_token": TOKEN,
        "from_number": "+14155550100",
        "api_base_url": httpserver.url_for("/"),
    }
    stack.channels.add("sms-out", "sms", config)
    # No callback URL of its own and no public URL reaches Twilio: no receipt ever comes,
    # and after a second the workers look its deliveries up.
    quiet = {**config, "status_callback": None}
    stack.channels.add("sms-quiet", "sms", quiet, receipt_timeout=1.0)
    with serving(app_with(routes.router, receipts.router), port=port):
        yield World(stack, twilio)


def test_receipts_posted_before_the_sid_is_recorded_still_land(world: World) -> None:
    # Given Twilio that reports on each message before answering the send
    world.twilio.fate = {ALICE: ("delivered", None), BOB: ("undelivered", "30005")}
    world.stack.worker(DELIVERY_PUBLIC_URL=get_settings().public_url or "")
    # When a real worker sends to both
    confirmed = send("sms-out", ALICE, Payload(message="code 1234")).id
    bounced = send("sms-out", BOB, Payload(message="code 5678")).id
    # Then the callbacks came first, were accepted, and still land on their deliveries
    world.stack.wait_until([confirmed], {"confirmed"})
    world.stack.wait_until([bounced], {"bounced"})
    assert world.twilio.callbacks == [200, 200]
    record = world.stack.log.get(bounced)
    assert record is not None
    assert [(r["status"], r["error_code"]) for r in record.receipts] == [("bounced", "30005")]
    # and the permanent bounce reached the suppression list
    suppressed = current_inbound().suppressions.list(channel="sms-out")
    assert [(s.address, s.reason) for s in suppressed] == [(BOB, "bounce 30005")]
    # and nothing is left waiting for a match
    assert world.twilio.lookups == []


def test_with_no_receipt_the_workers_look_the_message_up(world: World) -> None:
    # Given Twilio that never calls back, and a channel whose receipt timeout is a second
    world.twilio.fate = {ALICE: ("delivered", None), BOB: ("failed", "30003")}
    world.stack.worker()
    confirmed = send("sms-quiet", ALICE, Payload(message="hi")).id
    bounced = send("sms-quiet", BOB, Payload(message="hi")).id
    # When the workers' receipts job takes its turns, then what Twilio says is recorded
    world.stack.wait_until([confirmed, bounced], {"confirmed", "bounced"})
    assert (world.status(confirmed), world.status(bounced)) == ("confirmed", "bounced")
    record = world.stack.log.get(bounced)
    assert record is not None
    assert [(r["provider_status"], r["error_code"]) for r in record.receipts] == [
        ("failed", "30003")
    ]
    assert world.twilio.callbacks == []
    # a temporary failure suppresses nobody; and each message was looked up once
    assert current_inbound().suppressions.list() == []
    assert sorted(world.twilio.lookups) == sorted(m["sid"] for m in world.twilio.sent)
