"""When to try again. Pure functions; Celery only carries the decision out."""

import random
from collections.abc import Callable
from dataclasses import dataclass

#: The longest wait a provider's Retry-After may impose before we try anyway.
RETRY_AFTER_CAP = 6 * 3600.0


def backoff(
    retry: int, *, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with full jitter: uniform over ``[0, min(cap, base * 2**retry))``.

    Full jitter spreads the retries of many deliveries that failed together (a provider
    outage) instead of sending them back in waves.
    """
    ceiling = min(cap, base * (2 ** min(retry, 62)))
    return float(ceiling * rand())


def outage_backoff(retries: int) -> float:
    """Seconds before a task tries again when the log or the broker is unavailable: up to
    a second at first, never more than 30 (what it waits for is ours, not a provider)."""
    return backoff(retries, base=1.0, cap=30.0)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Either a channel's explicit schedule or exponential backoff.

    A schedule lists the delay before each attempt, the first included: ``0,5,300`` means
    try at once, then 5 s later, then 300 s after that, then give up.
    """

    max_attempts: int
    base: float
    cap: float
    schedule: tuple[float, ...] | None = None

    @property
    def attempts_allowed(self) -> int:
        return len(self.schedule) if self.schedule else self.max_attempts

    def delay_after(
        self,
        attempts_made: int,
        *,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        ``attempts_made`` counts the attempts so far in this round, the failed one included.
        """
        if attempts_made >= self.attempts_allowed:
            return None
        if self.schedule:
            # ±20 % jitter keeps a schedule recognisable while spreading a burst out.
            delay = self.schedule[attempts_made] * (0.8 + 0.4 * rand())
        else:
            delay = backoff(attempts_made - 1, base=self.base, cap=self.cap, rand=rand)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        return delay
