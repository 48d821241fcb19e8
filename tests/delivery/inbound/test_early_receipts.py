"""Receipts always land: one that comes before the worker has recorded Twilio's message
SID is kept and matched as soon as it is; deliveries whose receipt never comes are looked
up at Twilio (a local stand-in) once their channel's receipt timeout has passed."""

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import insert, select, text
from typer.testing import CliRunner
from werkzeug import Request, Response

from delivery.clock import utcnow
from delivery.dispatchers.receipts import ProviderReceipt
from delivery.dispatchers.twilio_status import twilio_receipt_of
from delivery.engine.assembly import Assembly, assemble
from delivery.engine.receipt_lookups import ReceiptLookups
from delivery.engine.suppression import SuppressionList
from delivery.inbound.receipt_log import ReceiptBook
from delivery.log.counts import totals
from delivery.log.early_receipts import EARLY_RECEIPT_LIFETIME
from delivery.log.inbound import ReceiptRow
from delivery.log.receipt_tables import EarlyReceiptRow
from schemas import Envelope, Payload, Settings

SID = "AC" + "0123456789abcdef" * 2
MESSAGES = f"/2010-04-01/Accounts/{SID}/Messages.json"
TO = "+14155552671"


def message(sid: str) -> str:
    return f"/2010-04-01/Accounts/{SID}/Messages/{sid}.json"


def sid_of(n: int) -> str:
    return f"SM{n:032x}"


@dataclass
class World:
    engine: Assembly
    book: ReceiptBook
    twilio: HTTPServer

    def send(
        self,
        delivery_id: str,
        sid: str,
        channel: str = "sms-out",
        *,
        calling_back: Sequence[ProviderReceipt] = (),
    ) -> str:
        """Deliver through the Twilio stand-in; ``calling_back``: the callbacks it makes
        while the send is under way, before it answers (as real Twilio may)."""

        def create(request: Request) -> Response:
            for receipt in calling_back:
                self.book.record(channel, receipt)
            body = {"sid": sid, "status": "queued", "num_segments": "1"}
            return Response(json.dumps(body), status=201, content_type="application/json")

        self.twilio.expect_oneshot_request(MESSAGES, method="POST").respond_with_handler(create)
        envelope = Envelope(
            id=delivery_id, channel=channel, address=TO, payload=Payload(message="hi")
        )
        assert self.engine.service.deliver(envelope).outcome == "delivered"
        return self.status(delivery_id)

    def status(self, delivery_id: str) -> str:
        record = self.engine.log.get(delivery_id)
        assert record is not None
        return record.status

    def receipts(self, delivery_id: str) -> list[tuple[str, str]]:
        record = self.engine.log.get(delivery_id)
        assert record is not None
        return [(r["status"], r["provider_status"]) for r in record.receipts]

    def kept(self) -> list[str]:
        with self.engine.log.engine.connect() as connection:
            return list(connection.execute(select(EarlyReceiptRow.provider_ref)).scalars())

    def lookups(self) -> ReceiptLookups:
        return ReceiptLookups(self.engine.log.engine, self.engine.dispatchers.get)


@pytest.fixture
def world(settings: Settings, httpserver: HTTPServer) -> Iterator[World]:
    engine = assemble(settings, channel_ttl=0)
    config = {
        "account_sid": SID,
        "auth_token": "channel-auth-token",
        "from_number": "+14155550100",
        "api_base_url": httpserver.url_for("/"),
    }
    engine.channels.add("sms-out", "sms", config)
    engine.channels.add("sms-slow", "sms", config, receipt_timeout=7 * 86400.0)
    engine.channels.add("console", "console", {})
    book = ReceiptBook(engine.log.engine, SuppressionList(engine.log.engine))
    yield World(engine, book, httpserver)
    engine.close()


def callback(sid: str, status: str, code: str | None = None) -> ProviderReceipt:
    """What the receipts route reads from Twilio's status callback."""
    return twilio_receipt_of(sid, status, code, to=TO, detail={"To": TO})


