import pytest

from delivery.engine.ratelimit import LocalRateLimiter


def test_local_limiter_spaces_reservations() -> None:
    limiter = LocalRateLimiter()
    first, ok1 = limiter.reserve("sms", 2.0, max_wait=10)
    second, ok2 = limiter.reserve("sms", 2.0, max_wait=10)
    assert ok1 and ok2 and first == 0
    assert second == pytest.approx(0.5, abs=0.05)
    # a slot beyond max_wait is not taken, so it stays free for the next caller
    third, ok3 = limiter.reserve("sms", 2.0, max_wait=0.1)
    assert not ok3 and third == pytest.approx(1.0, abs=0.05)
    assert limiter.reserve("other", 2.0, max_wait=0) == (0, True)
