"""The per-channel circuit breaker, in one place: the gate a delivery passes before sending,
and the bookkeeping each attempt's outcome adds to the transaction that records it.

After ``threshold`` failed attempts in a row the breaker opens: deliveries on the channel
wait instead of spending their attempts, and one probe is let through per interval. The
first success closes it. A channel paused by a person waits at the same gate.

Each opening and closing is made by exactly one transaction (the writes are conditional),
and ``bookkeeping`` tells its caller which ones its transaction made (``BreakerChange``),
so that ``channel.paused`` and ``channel.resumed`` are announced once across the site. A
success closes an open breaker only where the worker knew it might be open (the probe, or
the channel as last read): a plain success resets the failure count of a closed breaker
alone, so that the common case still writes nothing, and every closing is one that can be
seen. A success that races an opening leaves the breaker to the next probe.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, bindparam, update
from sqlalchemy.orm import sessionmaker

from delivery.log.tables import ChannelRow

#: A write run inside the transaction that records an attempt.
Bookkeeping = Callable[[Connection], None]

# Built once: these run with every attempt.
_RESET = (
    update(ChannelRow)
    .where(
        ChannelRow.name == bindparam("p_name"),
        # Conditional, so the common case (nothing to reset) writes nothing; an open
        # breaker is closed by _CLOSE alone, so its closing is always seen.
        ChannelRow.consecutive_failures > 0,
        ChannelRow.breaker_open_until.is_(None),
    )
    .values(consecutive_failures=0)
)
_CLOSE = (
    update(ChannelRow)
    .where(ChannelRow.name == bindparam("p_name"), ChannelRow.breaker_open_until.is_not(None))
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


@dataclass(frozen=True, slots=True)
class AttemptHealth:
    """What one attempt says about its channel's health."""

    channel: str
    delivered: bool
    #: A provider-side failure (retryable, unexpected); a bad address says nothing.
    failed: bool
    #: The breaker may be open (this send was its probe, or the channel as last read had
    #: it open): a success closes it.
    may_be_open: bool = False


@dataclass(frozen=True, slots=True)
class BreakerChange:
    """A breaker that a recording transaction opened or closed. Read only once that
    transaction has committed: before, it may still roll back."""

    channel: str
    opened: bool
    #: When it changed (the attempt's time).
    at: datetime
    #: For an opening: when the first probe is due.
    until: datetime | None = None


class Breaker:
    def __init__(self, engine: Engine, *, threshold: int, probe_interval: float) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.threshold = threshold
        self.probe_interval = probe_interval

    def gate(self, name: str, *, now: datetime) -> tuple[datetime | None, bool]:
        """When to look again (None: send now), and whether this send is the breaker's probe."""
        with self._sessions.begin() as session:
            row = session.get(ChannelRow, name)
            if row is None:
                return None, False  # removed meanwhile: sending will say so
            if row.paused:
                return now + timedelta(seconds=self.probe_interval), False
            if row.breaker_open_until is None:
                return None, False
            if row.breaker_open_until > now:
                return row.breaker_open_until, False
            # Due for a probe: whoever moves the deadline on first sends it.
            probe = session.execute(
                update(ChannelRow)
                .where(ChannelRow.name == name, ChannelRow.breaker_open_until <= now)
                .values(breaker_open_until=now + timedelta(seconds=self.probe_interval))
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            return (None, True) if probe else (now + timedelta(seconds=self.probe_interval), False)

    def bookkeeping(
        self,
        health: Iterable[AttemptHealth],
        *,
        now: datetime,
        changes: list[BreakerChange] | None = None,
    ) -> list[Bookkeeping]:
        """The writes that keep the breakers up to date with these attempts, in channel
        order, so concurrent batches lock channel rows in one order (no deadlocks).
        ``changes`` collects the breakers these writes open or close (valid once their
        transaction has committed)."""
        writes: list[tuple[str, Bookkeeping]] = []
        succeeded: set[str] = set()
        collected = changes if changes is not None else []
        for attempt in health:
            if attempt.delivered:
                # One reset per channel and batch closes the breaker as well as many.
                if attempt.channel not in succeeded:
                    succeeded.add(attempt.channel)
                    writes.append(
                        (
                            attempt.channel,
                            self._success(attempt.channel, attempt.may_be_open, now, collected),
                        )
                    )
            elif attempt.failed:
                writes.append((attempt.channel, self._failure(attempt.channel, now, collected)))
        writes.sort(key=lambda pair: pair[0])  # stable: a channel's own order is kept
        return [write for _, write in writes]

    @staticmethod
    def _success(
        channel: str, may_be_open: bool, now: datetime, changes: list[BreakerChange]
    ) -> Bookkeeping:
        def apply(connection: Connection) -> None:
            # Only where the breaker may be open: the common case stays one statement.
            if may_be_open and connection.execute(_CLOSE, {"p_name": channel}).rowcount:
                changes.append(BreakerChange(channel, opened=False, at=now))
                return
            connection.execute(_RESET, {"p_name": channel})

        return apply

    def _failure(self, channel: str, now: datetime, changes: list[BreakerChange]) -> Bookkeeping:
        threshold, until = self.threshold, now + timedelta(seconds=self.probe_interval)

        def apply(connection: Connection) -> None:
            connection.execute(_COUNT, {"p_name": channel})
            if threshold > 0:
                opened = connection.execute(
                    _OPEN, {"p_name": channel, "p_threshold": threshold, "p_until": until}
                ).rowcount
                if opened:
                    # Conditional on a closed breaker: only one transaction opens it.
                    changes.append(BreakerChange(channel, opened=True, at=now, until=until))

        return apply
