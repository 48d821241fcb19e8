"""The inbox: every inbound message a backend accepted, and what each handler made of it."""

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, select, update

from delivery.clock import utcnow
from delivery.inbound.base import InboundMessage
from delivery.inbound.handler import ReceivedMessage
from delivery.log.database import upsert_insert
from delivery.log.inbound import InboundHandlingRow, InboundMessageRow

#: Namespace for message ids derived from ``(backend, provider id)``.
INBOUND_NAMESPACE = uuid.UUID("3c1f6a0e-2b7d-4f57-a4c9-1e8d5b0f9a62")


class MessageStatus(enum.StrEnum):
    RECEIVED = "received"  # recorded, not routed yet
    HANDLED = "handled"  # every handler that took it succeeded
    UNHANDLED = "unhandled"  # no handler takes it
    RETRYING = "retrying"  # a handler raised; it is tried again
    FAILED = "failed"  # a handler gave up


class HandlingOutcome(enum.StrEnum):
    HANDLED = "handled"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Handling:
    handler: str
    outcome: str
    result: str | None
    attempts: int
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "handler": self.handler,
            "outcome": self.outcome,
            "result": self.result,
            "attempts": self.attempts,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class InboxEntry:
    id: str
    backend: str
    kind: str
    identity: str
    text: str
    extra: dict[str, Any]
    provider_id: str | None
    received_at: datetime
    status: str
    routed_at: datetime | None
    handling: list[Handling] = field(default_factory=list)

    def received(self, channel: str | None) -> ReceivedMessage:
        """The message as handlers see it, with the backend's reply channel."""
        return ReceivedMessage(
            id=self.id,
            backend=self.backend,
            kind=self.kind,
            identity=self.identity,
            text=self.text,
            extra=self.extra,
            provider_id=self.provider_id,
            received_at=self.received_at,
            channel=channel,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "backend": self.backend,
            "kind": self.kind,
            "identity": self.identity,
            "text": self.text,
            "extra": self.extra,
            "provider_id": self.provider_id,
            "received_at": self.received_at.isoformat(),
            "status": self.status,
            "routed_at": self.routed_at.isoformat() if self.routed_at else None,
            "handling": [h.to_json() for h in self.handling],
        }


@dataclass(frozen=True, slots=True)
class Recorded:
    id: str
    #: A provider's retry of a message already recorded.
    duplicate: bool
    status: str


def message_id(backend: str, provider_id: str | None) -> str:
    """The same provider id on the same backend always yields the same id."""
    if provider_id is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(INBOUND_NAMESPACE, f"{backend}\x00{provider_id}"))


_MESSAGES = cast(Table, InboundMessageRow.__table__)
_HANDLING = cast(Table, InboundHandlingRow.__table__)


class Inbox:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert: Any = upsert_insert(engine.dialect.name)

    def record(self, backend: str, kind: str, message: InboundMessage) -> Recorded:
        """Record a message once; a retry of it (same provider id) returns the first."""
        ident = message_id(backend, message.provider_id)
        statement = (
            self._insert(_MESSAGES)
            .values(
                id=ident,
                backend=backend,
                kind=kind,
                identity=message.identity,
                text=message.text,
                extra=message.extra,
                provider_id=message.provider_id,
                received_at=utcnow(),
                status=MessageStatus.RECEIVED.value,
            )
            .on_conflict_do_nothing()
            # What was inserted is what comes back: psycopg's rowcount here is -1.
            .returning(_MESSAGES.c.id)
        )
        with self.engine.begin() as connection:
            if connection.execute(statement).first() is not None:
                return Recorded(ident, duplicate=False, status=MessageStatus.RECEIVED.value)
            status = connection.execute(
                select(_MESSAGES.c.status).where(
                    _MESSAGES.c.backend == backend, _MESSAGES.c.provider_id == message.provider_id
                )
            ).scalar_one()
        return Recorded(ident, duplicate=True, status=status)

    def get(self, ident: str) -> InboxEntry | None:
        entries = self._entries(select(_MESSAGES).where(_MESSAGES.c.id == ident))
        return entries[0] if entries else None

    def find(self, *, backend: str | None = None, limit: int = 50) -> list[InboxEntry]:
        """Messages, newest first, with their handling."""
        query = (
            select(_MESSAGES).order_by(_MESSAGES.c.received_at.desc(), _MESSAGES.c.id).limit(limit)
        )
        if backend:
            query = query.where(_MESSAGES.c.backend == backend)
        return self._entries(query)

    def _entries(self, query: Any) -> list[InboxEntry]:
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
            handling: dict[str, list[Handling]] = {}
            if rows:
                for h in connection.execute(
                    select(_HANDLING)
                    .where(_HANDLING.c.message_id.in_([r.id for r in rows]))
                    .order_by(_HANDLING.c.handler)
                ):
                    handling.setdefault(h.message_id, []).append(
                        Handling(h.handler, h.outcome, h.result, h.attempts, h.updated_at)
                    )
        return [
            InboxEntry(
                id=r.id,
                backend=r.backend,
                kind=r.kind,
                identity=r.identity,
                text=r.text,
                extra=r.extra or {},
                provider_id=r.provider_id,
                received_at=r.received_at,
                status=r.status,
                routed_at=r.routed_at,
                handling=handling.get(r.id, []),
            )
            for r in rows
        ]

    def record_handling(
        self,
        ident: str,
        handler: str,
        outcome: HandlingOutcome,
        result: str | None,
        *,
        attempt: bool = True,
    ) -> int:
        """Record what a handler made of a message (``attempt``: this was another try);
        returns the attempts it has made. One upsert, so two copies of a route task
        running at once cannot trip over each other's row."""
        now = utcnow()
        step = 1 if attempt else 0
        statement = self._insert(_HANDLING).values(
            message_id=ident,
            handler=handler,
            outcome=outcome.value,
            result=result,
            attempts=step,
            updated_at=now,
        )
        statement = statement.on_conflict_do_update(
            index_elements=[_HANDLING.c.message_id, _HANDLING.c.handler],
            set_={
                "outcome": outcome.value,
                "result": result,
                "attempts": _HANDLING.c.attempts + step,
                "updated_at": now,
            },
        ).returning(_HANDLING.c.attempts)
        with self.engine.begin() as connection:
            return int(connection.execute(statement).scalar_one())

    def set_status(self, ident: str, status: MessageStatus) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(_MESSAGES)
                .where(_MESSAGES.c.id == ident)
                .values(status=status.value, routed_at=utcnow())
            )
