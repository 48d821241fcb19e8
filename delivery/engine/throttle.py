"""Per-recipient throttles, shared by every worker through the log.

A channel (``--per-recipient 3/h``) or a subscription may cap how many deliveries one
address gets in a period. Each delivery that passes is counted as a row (``recipient_sends``)
keyed by the delivery, so a retry or a second copy of its message counts once. The count
and the row are written in one transaction that holds the throttle's lock (SQLite's one
writer; a PostgreSQL advisory lock per throttle and address), so two workers never both
take the last place.
"""

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select

from delivery.log.base import LogBase
from delivery.log.database import read_only
from delivery.log.tables import RecipientSendRow

_TABLE: Any = RecipientSendRow.__table__
#: Rows older than this many periods go when their key is next counted.
_KEEP_PERIODS = 2


def address_hash(address: str) -> str:
    return hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()


class RecipientThrottle(LogBase):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._reads = read_only(engine)

    def take(
        self,
        throttle: str,
        address: str,
        delivery_id: str,
        *,
        limit: int,
        period: float,
        now: datetime,
        dry_run: bool = False,
    ) -> bool:
        """Count ``delivery_id`` against ``throttle`` for ``address``; False when ``limit``
        deliveries in the last ``period`` seconds went there already (nothing is counted).
        A dry run only looks."""
        key = address_hash(address)
        if dry_run:
            with self._reads.connect() as connection:
                return _count(connection, throttle, key, delivery_id, now, period) < limit
        # On SQLite the write transaction takes the process's write lock as it begins.
        with self.engine.begin() as connection:
            if not self._sqlite:
                # One throttle and address at a time, to the end of the transaction.
                connection.execute(
                    select(func.pg_advisory_xact_lock(func.hashtext(throttle + key)))
                )
            r = RecipientSendRow
            already = connection.execute(
                select(r.sent_at).where(
                    r.throttle == throttle, r.address == key, r.delivery_id == delivery_id
                )
            ).first()
            if already is not None:
                return True  # counted when first sent: this is a retry or a copy
            if _count(connection, throttle, key, delivery_id, now, period) >= limit:
                return False
            connection.execute(
                self._insert(_TABLE)
                .values(throttle=throttle, address=key, delivery_id=delivery_id, sent_at=now)
                .on_conflict_do_nothing()
            )
            # Rows no period will count again go now: kept small without a job of its own.
            connection.execute(
                delete(r).where(
                    r.throttle == throttle,
                    r.address == key,
                    r.sent_at < now - timedelta(seconds=period * _KEEP_PERIODS),
                )
            )
        return True


def _count(
    connection: Connection,
    throttle: str,
    key: str,
    delivery_id: str,
    now: datetime,
    period: float,
) -> int:
    r = RecipientSendRow
    return int(
        connection.execute(
            select(func.count())
            .select_from(r)
            .where(
                r.throttle == throttle,
                r.address == key,
                r.sent_at > now - timedelta(seconds=period),
                r.delivery_id != delivery_id,
            )
        ).scalar_one()
    )
