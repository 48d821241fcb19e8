"""The per-channel circuit breaker's bookkeeping, run inside the attempt's transaction.

After ``threshold`` failed attempts in a row the breaker opens: deliveries on the channel
wait instead of spending their attempts, and one probe is let through per interval. The
first success closes it.
"""

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Connection, or_, update

from delivery.models import ChannelRow


def record_success(channel: str) -> Callable[[Connection], None]:
    def apply(session: Connection) -> None:
        # Conditional, so the common case (nothing to reset) writes nothing.
        session.execute(
            update(ChannelRow)
            .where(
                ChannelRow.name == channel,
                or_(
                    ChannelRow.consecutive_failures > 0, ChannelRow.breaker_open_until.is_not(None)
                ),
            )
            .values(consecutive_failures=0, breaker_open_until=None)
            .execution_options(synchronize_session=False)
        )

    return apply


def record_failure(
    channel: str, *, now: datetime, threshold: int, probe_interval: float
) -> Callable[[Connection], None]:
    def apply(session: Connection) -> None:
        session.execute(
            update(ChannelRow)
            .where(ChannelRow.name == channel)
            .values(consecutive_failures=ChannelRow.consecutive_failures + 1)
            .execution_options(synchronize_session=False)
        )
        if threshold <= 0:
            return
        session.execute(
            update(ChannelRow)
            .where(
                ChannelRow.name == channel,
                ChannelRow.consecutive_failures >= threshold,
                ChannelRow.breaker_open_until.is_(None),
            )
            .values(breaker_open_until=now + timedelta(seconds=probe_interval))
            .execution_options(synchronize_session=False)
        )

    return apply
