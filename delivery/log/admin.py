"""Writes a person (or a malformed message) causes: rejecting and reopening deliveries."""

from datetime import datetime

from sqlalchemy import update

from delivery.clock import utcnow
from delivery.log.records import DeliveryReads, DeliveryRecord
from delivery.log.tables import DeliveryRow, Status


class DeliveryAdmin(DeliveryReads):
    def reject(
        self,
        delivery_id: str,
        *,
        channel: str,
        address: str,
        reason: str,
        now: datetime | None = None,
    ) -> None:
        """Record a message that can never be sent (malformed, unknown channel) as failed."""
        now = now or utcnow()
        with self._write_lock, self._sessions.begin() as session:
            session.execute(
                self._insert(DeliveryRow)
                .values(
                    id=delivery_id,
                    channel=channel[:64],
                    address=address,
                    payload=None,
                    status=Status.FAILED,
                    attempt_count=0,
                    attempt_base=0,
                    created_at=now,
                    updated_at=now,
                    last_error=reason,
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
            session.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id == delivery_id, DeliveryRow.status != Status.DELIVERED)
                .values(status=Status.FAILED, last_error=reason, updated_at=now, lease_until=None)
                .execution_options(synchronize_session=False)
            )

    def reopen(self, delivery_id: str, *, now: datetime | None = None) -> DeliveryRecord | None:
        """Make a failed delivery sendable again, keeping its attempts. None if not failed."""
        now = now or utcnow()
        with self._write_lock, self._sessions.begin() as session:
            moved = session.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.id == delivery_id,
                    DeliveryRow.status == Status.FAILED,
                    DeliveryRow.payload.is_not(None),
                )
                .values(
                    status=Status.QUEUED,
                    attempt_base=DeliveryRow.attempt_count,
                    next_attempt_at=None,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        return self.get(delivery_id) if moved else None
