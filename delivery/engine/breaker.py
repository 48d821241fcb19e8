"""The per-channel circuit breaker's bookkeeping, run inside the attempt's transaction.

After ``threshold`` failed attempts in a row the breaker opens: deliveries on the channel
wait instead of spending their attempts, and one probe is let through per interval. The
first success closes it.
"""

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, or_, update

from delivery.log.tables import ChannelRow

# Built once: these run with every attempt.
_RESET = (
    update(ChannelRow)
    .where(
        ChannelRow.name == bindparam("p_name"),
        # Conditional, so the common case (nothing to reset) writes nothing.
        or_(ChannelRow.consecutive_failures > 0, ChannelRow.breaker_open_until.is_not(None)),
    )
    .values(consecutive_failures=0, breaker_open_until=None)
)
_COUNT = (
    update(ChannelRow)
    .where(ChannelRow.name == bindparam("p_name"))
    .values(consecutive_failures=ChannelRow.consecutive_failures + 1)
)
_OPEN = (
    update(ChannelRow)
    .where(
        ChannelRow.name == bindparam("p_name"),
        ChannelRow.consecutive_failures >= bindparam("p_threshold"),
        ChannelRow.breaker_open_until.is_(None),
    )
    .values(breaker_open_until=bindparam("p_until"))
)


def record_success(channel: str) -> Callable[[Connection], None]:
    def apply(connection: Connection) -> None:
        connection.execute(_RESET, {"p_name": channel})

    return apply


def record_failure(
    channel: str, *, now: datetime, threshold: int, probe_interval: float
) -> Callable[[Connection], None]:
    def apply(connection: Connection) -> None:
        connection.execute(_COUNT, {"p_name": channel})
        if threshold > 0:
            until = now + timedelta(seconds=probe_interval)
            connection.execute(
                _OPEN, {"p_name": channel, "p_threshold": threshold, "p_until": until}
            )

    return apply
