"""The gate pipeline: a new send policy plugs in as a gate, and the service carries out its
verdict (send, wait in the log, reroute, skip or fail) without knowing what it is."""

from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from pytest_httpserver import HTTPServer

from delivery.clock import utcnow
from delivery.engine.assembly import assemble
from delivery.engine.gates import PROCEED, Pass, Refuse, Route, Verdict, Wait
from delivery.engine.service import DeliveryService
from delivery.errors import DeliveryError
from delivery.log import Claim
from schemas import Envelope, Payload, Settings
from tests.conftest import webhook_secret


class Recorded:
    """A gate that answers ``verdict`` for addresses ending in ``suffix`` and remembers
    what it was asked."""

    name = "test"

    def __init__(self, suffix: str, verdict: Verdict) -> None:
        self.suffix, self.verdict = suffix, verdict
        self.asked: list[tuple[str, bool]] = []
        self.lookups = 0

    def check(self, route: Route, claim: Claim | None, look: Pass) -> Verdict:
        look.once(self.name, self._look_up)
        self.asked.append((route.address, claim is None))
        return self.verdict if route.address.endswith(self.suffix) else PROCEED

    def _look_up(self, routes: Sequence[Route]) -> int:
        self.lookups += 1
        return len(routes)


@pytest.fixture
def service(settings: Settings) -> DeliveryService:
    engine = assemble(settings, channel_ttl=0)
    engine.channels.add("hooks", "webhook", {"secret": webhook_secret()})
    return engine.service


def plug(service: DeliveryService, gate: Recorded) -> None:
    # Before the rate limit, as the recipients' gates go.
    service.gates.insert(len(service.gates) - 1, gate)


def envelope(url: str, delivery_id: str) -> Envelope:
    return Envelope(id=delivery_id, channel="hooks", address=url, payload=Payload(message="m"))


def test_a_refusing_gate_skips_the_delivery_without_a_send(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/kept").respond_with_data("", status=202)
    gate = Recorded("/skipped", Refuse(DeliveryError("marketing is off here"), ends="skipped"))
    plug(service, gate)
    decision = service.deliver(envelope(httpserver.url_for("/skipped"), "d1"))
    assert (decision.action, decision.outcome) == ("done", "skipped")
    record = service.log.get("d1")
    assert record is not None and record.status == "skipped"
    assert [a.outcome for a in record.attempts] == ["skipped"]
    assert "marketing is off here" in (record.last_error or "")
    assert httpserver.log == []
    # A copy of the message arriving later finds it final: still no send.
    assert service.deliver(envelope(httpserver.url_for("/skipped"), "d1")).action == "done"
    assert httpserver.log == []


def test_a_batch_asks_the_gate_per_delivery_and_looks_up_once(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/kept").respond_with_data("", status=202)
    gate = Recorded("/skipped", Refuse(DeliveryError("no"), ends="skipped"))
    plug(service, gate)
    urls = [httpserver.url_for("/kept"), httpserver.url_for("/skipped")] * 2
    decisions = service.deliver_many([envelope(u, f"d{i}") for i, u in enumerate(urls)])
    assert [d.outcome for d in decisions] == ["delivered", "skipped"] * 2
    assert gate.lookups == 1 and len(gate.asked) == 4
    assert len(httpserver.log) == 2


def test_a_waiting_gate_schedules_the_delivery_in_the_log(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    until = utcnow() + timedelta(hours=8)
    plug(service, Recorded("/h", Wait(until, "quiet hours", scheduled=True)))
    decision = service.deliver(envelope(httpserver.url_for("/h"), "d1"))
    # Hours away: not an ETA in the broker, the sweep sends it then.
    assert decision.action == "done" and decision.outcome is None
    record = service.log.get("d1")
    assert record is not None and record.status == "scheduled"
    assert record.next_attempt_at == until
    assert record.attempts == [] and httpserver.log == []
    # Not due yet: a copy of the message waits too; once due it is claimed and sent.
    assert service.deliver(envelope(httpserver.url_for("/h"), "d1")).action == "done"
    service.gates.pop(-2)
    with service.log.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE deliveries SET next_attempt_at = NULL")
    httpserver.expect_request("/h").respond_with_data("", status=202)
    assert service.deliver(envelope(httpserver.url_for("/h"), "d1")).outcome == "delivered"


def test_a_scheduled_delivery_can_be_cancelled(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    plug(service, Recorded("/h", Wait(utcnow() + timedelta(hours=1), "quiet", scheduled=True)))
    service.deliver(envelope(httpserver.url_for("/h"), "d1"))
    assert service.log.cancel("d1").status == "cancelled"


def test_the_dry_run_asks_the_same_gates_and_reserves_nothing(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    gate = Recorded("/skipped", Refuse(DeliveryError("off"), ends="skipped"))
    plug(service, gate)
    skipped = service.preview(envelope(httpserver.url_for("/skipped"), "preview"))
    assert isinstance(skipped, Refuse) and skipped.ends == "skipped"
    assert service.preview(envelope(httpserver.url_for("/kept"), "preview")) == PROCEED
    assert [dry for _, dry in gate.asked] == [True, True]
    assert service.log.get("preview") is None and httpserver.log == []


def test_the_dry_run_raises_what_the_worker_would_fail_with(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    url = httpserver.url_for("/h")
    service.suppressions.add("hooks", url, "opt-out")
    with pytest.raises(DeliveryError, match="suppression list"):
        service.preview(envelope(url, "preview"))


def test_a_paused_channel_is_a_wait_in_the_dry_run(service: DeliveryService) -> None:
    service.dispatchers.channels.set_paused("hooks", True)
    verdict = service.preview(envelope("https://example.com/h", "preview"))
    assert isinstance(verdict, Wait) and "delivery channels resume hooks" in verdict.reason
    assert isinstance(verdict.until, datetime)


def test_the_sweep_sends_a_scheduled_delivery_when_it_is_due(
    service: DeliveryService, httpserver: HTTPServer
) -> None:
    until = utcnow() + timedelta(hours=8)
    plug(service, Recorded("/h", Wait(until, "quiet hours", scheduled=True)))
    service.deliver(envelope(httpserver.url_for("/h"), "d1"))
    assert service.log.sweep(now=utcnow(), horizon=60, grace=30, resweep=60) == []
    found = service.log.sweep(now=until + timedelta(seconds=1), horizon=60, grace=30, resweep=60)
    assert [envelope.id for envelope, _ in found] == ["d1"]