def test_an_early_delivered_receipt_is_kept_then_confirms_the_delivery(world: World) -> None:
    # Given Twilio's callback, before the worker has recorded the message SID
    sid = sid_of(1)
    early = world.book.record("sms-out", callback(sid, "delivered"))
    assert early.delivery_id is None and not early.duplicate
    assert world.kept() == [sid]
    # When the worker records the SID, then the receipt lands as a timely one would
    assert world.send("d1", sid) == "confirmed"
    assert world.receipts("d1") == [("confirmed", "delivered")]
    assert world.kept() == []
    # and the counts behind /metrics have it as delivered, then confirmed
    with world.engine.log.engine.connect() as connection:
        ended = totals(connection).ended
    assert (ended[("sms-out", "delivered")], ended[("sms-out", "confirmed")]) == (1, 1)


def test_an_early_permanent_bounce_bounces_and_suppresses(world: World) -> None:
    sid = sid_of(2)
    early = [callback(sid, "sent"), callback(sid, "undelivered", "30005")]
    assert world.send("d1", sid, calling_back=early) == "bounced"
    assert world.receipts("d1") == [("pending", "sent"), ("bounced", "undelivered")]
    [suppressed] = world.book.suppressions.list(channel="sms-out")
    assert (suppressed.address, suppressed.reason) == (TO, "bounce 30005")


def test_double_receipts_are_kept_and_recorded_once(world: World) -> None:
    sid = sid_of(3)
    first = world.book.record("sms-out", callback(sid, "delivered"))
    again = world.book.record("sms-out", callback(sid, "delivered"))
    assert (first.duplicate, again.duplicate) == (False, True)
    assert world.kept() == [sid]
    world.send("d1", sid)
    # Twilio retrying the callback once more after the match records nothing new
    late = world.book.record("sms-out", callback(sid, "delivered"))
    assert late.delivery_id == "d1" and late.duplicate
    assert world.receipts("d1") == [("confirmed", "delivered")]


def test_a_receipt_for_another_channel_is_not_matched(world: World) -> None:
    sid = sid_of(4)
    world.book.record("sms-slow", callback(sid, "delivered"))
    assert world.send("d1", sid) == "delivered"
    assert world.kept() == [sid]


def test_the_clean_up_matches_what_crossed_and_drops_old_receipts(world: World) -> None:
    # Given a receipt kept while the worker recorded its SID (neither saw the other) …
    sid = sid_of(5)
    world.send("d1", sid)
    now = utcnow()
    with world.engine.log.engine.begin() as connection:
        rows = [
            {"provider_ref": sid, "received_at": now},
            {"provider_ref": sid_of(6), "received_at": now - EARLY_RECEIPT_LIFETIME},
        ]
        for row in rows:
            connection.execute(
                insert(EarlyReceiptRow).values(
                    channel="sms-out",
                    status="confirmed",
                    provider_status="delivered",
                    permanent=False,
                    **row,
                )
            )
    # When the receipts job takes its turn
    turn = world.lookups().run(now + timedelta(seconds=1))
    # Then the one is matched and the other, never matched for too long, dropped
    assert (turn.matched, turn.dropped) == (1, 1)
    assert world.status("d1") == "confirmed" and world.kept() == []


def test_the_timeout_looks_up_only_overdue_deliveries_without_receipt(world: World) -> None:
    # Given deliveries in every situation
    world.send("overdue", sid_of(10))
    world.send("pending", sid_of(11))
    world.send("unknown", sid_of(12))
    world.send("confirmed", sid_of(13))
    world.book.record("sms-out", callback(sid_of(13), "delivered"))
    world.send("slow", sid_of(14), channel="sms-slow")  # a 7-day timeout
    console = Envelope(id="console", channel="console", address="x", payload=Payload(message="hi"))
    world.engine.service.deliver(console)
    twilio = world.twilio
    twilio.expect_request(message(sid_of(10)), method="GET").respond_with_json(
        {"sid": sid_of(10), "status": "undelivered", "error_code": 30005, "to": TO}
    )
    twilio.expect_request(message(sid_of(11)), method="GET").respond_with_json(
        {"sid": sid_of(11), "status": "sent", "error_code": None, "to": TO}
    )
    twilio.expect_request(message(sid_of(12)), method="GET").respond_with_json(
        {"code": 20404, "message": "not found", "status": 404}, status=404
    )
    # When the receipts job runs after the 72-hour default timeout
    later = utcnow() + timedelta(hours=73)
    turn = world.lookups().run(later)
    # Then only the sms-out deliveries with no final receipt were looked up
    asked = sorted(r.path for r, _ in twilio.log if r.method == "GET")
    assert asked == sorted(message(sid_of(n)) for n in (10, 11, 12))
    assert (turn.looked_up, turn.recorded) == (3, 2)
    # and what Twilio said was recorded as a receipt, a bounce suppressing as ever
    assert world.status("overdue") == "bounced"
    assert world.receipts("overdue") == [("bounced", "undelivered")]
    assert [s.address for s in world.book.suppressions.list()] == [TO]
    assert world.status("pending") == "delivered"
    assert world.receipts("pending") == [("pending", "sent")]
    assert world.status("unknown") == "delivered" and world.receipts("unknown") == []
    assert world.status("slow") == "delivered" and world.status("console") == "delivered"
    # and a second turn looks nothing up again
    again = world.lookups().run(later + timedelta(minutes=1))
    assert again.looked_up == 0
    assert len([r for r, _ in twilio.log if r.method == "GET"]) == 3


