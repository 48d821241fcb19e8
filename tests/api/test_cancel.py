"""``DeliveryLog.cancel`` in every state a delivery can be in."""

from datetime import timedelta

import pytest

from delivery.clock import utcnow
from delivery.log import AttemptResult, DeliveryLog, Outcome
from delivery.log.admin import CancelOutcome
from schemas import Envelope, Payload, Settings
from tests.support.recording import finish


@pytest.fixture
def log(settings: Settings) -> DeliveryLog:
    return DeliveryLog.from_settings(settings)


def _envelope(i: str) -> Envelope:
    return Envelope(id=i, channel="hooks", address="a", payload=Payload(message="m"))


def _finish(log: DeliveryLog, i: str, outcome: Outcome) -> None:
    claim = log.claim(_envelope(i), lease=30)
    finish(log, claim, AttemptResult(outcome, utcnow(), 1.0), dispatcher="webhook", worker="w")


def test_a_lease_that_expired_is_cancelled_and_its_worker_cannot_finish(log: DeliveryLog) -> None:
    # Given a worker that claimed it and then went quiet
    claim = log.claim(_envelope("e"), lease=30, now=utcnow() - timedelta(minutes=5))
    assert log.cancel("e").outcome is CancelOutcome.CANCELLED
    # Then its late outcome does not overwrite the cancellation, and no claim takes it
    finish(log, claim, AttemptResult(Outcome.RETRY, utcnow(), 1.0), dispatcher=None, worker="w")
    record = log.get("e")
    assert record is not None and record.status == "cancelled"
    assert log.claim(_envelope("e"), lease=30).state.value == "done"
    assert log.claim_many([_envelope("e")], lease=30)[0].state.value == "done"


def test_a_scheduled_retry_is_cancelled_and_the_sweep_skips_it(log: DeliveryLog) -> None:
    claim = log.claim(_envelope("r"), lease=30)
    due = utcnow() - timedelta(seconds=10)
    finish(
        log,
        claim,
        AttemptResult(Outcome.RETRY, utcnow(), 1.0, next_attempt_at=due),
        dispatcher=None,
        worker="w",
    )
    assert log.cancel("r").cancelled
    found = log.sweep(now=utcnow(), horizon=60, grace=0, resweep=0)
    assert "r" not in [e.id for e, _ in found]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [(Outcome.DELIVERED, CancelOutcome.DELIVERED), (Outcome.FAILED, CancelOutcome.FAILED)],
)
def test_ended_deliveries_stay_as_they_ended(
    log: DeliveryLog, outcome: Outcome, expected: CancelOutcome
) -> None:
    _finish(log, "x", outcome)
    done = log.cancel("x")
    assert done.outcome is expected and not done.cancelled
    record = log.get("x")
    assert record is not None and record.status == outcome.value
