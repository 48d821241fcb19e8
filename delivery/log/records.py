"""Read models of the log: a delivery with its attempts, as the CLI and the API show it."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self

from sqlalchemy import and_, func, or_, select

from delivery.log.base import LogBase
from delivery.log.inbound import ReceiptRow
from delivery.log.tables import AttemptRow, DeliveryRow
from schemas import Envelope


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    number: int
    started_at: datetime
    duration_ms: float
    outcome: str
    status_code: int | None
    error: str | None
    provider_ref: str | None
    detail: dict[str, Any]
    worker: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "started_at": self.started_at.isoformat(),
            "duration_ms": round(self.duration_ms, 3),
            "outcome": self.outcome,
            "status_code": self.status_code,
            "error": self.error,
            "provider_ref": self.provider_ref,
            "detail": self.detail,
            "worker": self.worker,
        }


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: str
    channel: str
    dispatcher: str | None
    address: str
    payload: dict[str, Any] | None
    idempotency_key: str | None
    status: str
    attempt_count: int
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    provider_ref: str | None
    attempts: list[AttemptRecord] = field(default_factory=list)
    #: Providers' receipts, oldest first (``delivery.inbound.receipts``).
    receipts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(
        cls,
        row: DeliveryRow,
        attempts: Sequence[AttemptRow] = (),
        receipts: Sequence[ReceiptRow] = (),
    ) -> Self:
        return cls(
            id=row.id,
            channel=row.channel,
            dispatcher=row.dispatcher,
            address=row.address,
            payload=row.payload,
            idempotency_key=row.idempotency_key,
            status=row.status,
            attempt_count=row.attempt_count,
            created_at=row.created_at,
            updated_at=row.updated_at,
            next_attempt_at=row.next_attempt_at,
            delivered_at=row.delivered_at,
            last_error=row.last_error,
            provider_ref=row.provider_ref,
            attempts=[
                AttemptRecord(
                    number=a.number,
                    started_at=a.started_at,
                    duration_ms=a.duration_ms,
                    outcome=a.outcome,
                    status_code=a.status_code,
                    error=a.error,
                    provider_ref=a.provider_ref,
                    detail=a.detail or {},
                    worker=a.worker,
                )
                for a in attempts
            ],
            receipts=[
                {
                    "status": r.status,
                    "provider_status": r.provider_status,
                    "error_code": r.error_code,
                    "received_at": r.received_at.isoformat(),
                    "provider_ref": r.provider_ref,
                }
                for r in receipts
            ],
        )

    def envelope(self) -> Envelope:
        """The task message that sends this delivery again."""
        return Envelope.model_validate(
            {
                "id": self.id,
                "channel": self.channel,
                "address": self.address,
                "payload": self.payload or {},
                "idempotency_key": self.idempotency_key,
            }
        )

    def to_json(self, *, with_attempts: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "channel": self.channel,
            "dispatcher": self.dispatcher,
            "address": self.address,
            "idempotency_key": self.idempotency_key,
            "status": self.status,
            "attempt_count": self.attempt_count,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "next_attempt_at": _iso(self.next_attempt_at),
            "delivered_at": _iso(self.delivered_at),
            "last_error": self.last_error,
            "provider_ref": self.provider_ref,
        }
        if with_attempts:
            doc["payload"] = self.payload
            doc["attempts"] = [a.to_json() for a in self.attempts]
            doc["receipts"] = self.receipts
        return doc


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class DeliveryReads(LogBase):
    """Queries a person or a program reads the log with."""

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        with self._sessions() as session:
            row = session.get(DeliveryRow, delivery_id)
            if row is None:
                return None
            attempts = session.scalars(
                select(AttemptRow)
                .where(AttemptRow.delivery_id == delivery_id)
                .order_by(AttemptRow.number)
            ).all()
            receipts = session.scalars(
                select(ReceiptRow)
                .where(ReceiptRow.delivery_id == delivery_id)
                .order_by(ReceiptRow.received_at, ReceiptRow.id)
            ).all()
            return DeliveryRecord.from_row(row, attempts, receipts)

    def find(
        self,
        *,
        status: str | None = None,
        channel: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        after: tuple[datetime, str] | None = None,
    ) -> list[DeliveryRecord]:
        """Deliveries, newest first. ``after`` is the ``(created_at, id)`` of the last one
        of a previous page: the page goes on from there whatever was inserted meanwhile."""
        query = (
            select(DeliveryRow).order_by(DeliveryRow.created_at.desc(), DeliveryRow.id).limit(limit)
        )
        if status:
            query = query.where(DeliveryRow.status == status)
        if channel:
            query = query.where(DeliveryRow.channel == channel)
        if since:
            query = query.where(DeliveryRow.created_at >= since)
        if after:
            created, last_id = after
            query = query.where(
                or_(
                    DeliveryRow.created_at < created,
                    and_(DeliveryRow.created_at == created, DeliveryRow.id > last_id),
                )
            )
        with self._sessions() as session:
            return [DeliveryRecord.from_row(row) for row in session.scalars(query).all()]

    def count_by_status(self, ids: Sequence[str] | None = None) -> dict[str, int]:
        query = select(DeliveryRow.status, func.count()).group_by(DeliveryRow.status)
        if ids is not None:
            query = query.where(DeliveryRow.id.in_(ids))
        with self._sessions() as session:
            return {row[0]: row[1] for row in session.execute(query).all()}
