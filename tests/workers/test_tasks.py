"""The task adapter's mapping of bad input. (The worker itself is tested in the integration
tier with real worker processes; eager mode is no test of a worker.)"""

import pytest

from delivery.log import DeliveryLog
from schemas import Settings


@pytest.fixture
def deliver(settings: Settings):
    from workers import tasks

    tasks.close_service()
    yield tasks.deliver
    tasks.close_service()


def test_malformed_envelope_is_recorded_as_failed_not_retried(deliver, settings: Settings) -> None:
    result = deliver.apply(args=[{"id": "m1", "channel": "hooks", "address": "x"}])
    assert result.get() == "rejected"
    record = DeliveryLog.from_settings(settings).get("m1")
    assert record is not None and record.status == "failed"
    assert "payload: Field required" in (record.last_error or "")


@pytest.mark.parametrize("args", [[], ["garbage"], [None], [[1, 2, 3]]])
def test_garbage_without_an_id_is_logged_and_dropped(
    deliver, args: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    assert deliver.apply(args=args).get() == "rejected"
    assert "rejected task message" in caplog.text


def test_unexpected_arguments_are_rejected(deliver) -> None:
    assert deliver.apply(args=[{"id": "m2"}, "extra"]).get() == "rejected"
