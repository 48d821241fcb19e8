"""Purging on PostgreSQL while sending goes on: only old, final deliveries go, nobody
waits on the purge for long, and the counts are exact afterwards."""

import threading
from collections import Counter
from datetime import timedelta

import pytest

from delivery.clock import utcnow
from delivery.log import DeliveryLog
from delivery.log.counts import totals
from delivery.log.database import get_engine
from delivery.log.migrate import upgrade
from delivery.log.tables import FINAL_STATUSES, Outcome
from delivery.retention import Retention
from tests.support.seeding import seed
from tests.support.servers import PostgresServer

pytestmark = pytest.mark.integration

#: The cycle of outcomes each seeded delivery takes: two end, two wait (retrying, sending).
OUTCOMES = (Outcome.DELIVERED, Outcome.FAILED, Outcome.RETRY, None)


def outcomes(count: int) -> Counter[Outcome | None]:
    """How many of ``count`` deliveries ``seed`` ends in each outcome."""
    return Counter(OUTCOMES[n % len(OUTCOMES)] for n in range(count))


def check(status: str | None, outcome: Outcome | None, *, reopened: bool) -> None:
    """What is left of an old delivery after a purge."""
    if reopened:
        assert status == "queued"
    elif outcome in (Outcome.RETRY, None):
        assert status in ("retrying", "sending")  # nothing waiting went
    else:
        # ended before the purge began: gone, unless reopened after the purge passed by
        assert status in (None, "queued")


def test_purging_while_workers_record_deliveries(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("retention")
    upgrade(url)
    log = DeliveryLog(get_engine(url))
    # Given 2,000 deliveries made 40 days ago: half ended, half still waiting
    old = seed(log, 2000, at=utcnow() - timedelta(days=40), outcomes=OUTCOMES, prefix="old")
    old_failed = old[1 :: len(OUTCOMES)]
    errors: list[BaseException] = []
    reopened: list[str] = []
    started = threading.Event()

    def sending(worker: int) -> None:
        # Workers record new deliveries, in batches of 50, all through the purge
        try:
            started.wait()
            for batch in range(8):
                seed(log, 50, outcomes=OUTCOMES, prefix=f"new-{worker}-{batch}")
        except BaseException as exc:
            errors.append(exc)

    def reopening() -> None:
        # and a person sends old failed deliveries again (`delivery retry`) meanwhile:
        # a reopened one is waiting again, and must not go
        try:
            started.wait()
            for delivery_id in old_failed[::10]:
                if log.reopen(delivery_id) is not None:
                    reopened.append(delivery_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sending, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=reopening))
    for thread in threads:
        thread.start()

    # When the purge runs at the same time, 100 to a transaction
    started.set()
    report = Retention(log.engine).purge(older_than=30, batch=100, pause=0)
    for thread in threads:
        thread.join(timeout=240)
    assert not errors

    # Then only old, final deliveries went, each with its attempt
    assert 0 < report.deliveries <= 1000
    assert report.rows["attempts"] == report.deliveries
    left = {d.id: d.status for d in log.find(limit=100_000)}
    for n, delivery_id in enumerate(old):
        check(left.get(delivery_id), OUTCOMES[n % len(OUTCOMES)], reopened=delivery_id in reopened)
    made = outcomes(2000) + sum((outcomes(50) for _ in range(4 * 8)), Counter())
    waiting = made[Outcome.RETRY] + made[None]
    assert sum(1 for s in left.values() if s not in FINAL_STATUSES) == waiting + len(reopened)
    # Every new delivery is there
    assert sum(1 for i in left if i.startswith("new-")) == 4 * 8 * 50

    # And the counts are exact: what was recorded, old and new, purged or not
    with log.engine.connect() as connection:
        counted = totals(connection)
    assert counted.ended == {
        ("hooks", "delivered"): made[Outcome.DELIVERED],
        ("hooks", "failed"): made[Outcome.FAILED],
    }
    assert {o: counted.attempt_count(o) for o in counted.attempts} == {
        "delivered": made[Outcome.DELIVERED],
        "failed": made[Outcome.FAILED],
        "retry": made[Outcome.RETRY],
    }

    # And a second purge takes the rest of the old final ones
    Retention(log.engine).purge(older_than=30, pause=0)
    left = {d.id: d.status for d in log.find(limit=100_000)}
    assert not [i for i in old if left.get(i) in FINAL_STATUSES]
