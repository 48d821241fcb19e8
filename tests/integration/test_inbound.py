"""Inbound end to end: real uvicorn, real redis-server, a real ``delivery worker`` with a
third party's handler installed beside it, and a local Twilio stand-in."""

import itertools
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests
from pytest_httpserver import HTTPServer
from twilio.request_validator import RequestValidator
from werkzeug import Request, Response

from delivery import send
from delivery.inbound import receipts, routes
from delivery.inbound.inbox import InboxEntry
from delivery.inbound.wiring import Inbound, current_inbound
from schemas import Payload, get_settings
from tests.integration.conftest import Stack
from tests.support.servers import free_port
from tests.support.uvicorn_server import app_with, serving

pytestmark = pytest.mark.integration

PLUGIN = Path(__file__).parent.parent / "fixtures" / "handler_plugin"
ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "integration-twilio-token"
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
ALICE, BOB, CAROL = "+14155552671", "+14155552672", "+14155552673"


@pytest.fixture(scope="module")
def handler_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The third party's handler package, installed as pip installs it."""
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "p"
    shutil.copytree(PLUGIN, source)  # building writes beside the sources
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return target


class TwilioStandIn:
    """Twilio's Messages API on loopback: every message accepted with a fresh SID."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.sids = (f"SM{n:032x}" for n in itertools.count(1))
        self.sent: list[dict[str, str]] = []
        server.expect_request(MESSAGES, method="POST").respond_with_handler(self._create)

    def _create(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}
        sid = next(self.sids)
        self.sent.append({**form, "sid": sid})
        return Response(
            f'{{"sid": "{sid}", "status": "queued", "num_segments": "1"}}',
            status=201,
            content_type="application/json",
        )


@pytest.fixture
def world(
    redis_stack: Stack,
    httpserver: HTTPServer,
    handler_site: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Stack, Inbound, str, TwilioStandIn]]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    # Providers reach the service at this URL; the worker gives it to Twilio as callback.
    monkeypatch.setenv("DELIVERY_PUBLIC_URL", public)
    get_settings.cache_clear()
    twilio = TwilioStandIn(httpserver)
    redis_stack.channels.add(
        "sms-out",
        "sms",
        {
            "account_sid": ACCOUNT,
            "auth_token": TOKEN,
            "from_number": "+14155550100",
            "api_base_url": httpserver.url_for("/"),
        },
    )
    inbound = current_inbound()
    inbound.backends.add("tw", "twilio", {"auth_token": TOKEN, "channel": "sms-out"})
    with serving(app_with(routes.router, receipts.router), port=port) as base:
        redis_stack.worker(PYTHONPATH=str(handler_site), DELIVERY_PUBLIC_URL=public)
        yield redis_stack, inbound, base, twilio


def twilio_post(base: str, path: str, form: dict[str, str], token: str = TOKEN):
    url = f"{base}{path}"
    signature = RequestValidator(token).compute_signature(url, form)
    return requests.post(url, data=form, headers={"X-Twilio-Signature": signature}, timeout=10)


def sms(sid: str, sender: str, body: str) -> dict[str, str]:
    return {"MessageSid": sid, "AccountSid": ACCOUNT, "From": sender, "To": "+14155550100",
            "Body": body}  # fmt: skip


def wait_for(what: str, check: Callable[[], bool], stack: Stack, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    logs = "\n".join(w.output()[-4000:] for w in stack.workers)
    raise TimeoutError(f"{what} did not happen within {timeout}s\n{logs}")


def entry(inbound: Inbound, provider_id: str) -> InboxEntry:
    [found] = [e for e in inbound.inbox.find() if e.provider_id == provider_id]
    return found


def test_inbound_sms_routed_replied_confirmed_bounced_and_suppressed(world) -> None:
    stack, inbound, base, twilio = world
    # Given Twilio posting signed inbound SMS: PING (twice: its retry), FLAKY, and a STOP
    ping = twilio_post(base, "/inbound/tw", sms("SMping", ALICE, "PING"))
    assert ping.status_code == 200 and ping.text.endswith("<Response/>")
    assert twilio_post(base, "/inbound/tw", sms("SMping", ALICE, "PING")).status_code == 200
    assert twilio_post(base, "/inbound/tw", sms("SMflaky", ALICE, "flaky data")).status_code == 200
    assert twilio_post(base, "/inbound/tw", sms("SMstop", BOB, "STOP")).status_code == 200
    # and a tampered one, which is refused and never recorded
    forged = twilio_post(base, "/inbound/tw", sms("SMforged", ALICE, "PING"), token="guess")
    assert forged.status_code == 403

    # When the real worker routes them, then each is handled by the handlers that take it
    def routed() -> bool:
        return {e.provider_id: e.status for e in inbound.inbox.find()} == {
            "SMping": "handled",
            "SMflaky": "handled",
            "SMstop": "handled",
        }

    wait_for("routing the three messages", routed, stack)
    handled = {h.handler: h for h in entry(inbound, "SMping").handling}
    assert set(handled) == {"echo"} and (handled["echo"].result or "").startswith("replied PONG")
    # the third party's handler failed once, was retried, and succeeded
    [flaky] = entry(inbound, "SMflaky").handling
    assert (flaky.handler, flaky.outcome, flaky.attempts) == ("flaky", "handled", 2)
    assert flaky.result == "stored after 2 tries"
    [stop] = entry(inbound, "SMstop").handling
    assert (stop.handler, stop.result) == ("opt-out", f"{BOB} suppressed on sms-out")

    # The echo reply went out once (Twilio's retry of PING is the same message), asking
    # Twilio for receipts at our public URL
    wait_for("the PONG reply", lambda: len(twilio.sent) == 1, stack)
    [pong] = twilio.sent
    assert (pong["To"], pong["Body"]) == (ALICE, "PONG")
    assert pong["StatusCallback"] == f"{base}/receipts/sms-out"
    [reply] = stack.log.find(channel="sms-out")
    wait_for("the reply recorded", lambda: stack.log.get(reply.id).status == "delivered", stack)

    # A receipt for it confirms it
    delivered = {"MessageSid": pong["sid"], "MessageStatus": "delivered", "AccountSid": ACCOUNT}
    assert twilio_post(base, "/receipts/sms-out", {**delivered, "To": ALICE}).status_code == 200
    confirmed = stack.log.get(reply.id)
    assert confirmed is not None and confirmed.status == "confirmed"
    assert [r["provider_status"] for r in confirmed.receipts] == ["delivered"]

    # A message to Carol bounces for good: bounced, and Carol is suppressed
    to_carol = send("sms-out", CAROL, Payload(message="hello"))
    wait_for("the message to Carol", lambda: len(twilio.sent) == 2, stack)
    wait_for("Carol's delivery", lambda: getattr(stack.log.get(to_carol.id), "status", "")
             == "delivered", stack)  # fmt: skip
    bounce = {"MessageSid": twilio.sent[1]["sid"], "MessageStatus": "undelivered",
              "ErrorCode": "30005", "AccountSid": ACCOUNT, "To": CAROL}  # fmt: skip
    assert twilio_post(base, "/receipts/sms-out", bounce).status_code == 200
    assert getattr(stack.log.get(to_carol.id), "status", None) == "bounced"

    # Then later sends to Bob (opted out) and Carol (bounced) fail at once as suppressed,
    # and Twilio is not called for them
    later = [send("sms-out", who, Payload(message="offer")).id for who in (BOB, CAROL)]
    stack.wait_until(later, {"failed"})
    for delivery_id in later:
        record = stack.log.get(delivery_id)
        assert record is not None and (record.last_error or "").startswith("Suppressed:")
    assert len(twilio.sent) == 2
    assert {s.address: s.reason for s in inbound.suppressions.list(channel="sms-out")} == {
        BOB: "opt-out",
        CAROL: "bounce 30005",
    }


def test_inbox_receipts_and_suppressions_on_postgresql(postgres_stack: Stack) -> None:
    # The ON CONFLICT paths are spelt by each dialect: PostgreSQL's, here.
    from delivery.inbound import InboundMessage
    from delivery.inbound.receipt_log import ProviderReceipt

    inbound = Inbound.from_assembly(postgres_stack.engine)
    message = InboundMessage(ALICE, "PING", {"To": "+1"}, provider_id="SMpg")
    first = inbound.inbox.record("tw", "twilio", message)
    again = inbound.inbox.record("tw", "twilio", message)
    assert (first.duplicate, again.duplicate, again.id) == (False, True, first.id)
    from delivery.inbound.inbox import HandlingOutcome

    retry, handled = HandlingOutcome.RETRY, HandlingOutcome.HANDLED
    assert inbound.inbox.record_handling(first.id, "echo", retry, "down") == 1
    assert inbound.inbox.record_handling(first.id, "echo", handled, "replied") == 2
    receipt = ProviderReceipt("SMnone", "failed", "bounced", "21610", ALICE, permanent=True)
    recorded = inbound.receipts.record("sms-out", receipt)
    assert recorded.delivery_id is None and recorded.suppressed and not recorded.duplicate
    assert inbound.receipts.record("sms-out", receipt).duplicate
    assert not inbound.suppressions.add("sms-out", ALICE, "opt-out")  # the first reason stays
    assert [(s.address, s.reason) for s in inbound.suppressions.list()] == [(ALICE, "bounce 21610")]
