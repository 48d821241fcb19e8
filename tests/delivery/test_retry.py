import pytest

from delivery.engine.retry import RETRY_AFTER_CAP, RetryPolicy, backoff


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    assert backoff(0, base=5, cap=3600, rand=lambda: 0.999) == pytest.approx(4.995)
    assert backoff(3, base=5, cap=3600, rand=lambda: 0.5) == pytest.approx(20.0)
    assert backoff(0, base=5, cap=3600, rand=lambda: 0.0) == 0.0
    # capped, and huge retry counts do not overflow
    assert backoff(500, base=5, cap=60, rand=lambda: 1.0) == 60


def test_exponential_policy_gives_up_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, base=1, cap=10)
    assert policy.delay_after(1, rand=lambda: 1.0) == 1
    assert policy.delay_after(2, rand=lambda: 1.0) == 2
    assert policy.delay_after(3) is None


def test_schedule_policy_follows_the_schedule_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=99, base=1, cap=10, schedule=(0, 5, 300))
    assert policy.attempts_allowed == 3
    assert policy.delay_after(1, rand=lambda: 0.5) == pytest.approx(5)
    assert policy.delay_after(2, rand=lambda: 0.0) == pytest.approx(240)
    assert policy.delay_after(2, rand=lambda: 1.0) == pytest.approx(360)
    assert policy.delay_after(3) is None


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(max_attempts=5, base=1, cap=10)
    assert policy.delay_after(1, retry_after=120, rand=lambda: 0.1) == 120
    assert policy.delay_after(1, retry_after=10**9, rand=lambda: 0.1) == RETRY_AFTER_CAP
