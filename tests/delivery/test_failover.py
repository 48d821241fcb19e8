"""Failover to a backup channel: when the primary's breaker is open or its attempts are used
up on provider-side errors; never for the recipient's own permanent error."""

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from delivery.engine.assembly import Assembly, assemble
from delivery.engine.service import DeliveryService
from delivery.errors import ConfigurationError
from schemas import Envelope, Payload, Settings
from tests.conftest import webhook_secret


@pytest.fixture
def engine(settings: Settings, httpserver: HTTPServer) -> Assembly:
    assembly = assemble(settings, channel_ttl=0)
    secret = webhook_secret()
    # Both channels post to the same URL; the receiver tells them apart by a header.
    assembly.channels.add(
        "backup", "webhook", {"secret": secret, "headers": {"x-channel": "backup"}},
        retry_schedule=(0, 10),
    )  # fmt: skip
    assembly.channels.add(
        "primary", "webhook", {"secret": secret, "headers": {"x-channel": "primary"}},
        retry_schedule=(0, 10), fallback="backup",
    )  # fmt: skip
    return assembly


def answer(primary: int, backup: int = 204):
    def respond(request: Request) -> Response:
        return Response(status=primary if request.headers["x-channel"] == "primary" else backup)

    return respond


def envelope(url: str, channel: str = "primary") -> Envelope:
    return Envelope(id="d1", channel=channel, address=url, payload=Payload(message="m"))


def due_now(service: DeliveryService) -> None:
    with service.log.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE deliveries SET next_attempt_at = NULL")


def channels_hit(httpserver: HTTPServer) -> list[str]:
    return [request.headers["x-channel"] for request, _ in httpserver.log]


def test_attempts_used_up_on_the_primary_move_it_to_the_backup(
    engine: Assembly, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_handler(answer(503))
    service, url = engine.service, httpserver.url_for("/h")
    assert service.deliver(envelope(url)).outcome == "retry"
    due_now(service)
    # the second and last attempt on the primary fails: it moves, due at once
    moved = service.deliver(envelope(url))
    assert (moved.action, moved.outcome, moved.countdown) == ("requeue", "retry", 0.0)
    record = service.log.get("d1")
    assert record is not None and record.channel == "backup" and record.status == "retrying"
    assert record.attempts[-1].detail["failover_to"] == "backup"
    assert record.attempts[-1].detail["failover_from"] == "primary"
    # the message the task publishes again still says "primary": the log's channel wins
    assert service.deliver(envelope(url)).outcome == "delivered"
    assert channels_hit(httpserver) == ["primary", "primary", "backup"]
    record = service.log.get("d1")
    assert record is not None and record.status == "delivered" and record.dispatcher == "webhook"
    assert [a.outcome for a in record.attempts] == ["retry", "retry", "delivered"]


def test_the_backup_gets_a_full_set_of_attempts(engine: Assembly, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/h").respond_with_handler(answer(503, 503))
    service, url = engine.service, httpserver.url_for("/h")
    for _ in range(4):
        service.deliver(envelope(url))
        due_now(service)
    record = service.log.get("d1")
    assert record is not None and record.status == "failed" and record.channel == "backup"
    assert channels_hit(httpserver) == ["primary", "primary", "backup", "backup"]


def test_a_permanent_error_does_not_fail_over(engine: Assembly, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/h").respond_with_handler(answer(400))
    decision = engine.service.deliver(envelope(httpserver.url_for("/h")))
    assert (decision.action, decision.outcome) == ("done", "failed")
    record = engine.service.log.get("d1")
    assert record is not None and record.channel == "primary" and record.status == "failed"
    assert channels_hit(httpserver) == ["primary"]


def test_an_open_breaker_moves_deliveries_without_trying_the_primary(
    engine: Assembly, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_handler(answer(503))
    with engine.log.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE channels SET breaker_open_until = '2999-01-01 00:00:00' WHERE name = 'primary'"
        )
    service, url = engine.service, httpserver.url_for("/h")
    moved = service.deliver(envelope(url))
    assert (moved.action, moved.outcome) == ("requeue", "retry")
    record = service.log.get("d1")
    assert record is not None and record.channel == "backup"
    assert "circuit breaker open on primary" in (record.attempts[0].error or "")
    assert service.deliver(envelope(url)).outcome == "delivered"
    assert channels_hit(httpserver) == ["backup"]


def test_channels_that_back_each_other_up_do_not_pass_a_delivery_to_and_fro(
    engine: Assembly, httpserver: HTTPServer
) -> None:
    secret = webhook_secret()
    engine.channels.add(
        "backup", "webhook", {"secret": secret, "headers": {"x-channel": "backup"}},
        retry_schedule=(0,), fallback="primary", replace=True,
    )  # fmt: skip
    httpserver.expect_request("/h").respond_with_handler(answer(503, 503))
    service, url = engine.service, httpserver.url_for("/h")
    for _ in range(6):
        service.deliver(envelope(url))
        due_now(service)
    record = service.log.get("d1")
    assert record is not None and record.status == "failed" and record.channel == "backup"
    assert channels_hit(httpserver) == ["primary", "primary", "backup"]


def test_a_fallback_must_exist_and_differ(engine: Assembly) -> None:
    with pytest.raises(ConfigurationError, match="own fallback"):
        engine.channels.add("x", "console", {}, fallback="x")
    with pytest.raises(ConfigurationError, match="no channel named 'nope'"):
        engine.channels.add("x", "console", {}, fallback="nope")
    [primary] = [c for c in engine.channels.summaries() if c["name"] == "primary"]
    assert primary["fallback"] == "backup"
