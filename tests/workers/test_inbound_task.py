"""The router task's mapping of bad input and of the router's outcome. (The task on a real
worker is tested in tests/integration/test_inbound.py.)"""

import pytest

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
    assert route.apply(args=args).get() == "rejected"
    assert "rejected route task" in caplog.text


def test_routes_a_recorded_message(route) -> None:
    from workers.tasks import get_assembly

    parts = Inbound.from_assembly(get_assembly())
    parts.backends.add("gw", "http", {})
    recorded = parts.inbox.record("gw", "http", InboundMessage("+1", "nobody takes this"))
    assert route.apply(args=[{"id": recorded.id}]).get() == "unhandled"
    assert route.apply(args=[{"id": "not-in-the-log"}]).get() == "missing"
    assert route.apply(args=[{"id": recorded.id}, "extra"]).get() == "rejected"
