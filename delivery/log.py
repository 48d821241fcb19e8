"""The delivery log: every delivery and every attempt. The source of truth; the broker is
only transport."""

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from sqlalchemy import Engine, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from delivery.db import get_engine
from delivery.models import AttemptRow, DeliveryRow, Outcome, Status
from schemas import Envelope, Settings

#: A scheduled retry may arrive this early (clock skew between workers) and still run.
DUE_SLACK = timedelta(seconds=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


class ClaimState(enum.Enum):
    CLAIMED = "claimed"  # this worker may send now
    DONE = "done"  # delivered or failed already: acknowledge and skip
    BUSY = "busy"  # another worker holds the lease: look again when it ends
    NOT_DUE = "not-due"  # a retry is scheduled for later: look again then


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    delivery_id: str
    #: The attempt number this claim is for (1 for the first try).
    attempt: int = 0
    #: Attempts made before the latest replay (the retry policy counts from here).
    attempt_base: int = 0
    #: For BUSY and NOT_DUE: when to look again.
    wake_at: datetime | None = None
    status: str = ""


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

    @classmethod
    def from_row(cls, row: DeliveryRow, attempts: Sequence[AttemptRow] = ()) -> Self:
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
        return doc


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one attempt ended, as the service decided it."""

    outcome: Outcome
    started_at: datetime
    duration_ms: float
    error: str | None = None
    status_code: int | None = None
    provider_ref: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    next_attempt_at: datetime | None = None


class DeliveryLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(get_engine(settings.resolved_database_url))

    def _insert(self) -> Any:
        # Both backends have INSERT … ON CONFLICT DO NOTHING, spelt by their own dialect.
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(DeliveryRow)

    def claim(
        self,
        envelope: Envelope,
        *,
        lease: float,
        dispatcher: str | None = None,
        now: datetime | None = None,
    ) -> Claim:
        """Record the delivery if new, and take it for one attempt if nobody else may.

        A conditional update, so two copies of one message never both send: only one of
        them moves the row into ``sending``.
        """
        now = now or utcnow()
        deferred = envelope.not_before is not None and envelope.not_before > now + DUE_SLACK
        insert = (
            self._insert()
            .values(
                id=envelope.id,
                channel=envelope.channel,
                dispatcher=dispatcher,
                address=envelope.address,
                payload=envelope.payload.model_dump(mode="json"),
                idempotency_key=envelope.idempotency_key,
                # A deferred delivery waits in the log until due; the sweep sends it.
                status=Status.RETRYING if deferred else Status.QUEUED,
                next_attempt_at=envelope.not_before if deferred else None,
                attempt_count=0,
                attempt_base=0,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        claimable = or_(
            DeliveryRow.status == Status.QUEUED,
            and_(
                DeliveryRow.status == Status.RETRYING,
                or_(
                    DeliveryRow.next_attempt_at.is_(None),
                    DeliveryRow.next_attempt_at <= now + DUE_SLACK,
                ),
            ),
            and_(DeliveryRow.status == Status.SENDING, DeliveryRow.lease_until < now),
        )
        take = (
            update(DeliveryRow)
            .where(DeliveryRow.id == envelope.id, claimable)
            .values(
                status=Status.SENDING,
                attempt_count=DeliveryRow.attempt_count + 1,
                lease_until=now + timedelta(seconds=lease),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        with self._sessions.begin() as session:
            session.execute(insert)
            taken = session.execute(
                take.returning(DeliveryRow.attempt_count, DeliveryRow.attempt_base)
            ).one_or_none()
            if taken is not None:
                self._start_attempt(session, envelope.id, taken.attempt_count, now)
                return Claim(
                    ClaimState.CLAIMED,
                    envelope.id,
                    taken.attempt_count,
                    taken.attempt_base,
                    status=Status.SENDING,
                )
            row = session.execute(
                select(
                    DeliveryRow.status,
                    DeliveryRow.attempt_count,
                    DeliveryRow.lease_until,
                    DeliveryRow.next_attempt_at,
                ).where(DeliveryRow.id == envelope.id)
            ).one()
        if row.status in (Status.DELIVERED, Status.FAILED):
            return Claim(ClaimState.DONE, envelope.id, row.attempt_count, status=row.status)
        if row.status == Status.SENDING:
            return Claim(
                ClaimState.BUSY,
                envelope.id,
                row.attempt_count,
                wake_at=row.lease_until,
                status=row.status,
            )
        return Claim(
            ClaimState.NOT_DUE,
            envelope.id,
            row.attempt_count,
            wake_at=row.next_attempt_at,
            status=row.status,
        )

    def _start_attempt(
        self, session: Session, delivery_id: str, number: int, now: datetime
    ) -> None:
        """Write the attempt before sending, so a worker that dies mid-send leaves a trace."""
        if number > 1:
            # An earlier attempt still marked as under way belonged to a worker that died.
            session.execute(
                update(AttemptRow)
                .where(AttemptRow.delivery_id == delivery_id, AttemptRow.outcome == Outcome.SENDING)
                .values(
                    outcome=Outcome.INTERRUPTED,
                    error="the worker stopped before recording the outcome",
                )
                .execution_options(synchronize_session=False)
            )
        session.add(
            AttemptRow(
                delivery_id=delivery_id,
                number=number,
                started_at=now,
                duration_ms=0.0,
                outcome=Outcome.SENDING,
            )
        )

    def release(self, claim: Claim, *, until: datetime, parked: bool) -> None:
        """Give a claim back without spending an attempt: the channel is paused or throttled."""
        with self._sessions.begin() as session:
            session.execute(
                delete(AttemptRow).where(
                    AttemptRow.delivery_id == claim.delivery_id,
                    AttemptRow.number == claim.attempt,
                    AttemptRow.outcome == Outcome.SENDING,
                )
            )
            session.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.id == claim.delivery_id,
                    DeliveryRow.status == Status.SENDING,
                    DeliveryRow.attempt_count == claim.attempt,
                )
                .values(
                    status=Status.RETRYING,
                    attempt_count=DeliveryRow.attempt_count - 1,
                    next_attempt_at=until,
                    lease_until=None,
                    swept_at=utcnow() if parked else None,
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )

    def finish(
        self,
        claim: Claim,
        result: AttemptResult,
        *,
        dispatcher: str | None,
        worker: str | None,
        health: Callable[[Session], None] | None = None,
        parked: bool = False,
    ) -> bool:
        """Record the attempt and move the delivery on. False if the lease was lost meanwhile.

        ``health`` runs in the same transaction: the channel's circuit-breaker bookkeeping.
        ``parked`` says a retry waits in the broker, so the sweep leaves it alone for now.
        """
        status = {
            Outcome.DELIVERED: Status.DELIVERED,
            Outcome.RETRY: Status.RETRYING,
            Outcome.FAILED: Status.FAILED,
        }[result.outcome]
        now = result.started_at + timedelta(milliseconds=result.duration_ms)
        values: dict[str, Any] = {
            "status": status,
            "updated_at": now,
            "lease_until": None,
            "next_attempt_at": result.next_attempt_at,
            "last_error": result.error,
            "swept_at": now if parked else None,
        }
        if dispatcher is not None:
            values["dispatcher"] = dispatcher
        if result.outcome is Outcome.DELIVERED:
            values["delivered_at"] = now
            values["provider_ref"] = result.provider_ref
        with self._sessions.begin() as session:
            session.execute(
                update(AttemptRow)
                .where(
                    AttemptRow.delivery_id == claim.delivery_id,
                    AttemptRow.number == claim.attempt,
                )
                .values(
                    started_at=result.started_at,
                    duration_ms=result.duration_ms,
                    outcome=result.outcome,
                    status_code=result.status_code,
                    error=result.error,
                    provider_ref=result.provider_ref,
                    detail=result.detail or None,
                    worker=worker,
                )
                .execution_options(synchronize_session=False)
            )
            if health is not None:
                health(session)
            moved = session.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.id == claim.delivery_id,
                    DeliveryRow.status == Status.SENDING,
                    DeliveryRow.attempt_count == claim.attempt,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        return bool(moved)

    def sweep(
        self, *, now: datetime, horizon: float, grace: float, resweep: float, limit: int = 1000
    ) -> list[tuple[Envelope, float]]:
        """Deliveries the broker does not hold a message for, with seconds until each is due.

        Picks retries due within ``horizon`` seconds that were scheduled here rather than
        parked in the broker; retries parked in the broker ``grace`` seconds past due (their
        message was lost); leases expired ``grace`` seconds ago (their worker died); and
        queued deliveries idle that long (replayed, then the publish failed). Each is marked,
        so it is not picked again for ``resweep`` seconds.
        """
        overdue = now - timedelta(seconds=grace)
        candidates = and_(
            DeliveryRow.payload.is_not(None),
            or_(
                DeliveryRow.swept_at.is_(None),
                DeliveryRow.swept_at <= now - timedelta(seconds=resweep),
            ),
            or_(
                and_(
                    DeliveryRow.status == Status.RETRYING,
                    DeliveryRow.next_attempt_at <= now + timedelta(seconds=horizon),
                    or_(DeliveryRow.swept_at.is_(None), DeliveryRow.next_attempt_at <= overdue),
                ),
                and_(DeliveryRow.status == Status.SENDING, DeliveryRow.lease_until <= overdue),
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
            # Only what this sweep marked: another sweeper may have taken some meanwhile.
            marked = set(
                session.scalars(
                    update(DeliveryRow)
                    .where(DeliveryRow.id.in_([r.id for r in rows]), candidates)
                    .values(swept_at=now)
                    .returning(DeliveryRow.id)
                    .execution_options(synchronize_session=False)
                ).all()
            )
            found = [
                (
                    DeliveryRecord.from_row(row).envelope(),
                    max(0.0, (row.next_attempt_at - now).total_seconds())
                    if row.status == Status.RETRYING and row.next_attempt_at
                    else 0.0,
                )
                for row in rows
                if row.id in marked
            ]
        return found

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
        with self._sessions.begin() as session:
            session.execute(
                self._insert()
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
            return DeliveryRecord.from_row(row, attempts)

    def find(
        self,
        *,
        status: str | None = None,
        channel: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[DeliveryRecord]:
        """Deliveries, newest first."""
        query = (
            select(DeliveryRow).order_by(DeliveryRow.created_at.desc(), DeliveryRow.id).limit(limit)
        )
        if status:
            query = query.where(DeliveryRow.status == status)
        if channel:
            query = query.where(DeliveryRow.channel == channel)
        if since:
            query = query.where(DeliveryRow.created_at >= since)
        with self._sessions() as session:
            return [DeliveryRecord.from_row(row) for row in session.scalars(query).all()]

    def count_by_status(self, ids: Sequence[str] | None = None) -> dict[str, int]:
        query = select(DeliveryRow.status, func.count()).group_by(DeliveryRow.status)
        if ids is not None:
            query = query.where(DeliveryRow.id.in_(ids))
        with self._sessions() as session:
            return {row[0]: row[1] for row in session.execute(query).all()}
