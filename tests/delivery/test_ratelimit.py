import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from delivery.engine.ratelimit import DatabaseRateLimiter, LocalRateLimiter
from delivery.log.database import make_engine
from delivery.log.migrate import upgrade
from delivery.log.tables import RateScheduleRow
from schemas import Settings


def test_local_limiter_spaces_reservations() -> None:
    limiter = LocalRateLimiter()
    # One every 10 s, so a loaded machine's pauses between the calls (up to 5 s) cannot
    # move the answers out of their bounds: this failed under load at 2/s with ±0.05 s.
    first, ok1 = limiter.reserve("sms", 0.1, max_wait=30)
    second, ok2 = limiter.reserve("sms", 0.1, max_wait=30)
    assert ok1 and ok2 and first == 0
    assert 5 < second <= 10
    # a slot beyond max_wait is not taken, so it stays free for the next caller
    third, ok3 = limiter.reserve("sms", 0.1, max_wait=0.1)
    assert not ok3 and 15 < third <= 20
    assert limiter.reserve("other", 0.1, max_wait=0) == (0, True)


def _schedule_of(limiter: DatabaseRateLimiter, name: str) -> float:
    with limiter.engine.connect() as connection:
        return float(
            connection.execute(
                select(RateScheduleRow.next_slot).where(RateScheduleRow.name == name)
            ).scalar_one()
        )


def test_the_log_keeps_one_schedule_for_every_process(settings: Settings) -> None:
    # Two engines on one log, as two worker processes have
    url = settings.resolved_database_url
    upgrade(url)
    first, second = (DatabaseRateLimiter(make_engine(url)) for _ in range(2))
    try:
        # One every 10 s: the bounds hold however slow a loaded machine is between calls
        # (up to 5 s), where 2/s once saw its slot pass before the second process asked.
        assert first.reserve("sms", 0.1, max_wait=30) == (0, True)
        wait, taken = second.reserve("sms", 0.1, max_wait=30)
        assert taken and 5 < wait <= 10
        # a slot beyond max_wait is not taken by anyone
        later, ok = first.reserve("sms", 0.1, max_wait=0.1)
        assert not ok and 15 < later <= 20
        assert second.reserve("other", 0.1, max_wait=0) == (0, True)
    finally:
        for limiter in (first, second):
            limiter.engine.dispose()


def test_threads_of_two_processes_lose_no_reservation(settings: Settings) -> None:
    url = settings.resolved_database_url
    upgrade(url)
    limiters = [DatabaseRateLimiter(make_engine(url)) for _ in range(2)]
    started = time.time()
    with ThreadPoolExecutor(8) as pool:
        taken = list(
            pool.map(lambda i: limiters[i % 2].reserve("sms", 10.0, max_wait=60)[1], range(30))
        )
    assert all(taken)
    # Each reservation moved the one schedule on by a tenth of a second: none was lost
    assert _schedule_of(limiters[0], "sms") - started >= 3.0 - 0.01
    for limiter in limiters:
        limiter.engine.dispose()
