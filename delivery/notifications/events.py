"""The events the workers have received, and what each did for each subscription."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import sessionmaker

from delivery.clock import utcnow
from delivery.log.database import upsert_insert
from delivery.log.tables import DeliveryRow
from delivery.notifications.tables import EventDeliveryRow, EventRow
from schemas.events import Event


@dataclass(frozen=True, slots=True)
class EventDelivery:
    """What one event did for one subscription."""

    subscription_id: str
    delivery_id: str
    channel: str
    address: str
    #: queued, failed (could not be rendered) or skipped (the filter said no).
    outcome: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: str
    name: str
    context: dict[str, Any]
    idempotency_key: str | None
    received_at: datetime
    fanned_out_at: datetime | None
    #: Each outcome with its delivery's current status (None: not in the log yet).
    deliveries: list[tuple[EventDelivery, str | None]] = field(default_factory=list)
    #: The API key that published it (None: Python or the command line).
    owner: str | None = None
    #: Published with a test key: its deliveries call no provider.
    test: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.name,
            "context": self.context,
            "idempotency_key": self.idempotency_key,
            "received_at": self.received_at.isoformat(),
            "fanned_out_at": self.fanned_out_at.isoformat() if self.fanned_out_at else None,
            "owner": self.owner,
            "test": self.test,
            "deliveries": [
                {
                    "subscription_id": o.subscription_id,
                    "delivery_id": o.delivery_id if o.outcome != "skipped" else None,
                    "channel": o.channel,
                    "address": o.address,
                    "outcome": o.outcome,
                    "reason": o.reason,
                    "status": status,
                }
                for o, status in self.deliveries
            ],
        }


class EventStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._insert: Any = upsert_insert(engine.dialect.name)

    def fanned_out(self, event_id: str) -> bool:
        """Whether the event was fanned out already (a replay has nothing to do)."""
        with self._sessions() as session:
            done = session.scalar(select(EventRow.fanned_out_at).where(EventRow.id == event_id))
        return done is not None

    def record(self, event: Event, outcomes: Sequence[EventDelivery]) -> None:
        """Record the event and what it did for each subscription, in one transaction. A
        replay's rows (the same ids) are left as they were."""
        now = utcnow()
        with self._sessions.begin() as session:
            session.execute(
                self._insert(EventRow)
                .values(
                    id=event.id,
                    name=event.name,
                    context=event.context,
                    idempotency_key=event.idempotency_key,
                    received_at=now,
                    fanned_out_at=None,
                    owner=event.owner,
                    test=event.test,
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
            if not outcomes:
                return
            session.execute(
                self._insert(EventDeliveryRow).on_conflict_do_nothing(
                    index_elements=["event_id", "subscription_id"]
                ),
                [
                    {
                        "event_id": event.id,
                        "subscription_id": o.subscription_id,
                        "delivery_id": o.delivery_id,
                        "channel": o.channel,
                        "address": o.address[:2048],
                        "outcome": o.outcome,
                        "reason": o.reason,
                        "created_at": now,
                    }
                    for o in outcomes
                ],
            )

    def mark_fanned_out(self, event_id: str) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(EventRow)
                .where(EventRow.id == event_id, EventRow.fanned_out_at.is_(None))
                .values(fanned_out_at=utcnow())
            )

    def get(self, event_id: str) -> EventRecord | None:
        """The event and what it made, each delivery with its status now."""
        with self._sessions() as session:
            row = session.get(EventRow, event_id)
            if row is None:
                return None
            found = session.execute(
                select(EventDeliveryRow, DeliveryRow.status)
                .outerjoin(DeliveryRow, DeliveryRow.id == EventDeliveryRow.delivery_id)
                .where(EventDeliveryRow.event_id == event_id)
                .order_by(EventDeliveryRow.channel, EventDeliveryRow.subscription_id)
            ).all()
        return EventRecord(
            id=row.id,
            name=row.name,
            context=row.context,
            idempotency_key=row.idempotency_key,
            received_at=row.received_at,
            fanned_out_at=row.fanned_out_at,
            owner=row.owner,
            test=row.test,
            deliveries=[
                (
                    EventDelivery(
                        d.subscription_id, d.delivery_id, d.channel, d.address, d.outcome, d.reason
                    ),
                    status if d.outcome != "skipped" else None,
                )
                for d, status in found
            ],
        )
