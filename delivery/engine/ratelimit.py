"""Per-channel rate limits shared by every worker, as a GCRA schedule kept in Redis.

Each send reserves the next free slot; the caller learns how long to wait for it. The
clock is Redis's own, so workers on machines whose clocks disagree still share one pace.
"""

import threading
import time
from typing import Protocol

from sqlalchemy import select, update

from delivery.log.base import LogBase
from delivery.log.tables import RateScheduleRow

#: Lua: reserve the next slot at ``interval`` spacing unless it is further away than
#: ``max_wait``; returns the wait in milliseconds and whether the slot was taken.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - now
if wait > max_wait then return {wait, 0} end
redis.call('SET', KEYS[1], tat + interval, 'PX', wait + interval + 1000)
return {wait, 1}
"""


class RateLimiter(Protocol):
    def reserve(self, channel: str, per_second: float, *, max_wait: float) -> tuple[float, bool]:
        """Seconds until this send may go, and whether the slot was reserved.

        A slot further away than ``max_wait`` is not reserved: the caller should come back
        later rather than hold a worker thread.
        """


class RedisRateLimiter:
    def __init__(self, url: str, prefix: str = "delivery:rate:") -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        self._script = self._client.register_script(_RESERVE)
        self._prefix = prefix

    def reserve(self, channel: str, per_second: float, *, max_wait: float) -> tuple[float, bool]:
        interval_ms = max(1, round(1000 / per_second))
        wait_ms, taken = self._script(
            keys=[self._prefix + channel], args=[interval_ms, round(max_wait * 1000)]
        )
        return int(wait_ms) / 1000, bool(taken)


class LocalRateLimiter:
    """The same schedule within one process, for brokers other than Redis."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, channel: str, per_second: float, *, max_wait: float) -> tuple[float, bool]:
        now = time.monotonic()
        with self._lock:
            slot = max(self._next.get(channel, now), now)
            wait = slot - now
            if wait > max_wait:
                return wait, False
            self._next[channel] = slot + 1 / per_second
            return wait, True


class DatabaseRateLimiter(LogBase):
    """The same schedule kept in the delivery log, for brokers other than Redis: shared by
    every process that uses the log (the workers of a site, the API processes), so a
    channel's ``1/s`` is one a second across all of them, not one per process.

    Each reservation is one short write transaction on the schedule's row (locked on
    PostgreSQL; SQLite has one writer at a time). The clock is each process's own: keep
    the machines' clocks in step (NTP), as the log's leases already ask.
    """

    def reserve(self, channel: str, per_second: float, *, max_wait: float) -> tuple[float, bool]:
        row = RateScheduleRow
        now = time.time()
        with self.engine.begin() as connection:
            # Make the row exist, then hold it: concurrent reservations take turns.
            connection.execute(
                self._insert(row).values(name=channel, next_slot=now).on_conflict_do_nothing()
            )
            query = select(row.next_slot).where(row.name == channel)
            slot = connection.execute(query if self._sqlite else query.with_for_update())
            wait = max(float(slot.scalar_one()), now) - now
            if wait > max_wait:
                return wait, False
            connection.execute(
                update(row).where(row.name == channel).values(next_slot=now + wait + 1 / per_second)
            )
        return wait, True
