"""Read models of the log: a delivery with its attempts, as the CLI and the API show it."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self

from sqlalchemy import and_, func, or_, select, union_all
from sqlalchemy.orm import Session

from delivery.log.base import LogBase
from delivery.log.inbound import ReceiptRow
from delivery.log.tables import AttemptRow, DeliveryRow
from schemas import Envelope

#: The fewest characters of an id that a person may give instead of the whole of it.
MIN_ID_PREFIX = 6
#: How many characters of an id a table shows at least (more where that is not unique).
SHORT_ID = 8
#: Starts looked up per statement when checking short forms (two parameters each).
_CHUNK = 100


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
    #: ``security``, ``marketing``…, as the producer or the subscription gave it.
    category: str | None = None
    #: The API key that sent it (None: Python or the command line).
    owner: str | None = None
    #: Sent with a test key: no provider is called.
    test: bool = False
    #: The subscription it was fanned out from, and that subscription's throttle.
    subscription: str | None = None
    per_recipient: str | None = None
    #: Not to be sent after this (the producer's ``ttl``).
    expires_at: datetime | None = None

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
            category=row.category,
            owner=row.owner,
            test=bool(row.test),
            subscription=row.subscription,
            per_recipient=row.per_recipient,
            expires_at=row.expires_at,
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
                "category": self.category,
                "owner": self.owner,
                "test": self.test,
                "subscription": self.subscription,
                "per_recipient": self.per_recipient,
                "expires_at": self.expires_at,
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
            "category": self.category,
            "owner": self.owner,
            "test": self.test,
            "expires_at": _iso(self.expires_at),
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
        owner: str | None = None,
    ) -> list[DeliveryRecord]:
        """Deliveries, newest first. ``after`` is the ``(created_at, id)`` of the last one
        of a previous page: the page goes on from there whatever was inserted meanwhile.
        ``owner``: only those the API key of that name sent."""
        query = (
            select(DeliveryRow).order_by(DeliveryRow.created_at.desc(), DeliveryRow.id).limit(limit)
        )
        if status:
            query = query.where(DeliveryRow.status == status)
        if channel:
            query = query.where(DeliveryRow.channel == channel)
        if owner is not None:
            query = query.where(DeliveryRow.owner == owner)
        if since:
            query = query.where(DeliveryRow.created_at >= since)
        if after:
            created, last_id = after
            query = query.where(
                # Implied by the OR below, but only this gives the index a place to start:
                # without it PostgreSQL walked down from the newest delivery to the page
                # (177 ms half-way through a million; 0.7 ms with it).
                DeliveryRow.created_at <= created,
                or_(
                    DeliveryRow.created_at < created,
                    and_(DeliveryRow.created_at == created, DeliveryRow.id > last_id),
                ),
            )
        with self._sessions() as session:
            return [DeliveryRecord.from_row(row) for row in session.scalars(query).all()]

    def match_ids(self, text: str, *, limit: int = 5) -> list[str]:
        """``[text]`` when a delivery has that id; otherwise the ids that start with it,
        sorted, at most ``limit`` (so a caller can tell one match from several)."""
        with self._sessions() as session:
            if session.get(DeliveryRow, text) is not None:
                return [text]
            if not text:
                return []
            # A range of the primary key, not LIKE: PostgreSQL reads LIKE 'abc%' from an
            # index only under the C collation, and would read every id otherwise.
            found = session.scalars(
                select(DeliveryRow.id)
                .where(DeliveryRow.id >= text, DeliveryRow.id < _past(text))
                .order_by(DeliveryRow.id)
                .limit(limit)
            ).all()
        return [i for i in found if i.startswith(text)]

    def short_ids(self, ids: Sequence[str], *, length: int = SHORT_ID) -> dict[str, str]:
        """Each id's shortest start, of at least ``length`` characters, that no other
        delivery in the log shares: what a table shows, and ``match_ids`` finds again.

        Each start is looked up as a range of the primary key (two rows at most), all of a
        page's in one statement, so a page costs the same on a log of any size."""
        shown: dict[str, str] = {}
        pending = list(dict.fromkeys(ids))
        with self._sessions() as session:
            while pending:
                shared = _shared(session, sorted({i[:length] for i in pending}), length)
                longer = []
                for i in pending:
                    if len(i) <= length or i[:length] not in shared:
                        shown[i] = i[:length]
                    else:
                        longer.append(i)
                pending, length = longer, length + 4
        return shown

    def count_by_status(self, ids: Sequence[str] | None = None) -> dict[str, int]:
        query = select(DeliveryRow.status, func.count()).group_by(DeliveryRow.status)
        if ids is not None:
            query = query.where(DeliveryRow.id.in_(ids))
        with self._sessions() as session:
            return {row[0]: row[1] for row in session.execute(query).all()}


def _shared(session: Session, starts: Sequence[str], length: int) -> set[str]:
    """Those of ``starts`` (each ``length`` long) that two deliveries' ids or more begin
    with: up to two ids from each start's range of the primary key."""
    found: list[str] = []
    for at in range(0, len(starts), _CHUNK):
        ranges = [
            select(DeliveryRow.id)
            .where(DeliveryRow.id >= start, DeliveryRow.id < _past(start))
            .order_by(DeliveryRow.id)
            .limit(2)
            .subquery()
            for start in starts[at : at + _CHUNK]
        ]
        found += session.scalars(union_all(*(select(r.c.id) for r in ranges))).all()
    counts = Counter(i[:length] for i in found)
    return {start for start in starts if counts[start] > 1}


def _past(start: str) -> str:
    """A string after every one that begins with ``start`` and before the rest: its last
    character moved on by one. Letters and digits stay letters and digits, which every
    collation orders as the code points do (PostgreSQL's may pass over punctuation)."""
    last = start[-1]
    if last == "9":
        return start[:-1] + "a"
    if last.isascii() and last.isalnum() and last not in "zZ":
        return start[:-1] + chr(ord(last) + 1)
    return start + "\U0010ffff"
