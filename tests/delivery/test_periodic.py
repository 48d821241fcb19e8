"""Site-wide turns at periodic jobs: one runner per interval, however many workers ask."""

import threading
from datetime import timedelta

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from delivery.clock import utcnow
from delivery.log import DeliveryLog
from schemas import Envelope, Payload, Settings
from workers.sweeper import SWEEP_JOB, Sweeper, sweep_if_due


@pytest.fixture
def log(settings: Settings) -> DeliveryLog:
    return DeliveryLog.from_settings(settings)


def test_one_caller_takes_each_turn(log: DeliveryLog) -> None:
    now = utcnow()
    assert log.next_run("sweep") is None
    assert log.take_turn("sweep", now=now, every=5, worker="a") is True
    # Within the interval nobody else, nor the same worker, gets another turn
    assert log.take_turn("sweep", now=now, every=5, worker="b") is False
    assert log.take_turn("sweep", now=now + timedelta(seconds=4.9), every=5, worker="a") is False
    assert log.next_run("sweep") == now + timedelta(seconds=5)
    # Once due, the first to ask takes it, and the turn moves on from then
    later = now + timedelta(seconds=7)
    assert log.take_turn("sweep", now=later, every=5, worker="b") is True
    assert log.take_turn("sweep", now=later, every=5, worker="a") is False
    assert log.next_run("sweep") == later + timedelta(seconds=5)


def test_jobs_take_turns_apart(log: DeliveryLog) -> None:
    now = utcnow()
    assert log.take_turn("sweep", now=now, every=5, worker="a") is True
    assert log.take_turn("purge", now=now, every=86400, worker="a") is True
    assert log.take_turn("purge", now=now + timedelta(seconds=6), every=86400, worker="a") is False


def test_many_threads_asking_at_once_get_one_turn(settings: Settings) -> None:
    # Separate logs on the one file, as separate worker processes would have.
    logs = [DeliveryLog(create_engine(settings.resolved_database_url)) for _ in range(8)]
    now = utcnow()
    won: list[int] = []
    start = threading.Barrier(len(logs))

    def ask(number: int) -> None:
        start.wait()
        if logs[number].take_turn("sweep", now=now, every=5, worker=str(number)):
            won.append(number)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(len(logs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1


def _deferred_in_the_log(log: DeliveryLog, delivery_id: str) -> None:
    # A delivery that waits in the log (not the broker) and is due within the sweep's
    # horizon: what the sweep publishes.
    envelope = Envelope(
        id=delivery_id,
        channel="hooks",
        address="https://example.com/hook",
        payload=Payload(message="m"),
        not_before=utcnow() + timedelta(seconds=2),
    )
    log.claim(envelope, lease=60)


def test_the_sweep_runs_only_in_its_turn(log: DeliveryLog, settings: Settings) -> None:
    _deferred_in_the_log(log, "d1")
    # Given another worker has just taken the turn
    assert log.take_turn(SWEEP_JOB, now=utcnow(), every=3600, worker="someone else")
    # Then this worker does not sweep
    assert sweep_if_due(log, settings, worker="me") is None
    # And once the turn is due, the next to ask sweeps: it publishes the delivery (to the
    # in-memory broker) and marks it, so a sweep right after finds nothing
    with log.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE periodic_jobs SET next_run_at = '2000-01-01 00:00:00'")
    assert sweep_if_due(log, settings, worker="me") == 1
    assert log.sweep(now=utcnow(), horizon=5, grace=10, resweep=60) == []


def test_the_sweeper_goes_on_when_the_log_is_away(settings: Settings) -> None:
    # A log on a file that cannot be opened: each look says so, and raises nothing.
    broken = DeliveryLog(create_engine("sqlite:////nonexistent/folder/log.sqlite3"))
    sweeper = Sweeper(broken, settings, worker="me")
    with pytest.raises(OperationalError):
        broken.take_turn(SWEEP_JOB, now=utcnow(), every=5, worker="me")
    assert sweeper.look() is None
    assert sweeper.look() is None
