"""The fan-out task adapter's mapping of bad input and failures. (Fan-out through a real
worker process is tested in tests/integration/test_notify.py.)"""

import pytest

from delivery.engine.assembly import assemble
from delivery.errors import DeliveryFailed
from delivery.notifications import Notifier
from delivery.producer.events import event_id
from schemas import Settings
from schemas.events import Event


@pytest.fixture
def fanout(settings: Settings):
    from workers import events, tasks

    tasks.close_service()
    yield events.fanout
    tasks.close_service()


def failure(result) -> str:
    assert result.state == "FAILURE", result.state
    assert isinstance(result.result, DeliveryFailed)
    return str(result.result)


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        ([], {}, "unexpected arguments"),
        ([{"id": "e"}, "extra"], {}, "unexpected arguments"),
        ([], {"other": 1}, "unexpected arguments"),
        (["garbage"], {}, "malformed fan-out task message"),
        ([{"id": "e1", "name": "Bad Name"}], {}, "name:"),
        ([{"id": "e1", "name": "a.b", "context": {"x": float("nan")}}], {}, "context"),
    ],
)
def test_malformed_messages_fail_with_the_reason(fanout, args, kwargs, reason: str) -> None:
    assert reason in failure(fanout.apply(args=args, kwargs=kwargs))


def test_an_event_fans_out_and_a_render_failure_fails_the_task(fanout, settings: Settings) -> None:
    engine = assemble(settings)
    engine.channels.add("dev", "console", {})
    notifier = Notifier(engine.log)
    notifier.subscriptions.add("a.b", "dev", "{{ who }}")
    ok = Event(id=event_id("a.b", "1"), name="a.b", context={"who": "ann"})
    result = fanout.apply(args=[ok.model_dump(mode="json")])
    assert result.state == "SUCCESS" and result.result == "1 queued, 0 failed, 0 skipped"
    assert fanout.apply(args=[ok.model_dump(mode="json")]).result == "replayed"
    missing = Event(id=event_id("a.b", "2"), name="a.b", context={})
    reason = failure(fanout.apply(kwargs={"event": missing.model_dump(mode="json")}))
    assert "0 queued, 1 failed" in reason
    [(outcome, status)] = notifier.events.get(missing.id).deliveries  # type: ignore[union-attr]
    assert outcome.outcome == "failed" and status == "failed"
    assert "'who' is undefined" in (outcome.reason or "")
