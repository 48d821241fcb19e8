"""Per-recipient throttles on PostgreSQL: workers on separate connections, all at once,
never take more places than the throttle has (the advisory lock per throttle and address)."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine

from delivery.engine.throttle import RecipientThrottle
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

THREADS, ROUNDS, LIMIT = 12, 15, 3


def test_two_workers_share_one_throttle_exactly(postgres_stack: Stack) -> None:
    url = postgres_stack.env["DELIVERY_DATABASE_URL"]
    # Two engines, as two worker processes would have, each with its own pool
    workers = [RecipientThrottle(create_engine(url, pool_size=THREADS)) for _ in range(2)]
    now = datetime.now(UTC)
    start = threading.Barrier(THREADS)

    def take(address: str, i: int) -> bool:
        start.wait(timeout=30)  # all at once: the race a lock must close
        return workers[i % 2].take(
            "channel:sms", address, f"{address}-{i}", limit=LIMIT, period=3600, now=now
        )

    with ThreadPoolExecutor(THREADS) as pool:
        taken = {
            address: sum(pool.map(take, [address] * THREADS, range(THREADS)))
            for address in (f"+4477009001{n:02d}" for n in range(ROUNDS))
        }
    assert taken == dict.fromkeys(taken, LIMIT)
    # The same delivery again takes no place more
    assert workers[1].take(
        "channel:sms", "+447700900100", "+447700900100-0", limit=LIMIT, period=3600, now=now
    ) == workers[0].take(
        "channel:sms", "+447700900100", "+447700900100-0", limit=LIMIT, period=3600, now=now
    )
    for throttle in workers:
        throttle.engine.dispose()


def test_a_rate_limit_kept_in_the_log_loses_no_reservation(postgres_stack: Stack) -> None:
    import time

    from sqlalchemy import select

    from delivery.engine.ratelimit import DatabaseRateLimiter
    from delivery.log.tables import RateScheduleRow

    url = postgres_stack.env["DELIVERY_DATABASE_URL"]
    limiters = [DatabaseRateLimiter(create_engine(url, pool_size=THREADS)) for _ in range(2)]
    started = time.time()
    start = threading.Barrier(THREADS)

    def reserve(i: int) -> bool:
        start.wait(timeout=30)
        return limiters[i % 2].reserve("sms", 10.0, max_wait=60)[1]

    with ThreadPoolExecutor(THREADS) as pool:
        assert all(pool.map(reserve, range(THREADS)))
    with limiters[0].engine.connect() as connection:
        schedule = connection.execute(select(RateScheduleRow.next_slot)).scalar_one()
    # Each of the two workers' reservations moved the one schedule on: none was lost
    assert schedule - started >= THREADS / 10 - 0.01
    for limiter in limiters:
        limiter.engine.dispose()
