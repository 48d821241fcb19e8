"""Writes a person (or a malformed message) causes: rejecting, reopening and cancelling
deliveries."""

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from delivery.clock import utcnow
from delivery.log.counts import UNKNOWN_CHANNEL, Counter, tally_of
from delivery.log.records import DeliveryReads, DeliveryRecord
from delivery.log.tables import FINAL_STATUSES, DeliveryRow, Status


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"  # it will never be sent
    ALREADY_CANCELLED = "already-cancelled"
    DELIVERED = "delivered"  # too late: the provider has it
    SENDING = "sending"  # too late: a worker is sending it under a live lease
    FAILED = "failed"  # it has ended; it is sent again only by `delivery retry`


@dataclass(frozen=True, slots=True)
class Cancellation:
    outcome: CancelOutcome
    #: The delivery's status afterwards.
    status: str

    @property
    def cancelled(self) -> bool:
        return self.outcome in (CancelOutcome.CANCELLED, CancelOutcome.ALREADY_CANCELLED)

    def explain(self, delivery_id: str) -> str:
        """What happened, in words for the person who asked."""
        return {
            CancelOutcome.CANCELLED: f"{delivery_id} is cancelled; it will not be sent",
            CancelOutcome.ALREADY_CANCELLED: f"{delivery_id} was already cancelled",
            CancelOutcome.DELIVERED: f"{delivery_id} is {self.status} already; too late to cancel",
            CancelOutcome.SENDING: f"{delivery_id} is being sent now; too late to cancel",
            CancelOutcome.FAILED: (
                f"{delivery_id} has failed already; nothing to cancel (it is sent again only "
                "by `delivery retry`)"
            ),
        }[self.outcome]


class DeliveryAdmin(DeliveryReads):
    def reject(
        self,
        delivery_id: str,
        *,
        channel: str,
        address: str,
        reason: str,
        now: datetime | None = None,
        owner: str | None = None,
        test: bool = False,
    ) -> None:
        """Record a message that can never be sent (malformed, unknown channel) as failed.
        ``owner`` and ``test``: the API key it was made for, which may read it."""
        now = now or utcnow()
        with self._sessions.begin() as session:
            before = session.scalar(select(DeliveryRow.status).where(DeliveryRow.id == delivery_id))
            session.execute(
                self._insert(DeliveryRow)
                .values(
                    id=delivery_id,
                    channel=channel[:64],
                    address=address,
                    payload=None,
                    owner=owner,
                    test=test,
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
            if before is None or before not in FINAL_STATUSES:
                # It ends here (a delivery that had ended already was counted then).
                Counter(self._insert).add(
                    session.connection(), tally_of([(channel, Status.FAILED)]), now=now
                )

    def reopen(self, delivery_id: str, *, now: datetime | None = None) -> DeliveryRecord | None:
        """Make a failed delivery sendable again, keeping its attempts. None if not failed."""
        now = now or utcnow()
        with self._sessions.begin() as session:
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

    def cancel(
        self, delivery_id: str, *, now: datetime | None = None, owner: str | None = None
    ) -> Cancellation:
        """Make sure a delivery not yet sent is never sent.

        A delivery the log does not know yet (its message still waits in the broker) is
        recorded as cancelled, without a payload, so the worker that takes the message
        finds it done and the sweep never picks it up. One waiting in the log (queued, a
        retry due later, held by a paused channel or an open breaker, or claimed by a
        worker whose lease has expired) is marked cancelled: claims only take deliveries
        in those states, so a worker either took it first (and cancel says "sending") or
        never will. Delivered (or confirmed, bounced) and live sending are too late;
        failed has ended, and stays as it ended. ``owner``: the API key the placeholder
        row of a delivery not yet in the log belongs to.
        """
        now = now or utcnow()
        d = DeliveryRow
        cancellable = or_(
            d.status.in_((Status.QUEUED, Status.RETRYING, Status.SCHEDULED)),
            and_(d.status == Status.SENDING, or_(d.lease_until.is_(None), d.lease_until < now)),
        )
        with self._sessions.begin() as session:
            inserted = session.execute(
                self._insert(d)
                .values(
                    id=delivery_id,
                    channel="-",
                    address="-",
                    payload=None,
                    owner=owner,
                    status=Status.CANCELLED,
                    attempt_count=0,
                    attempt_base=0,
                    created_at=now,
                    updated_at=now,
                    last_error="cancelled before a worker took it from the broker",
                )
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(d.id)
            ).first()
            if inserted is not None:
                _count_cancelled(self._insert, session, UNKNOWN_CHANNEL, now)
                return Cancellation(CancelOutcome.CANCELLED, Status.CANCELLED)
            moved = session.execute(
                update(d)
                .where(d.id == delivery_id, cancellable)
                .values(
                    status=Status.CANCELLED,
                    lease_until=None,
                    next_attempt_at=None,
                    updated_at=now,
                    last_error="cancelled",
                )
                .returning(d.channel)
                .execution_options(synchronize_session=False)
            ).first()
            if moved is not None:
                _count_cancelled(self._insert, session, moved[0], now)
                return Cancellation(CancelOutcome.CANCELLED, Status.CANCELLED)
            status = session.execute(select(d.status).where(d.id == delivery_id)).scalar_one()
        if status == Status.CANCELLED:
            return Cancellation(CancelOutcome.ALREADY_CANCELLED, status)
        if status == Status.SENDING:
            return Cancellation(CancelOutcome.SENDING, status)
        if status == Status.FAILED:
            return Cancellation(CancelOutcome.FAILED, status)
        # Delivered, confirmed, bounced: the provider has it.
        return Cancellation(CancelOutcome.DELIVERED, status)


def _count_cancelled(insert: Any, session: Session, channel: str, now: datetime) -> None:
    """Count a delivery cancelled, in the transaction that cancelled it."""
    Counter(insert).add(session.connection(), tally_of([(channel, Status.CANCELLED)]), now=now)
