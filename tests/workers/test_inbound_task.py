"""The router task's mapping of bad input and of the router's outcome. (The task on a real
worker is tested in tests/integration/test_inbound.py.)"""

import pytest

from delivery.errors import DeliveryFailed
from delivery.inbound import InboundMessage
from delivery.inbound.wiring import Inbound
from schemas import Settings


@pytest.fixture
def route(settings: Settings):
    from workers import inbound, tasks

    tasks.close_service()
    inbound.forget_router()
    yield inbound.route_inbound
    inbound.forget_router()
    tasks.close_service()


@pytest.mark.parametrize(
    "args", [[], ["garbage"], [None], [{"id": ""}], [{"id": "x", "schema_version": 2}]]
)
def test_malformed_task_messages_are_logged_and_dropped(
    route, args: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    result = route.apply(args=args)
    assert result.state == "FAILURE" and isinstance(result.result, DeliveryFailed)
    assert "rejected route task" in caplog.text


def test_routes_a_recorded_message(route) -> None:
    from workers.tasks import get_assembly

    parts = Inbound.from_assembly(get_assembly())
    parts.backends.add("gw", "http", {})
    recorded = parts.inbox.record("gw", "http", InboundMessage("+1", "nobody takes this"))
    assert route.apply(args=[{"id": recorded.id}]).get() == "unhandled"
    assert route.apply(kwargs={"raw": {"id": recorded.id}}).get() == "unhandled"
    assert route.apply(args=[{"id": "not-in-the-log"}]).get() == "missing"
    for args, kwargs in (([{"id": recorded.id}, "extra"], {}), ([], {"self": 1})):
        assert route.apply(args=args, kwargs=kwargs).state == "FAILURE"


def test_a_failed_handling_is_a_failure(route) -> None:
    from workers.tasks import get_assembly

    parts = Inbound.from_assembly(get_assembly())
    # No reply channel: the echo handler fails for good.
    parts.backends.add("gw", "http", {})
    recorded = parts.inbox.record("gw", "http", InboundMessage("+1", "PING"))
    result = route.apply(args=[{"id": recorded.id}])
    assert result.state == "FAILURE" and "a handler failed" in str(result.result)
    entry = parts.inbox.get(recorded.id)
    assert entry is not None and entry.status == "failed"
    assert "has no reply channel" in (entry.handling[0].result or "")
