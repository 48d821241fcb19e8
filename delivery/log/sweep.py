"""The sweep: what the log says is due and the broker does not hold."""

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update

from delivery.log.base import LogBase
from delivery.log.records import DeliveryRecord
from delivery.log.tables import WAITING_IN_LOG, DeliveryRow, Status
from schemas import Envelope


class DeliverySweep(LogBase):
    def sweep(
        self,
        *,
        now: datetime,
        horizon: float,
        grace: float,
        resweep: float,
        limit: int = 1000,
        lease_grace: float | None = None,
    ) -> list[tuple[Envelope, float | None]]:
        """Deliveries the broker does not hold a message for, with seconds until each is due
        (None: due now), ready for ``Publisher.publish_envelopes``.

        Picks retries due within ``horizon`` seconds that were scheduled here rather than
        parked in the broker; retries parked in the broker ``grace`` seconds past due (their
        message was lost); leases expired ``lease_grace`` seconds ago (default ``grace``:
        live workers renew their leases, so an expired one means its worker died); and
        queued deliveries idle ``grace`` seconds (replayed, then the publish failed). Each
        is marked, so it is not picked again for ``resweep`` seconds.
        """
        overdue = now - timedelta(seconds=grace)
        abandoned = now - timedelta(seconds=grace if lease_grace is None else lease_grace)
        candidates = and_(
            DeliveryRow.payload.is_not(None),
            or_(
                DeliveryRow.swept_at.is_(None),
                DeliveryRow.swept_at <= now - timedelta(seconds=resweep),
            ),
            or_(
                and_(
                    DeliveryRow.status.in_(WAITING_IN_LOG),
                    DeliveryRow.next_attempt_at <= now + timedelta(seconds=horizon),
                    or_(DeliveryRow.swept_at.is_(None), DeliveryRow.next_attempt_at <= overdue),
                ),
                and_(DeliveryRow.status == Status.SENDING, DeliveryRow.lease_until <= abandoned),
                and_(DeliveryRow.status == Status.QUEUED, DeliveryRow.updated_at <= overdue),
            ),
        )
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(DeliveryRow)
                .where(candidates)
                .order_by(DeliveryRow.next_attempt_at)
                .limit(limit)
            ).all()
            if not rows:
                return []
            # Lock the rows in id order first, as claims and renewals do, skipping any a
            # worker holds right now (it is claiming it): the sweep never waits on a worker,
            # and no two writers lock rows in opposite orders (a PostgreSQL deadlock).
            # SQLite has no row locks; its writers already queue one at a time.
            free = session.scalars(
                select(DeliveryRow.id)
                .where(DeliveryRow.id.in_([r.id for r in rows]))
                .order_by(DeliveryRow.id)
                .with_for_update(skip_locked=True)
            ).all()
            # Only what this sweep marked: another sweeper may have taken some meanwhile.
            marked = set(
                session.scalars(
                    update(DeliveryRow)
                    .where(DeliveryRow.id.in_(free), candidates)
                    .values(swept_at=now)
                    .returning(DeliveryRow.id)
                    .execution_options(synchronize_session=False)
                ).all()
            )
            found = [
                (DeliveryRecord.from_row(row).envelope(), _wait(row, now))
                for row in rows
                if row.id in marked
            ]
        return found


def _wait(row: DeliveryRow, now: datetime) -> float | None:
    if row.status in WAITING_IN_LOG and row.next_attempt_at and row.next_attempt_at > now:
        return (row.next_attempt_at - now).total_seconds()
    return None