def test_a_provider_away_is_asked_again_next_turn(world: World) -> None:
    world.send("d1", sid_of(20))
    later = utcnow() + timedelta(hours=73)
    world.twilio.expect_oneshot_request(message(sid_of(20)), method="GET").respond_with_data(
        "", status=503
    )
    assert world.lookups().run(later).looked_up == 0
    world.twilio.expect_oneshot_request(message(sid_of(20)), method="GET").respond_with_json(
        {"sid": sid_of(20), "status": "delivered", "error_code": None, "to": TO}
    )
    assert world.lookups().run(later).recorded == 1
    assert world.status("d1") == "confirmed"


def test_finding_overdue_deliveries_reads_the_partial_index(world: World) -> None:
    world.send("d1", sid_of(30))
    found = world.lookups().overdue("sms-out", utcnow() + timedelta(hours=1), 10)
    assert [d.id for d in found] == ["d1"]
    # The look-up's own shape: a range of the partial index, whatever the log's age
    query = (
        "EXPLAIN QUERY PLAN SELECT id FROM deliveries WHERE channel = 'sms-out' "
        "AND deliveries.status = 'delivered' AND delivered_at >= '1970-01-01' "
        "AND delivered_at <= '2100-01-01' ORDER BY delivered_at, id LIMIT 10"
    )
    with world.engine.log.engine.connect() as connection:
        plan = " ".join(str(row) for row in connection.execute(text(query)))
    assert "ix_deliveries_awaiting_receipt" in plan and "TEMP B-TREE" not in plan


@pytest.mark.parametrize("value", ["0h", "-1h", "72", "abc", "8d", "", "1.5h"])
def test_bad_receipt_timeouts_are_refused_with_exit_2(settings: Settings, value: str) -> None:
    from delivery.cli import app, channels  # noqa: F401 - registers the commands

    result = CliRunner().invoke(
        app, ["channels", "add", "c", "console", "--receipt-timeout", value]
    )
    assert result.exit_code == 2, result.output
    assert "--receipt-timeout" in result.output and "Traceback" not in result.output


def test_a_receipt_timeout_is_stored(settings: Settings) -> None:
    from delivery.cli import app, channels  # noqa: F401 - registers the commands

    result = CliRunner().invoke(
        app, ["channels", "add", "c", "console", "--receipt-timeout", "30m"]
    )
    assert result.exit_code == 0, result.output
    engine = assemble(settings)
    try:
        assert engine.channels.get("c").receipt_timeout == 1800.0
        engine.channels.add("d", "console", {})
        assert engine.channels.get("d").receipt_timeout == 72 * 3600.0
    finally:
        engine.close()


def test_unmatched_receipts_do_not_reach_the_receipts_table(world: World) -> None:
    world.book.record("sms-out", callback(sid_of(40), "delivered"))
    with world.engine.log.engine.connect() as connection:
        assert connection.execute(select(ReceiptRow.id)).all() == []


def test_the_sweeper_thread_survives_the_receipts_job_failing(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy.exc import OperationalError

    from workers.sweeper import Sweeper

    sweeper = Sweeper(world.engine.log, world.engine.settings, worker="w1")

    def log_away(*_: object, **__: object) -> bool:
        raise OperationalError("select", {}, Exception("the log is away"))

    monkeypatch.setattr(world.engine.log, "take_turn", log_away)
    assert sweeper.look_at_receipts() is None

    def bug(*_: object, **__: object) -> bool:
        raise KeyError("a bug")

    monkeypatch.setattr(world.engine.log, "take_turn", bug)
    assert sweeper.look_at_receipts() is None
    assert "looking after receipts failed" in caplog.text
