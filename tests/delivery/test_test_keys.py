"""A test key's delivery in the worker: the gates run, the log records it delivered, and
no provider is called (issue 27)."""

from pytest_httpserver import HTTPServer

from delivery.engine.assembly import assemble
from delivery.log import DeliveryLog
from schemas import Envelope, Payload, Settings
from tests.conftest import webhook_secret


def test_a_test_delivery_goes_the_whole_way_but_calls_no_provider(
    settings: Settings, httpserver: HTTPServer
) -> None:
    engine = assemble(settings, channel_ttl=0)
    engine.channels.add("hooks", "webhook", {"secret": webhook_secret()})
    url = httpserver.url_for("/h")
    test = Envelope(
        id="t-1", channel="hooks", address=url, payload=Payload(message="m"), owner="ci", test=True
    )
    # When a worker takes a test key's delivery
    decision = engine.service.deliver(test)
    # Then it is delivered, nothing reached the receiver, and the log says it was a test
    assert decision.outcome == "delivered"
    assert httpserver.log == []
    record = DeliveryLog.from_settings(settings).get("t-1")
    assert record is not None and record.status == "delivered"
    assert record.test and record.owner == "ci"
    [attempt] = record.attempts
    assert attempt.detail == {"test": True} and attempt.provider_ref is None
    # and the task message that would send it again from the log is a test still
    assert record.envelope().test and record.envelope().owner == "ci"
    engine.close()


def test_a_test_delivery_still_meets_the_gates(settings: Settings, httpserver: HTTPServer) -> None:
    # An address the channel cannot take fails as a real delivery would.
    engine = assemble(settings, channel_ttl=0)
    engine.channels.add("hooks", "webhook", {"secret": webhook_secret()})
    bad = Envelope(
        id="t-2", channel="hooks", address="not a url", payload=Payload(message="m"), test=True
    )
    assert engine.service.deliver(bad).outcome == "failed"
    engine.close()
