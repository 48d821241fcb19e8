"""The task adapter's mapping of bad input. (The worker itself is tested in the integration
tier with real worker processes; eager mode is no test of a worker.)"""

import logging
from datetime import timedelta

import pytest

from delivery.clock import utcnow
from delivery.errors import DeliveryFailed
from delivery.log import AttemptResult, DeliveryLog
from delivery.log.tables import Outcome
from schemas import Envelope, Payload, Settings
from tests.support.recording import finish


@pytest.fixture
def deliver(settings: Settings):
    from workers import tasks

    tasks.close_service()
    yield tasks.deliver
    tasks.close_service()


def failure(result) -> str:
    """A task that ended FAILURE, as Flower shows it: its exception's message."""
    assert result.state == "FAILURE", result.state
    assert isinstance(result.result, DeliveryFailed)
    return str(result.result)


def test_malformed_envelope_is_recorded_as_failed_not_retried(deliver, settings: Settings) -> None:
    result = deliver.apply(args=[{"id": "m1", "channel": "hooks", "address": "x"}])
    assert "payload: required" in failure(result)
    record = DeliveryLog.from_settings(settings).get("m1")
    assert record is not None and record.status == "failed"
    assert "payload: required" in (record.last_error or "")


@pytest.mark.parametrize("args", [[], ["garbage"], [None], [[1, 2, 3]]])
def test_garbage_without_an_id_is_logged_and_dropped(
    deliver, args: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    failure(deliver.apply(args=args))
    assert "rejected task message" in caplog.text


def test_unexpected_arguments_are_rejected(deliver) -> None:
    assert "unexpected arguments" in failure(deliver.apply(args=[{"id": "m2"}, "extra"]))


@pytest.fixture
def tasks_module(settings: Settings):
    from workers import tasks

    tasks.close_service()
    yield tasks
    tasks.close_service()


@pytest.mark.parametrize("args", [[], ["garbage"], [{"id": "x"}], [[{"id": "b1"}], "extra"]])
def test_a_batch_of_the_wrong_shape_is_rejected(
    tasks_module, args: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    failure(tasks_module.deliver_batch.apply(args=args))
    assert "rejected task message" in caplog.text


def test_every_malformed_entry_of_a_batch_is_recorded(tasks_module, settings: Settings) -> None:
    batch = [{"id": "e1", "channel": "hooks"}, {"id": "e2", "address": "x"}, "garbage"]
    assert failure(tasks_module.deliver_batch.apply(args=[batch])).startswith("3 rejected")
    log = DeliveryLog.from_settings(settings)
    for delivery_id in ("e1", "e2"):
        record = log.get(delivery_id)
        assert record is not None and record.status == "failed"
        assert "malformed task message" in (record.last_error or "")


def test_the_sweep_sends_what_is_due_in_batches(tasks_module, settings: Settings) -> None:
    from kombu.connection import Connection

    # Given 40 retries that came due while nothing held them in the broker
    log = DeliveryLog.from_settings(settings)
    past = utcnow() - timedelta(minutes=5)
    for i in range(40):
        envelope = Envelope(
            id=f"s{i}", channel="hooks", address="https://a", payload=Payload(message="m")
        )
        claim = log.claim(envelope, lease=60)
        failed = AttemptResult(
            outcome=Outcome.RETRY, started_at=past, duration_ms=1.0, next_attempt_at=past
        )
        finish(log, claim, failed, dispatcher="webhook", worker="w")
    # (the in-memory broker lives as long as the process: other tests' messages go first)
    with Connection("memory://") as conn, conn.SimpleQueue(settings.queue) as queue:
        queue.clear()
    # When the sweep runs
    assert tasks_module.sweep.apply().get() == 40
    # Then they go out as batch task messages, each delivery once
    with Connection("memory://") as conn, conn.SimpleQueue(settings.queue) as queue:
        names, ids = [], []
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                break
            names.append(message.headers["task"])
            ids += [e["id"] for e in message.decode()[0][0]]
            message.ack()
    assert set(names) == {"delivery.deliver_batch"} and len(names) == 16
    assert sorted(ids) == sorted(f"s{i}" for i in range(40))


# A delivery that fails for good says so once at WARNING (a common production level)

#: What the message says, and a token in the webhook's path: neither may reach the log.
MESSAGE_TEXT = "order 4471 is on its way to Ada Lovelace"
TOKEN_PATH = "/hook/T0KEN-abc123"


@pytest.fixture
def refusing_hook(tasks_module, httpserver) -> str:
    """A webhook channel ``hooks`` whose receiver refuses everything (400): failed for good."""
    from tests.conftest import webhook_secret

    tasks_module.get_assembly().channels.add("hooks", "webhook", {"secret": webhook_secret()})
    httpserver.expect_request(TOKEN_PATH, method="POST").respond_with_data("no", status=400)
    return str(httpserver.url_for(TOKEN_PATH))


def _envelope(delivery_id: str, address: str) -> dict[str, object]:
    return Envelope(
        id=delivery_id, channel="hooks", address=address, payload=Payload(message=MESSAGE_TEXT)
    ).model_dump(mode="json")


def failures_reported(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What a worker at WARNING logged; no payload, no full address, in any of it."""
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(MESSAGE_TEXT not in line and TOKEN_PATH not in line for line in lines), lines
    return lines


def test_a_delivery_failed_for_good_is_one_warning(
    tasks_module, refusing_hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    failure(tasks_module.deliver.apply(args=[_envelope("f1", refusing_hook)]))
    [line] = failures_reported(caplog)
    assert line.startswith("delivery f1 failed for good (channel hooks, address http://")
    assert "/***" in line and "400" in line


def test_each_failure_of_a_batch_is_one_warning(
    tasks_module, refusing_hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # An invalid address is quoted in the recorded error: it is masked there too.
    bad = f"ftp://example.com{TOKEN_PATH}"
    batch = [_envelope("b1", refusing_hook), _envelope("b2", f"{refusing_hook}?again=1")]
    failure(tasks_module.deliver_batch.apply(args=[[*batch, _envelope("b3", bad)]]))
    lines = failures_reported(caplog)
    assert sorted(line.split()[1] for line in lines) == ["b1", "b2", "b3"]
    assert all("address http://" in line for line in lines if line.split()[1] != "b3")
    assert "ftp://example.com/***" in next(line for line in lines if " b3 " in line)
