"""The log's hot path: claiming deliveries and recording attempts.

Every write is one short transaction of prebuilt statements: building SQL expressions per
delivery costs more than running them.
"""

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, and_, bindparam, func, or_, select, update

from delivery.clock import utcnow
from delivery.log import early_receipts
from delivery.log.base import LogBase
from delivery.log.counts import Counter, Tally
from delivery.log.tables import FINAL_STATUSES, AttemptRow, DeliveryRow, Outcome, Status
from schemas import Envelope

#: A scheduled retry may arrive this early (clock skew between workers) and still run.
DUE_SLACK = timedelta(seconds=1)
#: Longest provider reference the log keeps (the column's size).
PROVIDER_REF_LENGTH = 255
#: Leases renewed per statement.
RENEW_CHUNK = 500

#: Runs first in a claim's transaction (``claim``, ``claim_many``): the places of the
#: deliveries given that must not be claimed, each with the final status it recorded them
#: in itself (adding them to the tally, which the claim writes to the counts). The erasure
#: screens this way the deliveries of messages published before their address was erased
#: (``delivery.erasure.backlog``): no transaction, and no connection, of its own.
Screen = Callable[[Connection, Tally], Mapping[int, str]]


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
    #: For CLAIMED: the delivery's channel in the log as it was claimed (failover may have
    #: moved it from the message's), for the counts when its attempt is recorded.
    channel: str | None = None


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


_STATUS_AFTER = {
    Outcome.DELIVERED: Status.DELIVERED,
    Outcome.RETRY: Status.RETRYING,
    Outcome.FAILED: Status.FAILED,
    Outcome.SKIPPED: Status.SKIPPED,
    Outcome.EXPIRED: Status.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class Finished:
    """An attempt that has ended, to be recorded."""

    claim: Claim
    result: AttemptResult
    dispatcher: str | None = None
    #: A retry that waits in the broker: the sweep leaves it alone for now.
    parked: bool = False


class DeliveryStore(LogBase):
    """Claims and attempts: what a worker writes for every delivery."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._build_statements()

    def _build_statements(self) -> None:
        insert = self._insert
        d, a = DeliveryRow, AttemptRow
        now: Any = bindparam("p_now")
        lease_until: Any = bindparam("p_lease_until")
        # A new delivery is inserted already claimed: one statement in the common case.
        self._insert_claimed = (
            insert(d)
            .values(
                id=bindparam("p_id"), channel=bindparam("p_channel"), dispatcher=None,
                address=bindparam("p_address"), payload=bindparam("p_payload"),
                idempotency_key=bindparam("p_idempotency_key"), status=bindparam("p_status"),
                next_attempt_at=bindparam("p_next_attempt_at"), lease_until=lease_until,
                attempt_count=bindparam("p_attempt_count"), attempt_base=0,
                owner=bindparam("p_owner"), test=bindparam("p_test"),
                category=bindparam("p_category"), subscription=bindparam("p_subscription"),
                per_recipient=bindparam("p_per_recipient"), expires_at=bindparam("p_expires_at"),
                created_at=now, updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )  # fmt: skip
        self._insert_claimed_ids = self._insert_claimed.returning(d.id)
        self._insert_claimed = self._insert_claimed.returning(d.attempt_count)
        claimable = or_(
            d.status == Status.QUEUED,
            and_(
                d.status.in_((Status.RETRYING, Status.SCHEDULED)),
                or_(d.next_attempt_at.is_(None), d.next_attempt_at <= bindparam("p_due_by")),
            ),
            and_(d.status == Status.SENDING, d.lease_until < now),
        )
        self._take = (
            update(d)
            .where(d.id == bindparam("p_id"), claimable)
            .values(
                status=Status.SENDING, attempt_count=d.attempt_count + 1,
                lease_until=lease_until, updated_at=now,
            )
            .returning(d.attempt_count, d.attempt_base, d.lease_until.is_not(None), d.channel)
        )  # fmt: skip
        self._state = select(d.status, d.attempt_count, d.lease_until, d.next_attempt_at).where(
            d.id == bindparam("p_id")
        )
        attempt_columns = (
            "started_at", "duration_ms", "outcome", "status_code", "error", "provider_ref",
            "detail", "worker",
        )  # fmt: skip
        # Upserts: a worker that lost its lease may record an attempt already marked
        # interrupted by the worker that took over; the real outcome wins.
        self._record_attempt = (
            insert(a)
            .values(delivery_id=bindparam("p_id"), number=bindparam("p_number"),
                    **{c: bindparam(f"p_{c}") for c in attempt_columns})
        )  # fmt: skip
        self._record_attempt = self._record_attempt.on_conflict_do_update(
            index_elements=["delivery_id", "number"],
            set_={c: getattr(self._record_attempt.excluded, c) for c in attempt_columns},
        )
        self._mark_interrupted = (
            insert(a)
            .values(
                delivery_id=bindparam("p_id"), number=bindparam("p_number"), started_at=now,
                duration_ms=0.0, outcome=Outcome.INTERRUPTED,
                error="the worker stopped before recording the outcome",
            )
            .on_conflict_do_nothing(index_elements=["delivery_id", "number"])
        )  # fmt: skip
        held = and_(
            d.id == bindparam("p_id"),
            d.status == Status.SENDING,
            d.attempt_count == bindparam("p_number"),
        )
        self._move_on = update(d).where(held).values(
            status=bindparam("p_status"),
            attempt_base=bindparam("p_attempt_base"), updated_at=now, lease_until=None,
            next_attempt_at=bindparam("p_next_attempt_at"), last_error=bindparam("p_error"),
            swept_at=bindparam("p_swept_at"),
            dispatcher=func.coalesce(bindparam("p_dispatcher"), d.dispatcher),
            delivered_at=bindparam("p_delivered_at"),
            provider_ref=func.coalesce(bindparam("p_provider_ref"), d.provider_ref),
        )  # fmt: skip
        self._move_on_one = self._move_on.returning(d.channel)
        self._renew = update(d).where(held).values(lease_until=bindparam("p_until"))
        # What the counts need of deliveries that ended: their channel, and whether this
        # batch's write is what moved them (when some leases were lost).
        self._ended = select(d.id, d.channel, d.status, d.attempt_count).where(
            d.id.in_(bindparam("p_ids", expanding=True))
        )
        self._counter = Counter(insert)
        self._release = update(d).where(held).values(
            status=bindparam("p_status"), attempt_count=d.attempt_count - 1,
            next_attempt_at=bindparam("p_until"), lease_until=None,
            swept_at=bindparam("p_swept_at"), updated_at=now,
        )  # fmt: skip

    def claim(
        self,
        envelope: Envelope,
        *,
        lease: float,
        now: datetime | None = None,
        screen: Screen | None = None,
    ) -> Claim:
        """Record the delivery if new, and take it for one attempt if nobody else may.

        A conditional write, so two copies of one message never both send: only one of
        them moves the row into ``sending``. Attempts are recorded when they end; one cut
        short by a crash is recorded as interrupted by the worker that takes over.
        ``screen``: see ``Screen``; a delivery it screens out comes back ``DONE``.
        """
        now = now or utcnow()
        lease_until = now + timedelta(seconds=lease)
        params = self._new_row(envelope, now, lease_until)
        with self._write() as connection:
            tally = Tally()
            screened = screen(connection, tally) if screen is not None else {}
            if 0 in screened:
                self._counter.add(connection, tally, now=now)
                return Claim(ClaimState.DONE, envelope.id, status=screened[0])
            inserted = connection.execute(self._insert_claimed, params).first()
            if inserted is not None and params["p_status"] == Status.SENDING:
                return Claim(
                    ClaimState.CLAIMED,
                    envelope.id,
                    1,
                    0,
                    status=Status.SENDING,
                    channel=envelope.channel,
                )
            claim = self._claim_existing(connection, envelope.id, now, lease_until, tally)
            self._counter.add(connection, tally, now=now)
            return claim

    def claim_many(
        self,
        envelopes: Sequence[Envelope],
        *,
        lease: float,
        now: datetime | None = None,
        screen: Screen | None = None,
    ) -> list[Claim]:
        """``claim`` for a batch in one transaction: new deliveries in one statement.

        A delivery id that appears twice in ``envelopes`` is claimed once; its later copies
        come back ``DONE``, since the first copy is the one that sends. ``screen``: see
        ``Screen``; those it screens out come back ``DONE``.
        """
        now = now or utcnow()
        lease_until = now + timedelta(seconds=lease)
        # Rows are written in id order, so two batches that share deliveries lock them in
        # the same order and cannot deadlock each other (PostgreSQL). The sort is stable:
        # of two copies of one id, the first given is the first claimed.
        order = sorted(range(len(envelopes)), key=lambda i: envelopes[i].id)
        rows = [self._new_row(envelopes[i], now, lease_until) for i in order]
        claims: list[Claim | None] = [None] * len(envelopes)
        seen: set[str] = set()
        tally = Tally()
        with self._write() as connection:
            screened = screen(connection, tally) if screen is not None else {}
            if screened:
                for index, status in screened.items():
                    claims[index] = Claim(ClaimState.DONE, envelopes[index].id, status=status)
                kept = [(i, row) for i, row in zip(order, rows, strict=True) if i not in screened]
                order, rows = [i for i, _ in kept], [row for _, row in kept]
            # One multi-row INSERT; a conflicting id (a copy seen before) returns nothing.
            inserted = (
                set(connection.execute(self._insert_claimed_ids, rows).scalars()) if rows else set()
            )
            for index, row in zip(order, rows, strict=True):
                delivery_id = envelopes[index].id
                if delivery_id in seen:
                    # Another copy in this batch holds it.
                    claims[index] = Claim(ClaimState.DONE, delivery_id, status=Status.SENDING)
                elif delivery_id in inserted and row["p_status"] == Status.SENDING:
                    claims[index] = Claim(
                        ClaimState.CLAIMED,
                        delivery_id,
                        1,
                        0,
                        status=Status.SENDING,
                        channel=envelopes[index].channel,
                    )
                else:
                    claims[index] = self._claim_existing(
                        connection, delivery_id, now, lease_until, tally
                    )
                seen.add(delivery_id)
            # Last, like every write to the counts: deliveries' rows are always locked
            # before the counts' rows, so no two transactions wait for each other in a ring.
            self._counter.add(connection, tally, now=now)
        return [c for c in claims if c is not None]

    @staticmethod
    def _new_row(envelope: Envelope, now: datetime, lease_until: datetime) -> dict[str, Any]:
        """Parameters of the row a new delivery is inserted as: claimed, unless deferred."""
        deferred = envelope.not_before is not None and envelope.not_before > now + DUE_SLACK
        return {
            "p_id": envelope.id,
            "p_channel": envelope.channel,
            "p_address": envelope.address,
            "p_payload": envelope.payload.model_dump(mode="json"),
            "p_idempotency_key": envelope.idempotency_key,
            "p_owner": envelope.owner,
            "p_test": envelope.test,
            "p_category": envelope.category,
            "p_subscription": envelope.subscription,
            "p_per_recipient": envelope.per_recipient,
            "p_expires_at": envelope.expires_at,
            # A deferred delivery waits in the log until due; the sweep sends it.
            "p_status": Status.RETRYING if deferred else Status.SENDING,
            "p_next_attempt_at": envelope.not_before if deferred else None,
            "p_lease_until": None if deferred else lease_until,
            "p_attempt_count": 0 if deferred else 1,
            "p_now": now,
        }

    def _claim_existing(
        self,
        connection: Connection,
        delivery_id: str,
        now: datetime,
        lease_until: datetime,
        interrupted: Tally,
    ) -> Claim:
        """Take a delivery already in the log, or say why not, inside ``connection``'s
        transaction. An attempt it marks interrupted is added to ``interrupted``, for the
        caller to count at the end of the transaction."""
        taken = connection.execute(
            self._take,
            {"p_id": delivery_id, "p_now": now, "p_due_by": now + DUE_SLACK,
             "p_lease_until": lease_until},
        ).first()  # fmt: skip
        if taken is not None:
            number, base = taken[0], taken[1]
            if number > 1:
                # The attempt before, if unrecorded, belonged to a worker that died.
                marked = connection.execute(
                    self._mark_interrupted,
                    {"p_id": delivery_id, "p_number": number - 1, "p_now": now},
                ).rowcount
                if marked:
                    interrupted.attempt(Outcome.INTERRUPTED, 0.0)
            return Claim(
                ClaimState.CLAIMED,
                delivery_id,
                number,
                base,
                status=Status.SENDING,
                channel=taken[3],
            )
        row = connection.execute(self._state, {"p_id": delivery_id}).one()
        if row.status in FINAL_STATUSES:
            return Claim(ClaimState.DONE, delivery_id, row.attempt_count, status=row.status)
        if row.status == Status.SENDING:
            return Claim(
                ClaimState.BUSY,
                delivery_id,
                row.attempt_count,
                wake_at=row.lease_until,
                status=row.status,
            )
        return Claim(
            ClaimState.NOT_DUE,
            delivery_id,
            row.attempt_count,
            wake_at=row.next_attempt_at,
            status=row.status,
        )

    def renew(
        self, held: Sequence[tuple[str, int]], *, lease: float, now: datetime | None = None
    ) -> int:
        """Extend the leases of deliveries this worker is still sending: ``(id, attempt)``
        pairs, each renewed only if that attempt still holds it. Returns how many were.

        Row by row in id order, like every other write here: one ``UPDATE … WHERE id IN``
        locks rows in whatever order PostgreSQL scans them, and deadlocks with a batch
        being recorded in id order."""
        until = (now or utcnow()) + timedelta(seconds=lease)
        rows = [
            {"p_id": delivery_id, "p_number": number, "p_until": until}
            for delivery_id, number in sorted(held)
        ]
        renewed = 0
        for start in range(0, len(rows), RENEW_CHUNK):
            with self._write() as connection:
                renewed += connection.execute(
                    self._renew, rows[start : start + RENEW_CHUNK]
                ).rowcount
        return renewed

    def release(
        self, claim: Claim, *, until: datetime, parked: bool, scheduled: bool = False
    ) -> None:
        """Give a claim back without spending an attempt: the channel is paused or
        throttled (``retrying``), or the recipient's quiet hours hold it (``scheduled``)."""
        now = utcnow()
        status = Status.SCHEDULED if scheduled else Status.RETRYING
        with self._write() as connection:
            connection.execute(
                self._release,
                {"p_id": claim.delivery_id, "p_number": claim.attempt, "p_until": until,
                 "p_swept_at": now if parked else None, "p_now": now, "p_status": status},
            )  # fmt: skip

    def finish_many(
        self,
        finished: Sequence[Finished],
        *,
        worker: str | None,
        health: Sequence[Callable[[Connection], None]] = (),
    ) -> int:
        """Record each attempt and move its delivery on, in one transaction. Returns how
        many deliveries moved on (fewer than given if some leases were lost meanwhile).
        ``parked`` (on each ``Finished``) says a retry waits in the broker, so the sweep
        leaves it alone for now. ``health`` runs in the same transaction (the channels'
        circuit-breaker bookkeeping), in the given order: give it sorted by channel, so
        concurrent batches lock channels in one order."""
        if not finished:
            return 0
        attempts: list[dict[str, Any]] = []
        moves: list[dict[str, Any]] = []
        for ended in finished:
            claim, result = ended.claim, ended.result
            now = result.started_at + timedelta(milliseconds=result.duration_ms)
            delivered = result.outcome is Outcome.DELIVERED
            error = storable(result.error)
            provider_ref = storable(result.provider_ref, PROVIDER_REF_LENGTH)
            attempts.append(
                {
                    "p_id": claim.delivery_id,
                    "p_number": claim.attempt,
                    "p_started_at": result.started_at,
                    "p_duration_ms": result.duration_ms,
                    "p_outcome": result.outcome,
                    "p_status_code": result.status_code,
                    "p_error": error,
                    "p_provider_ref": provider_ref,
                    "p_detail": storable_json(result.detail) or None,
                    "p_worker": worker,
                }
            )
            moves.append(
                {
                    "p_id": claim.delivery_id,
                    "p_number": claim.attempt,
                    "p_status": _STATUS_AFTER[result.outcome],
                    "p_attempt_base": claim.attempt_base,
                    "p_now": now,
                    "p_next_attempt_at": result.next_attempt_at,
                    "p_error": error,
                    "p_swept_at": now if ended.parked else None,
                    "p_dispatcher": ended.dispatcher,
                    "p_delivered_at": now if delivered else None,
                    "p_provider_ref": provider_ref if delivered else None,
                }
            )
        # In id order, like claim_many, so concurrent batches lock rows in one order.
        attempts.sort(key=lambda row: (row["p_id"], row["p_number"]))
        moves.sort(key=lambda row: (row["p_id"], row["p_number"]))
        with self._write() as connection:
            connection.execute(self._record_attempt, attempts)
            for apply in health:
                apply(connection)
            if len(moves) == 1:
                # One delivery (the common case, coalesced or not): its channel comes back
                # with the write, and the counts need no query of their own.
                channel = connection.execute(self._move_on_one, moves[0]).scalar()
                moved = 0 if channel is None else 1
                tally = self._tally(connection, attempts, moves[:moved], channel=channel)
            else:
                moved = connection.execute(self._move_on, moves).rowcount
                tally = self._tally(
                    connection,
                    attempts,
                    moves,
                    all_moved=moved == len(moves),
                    claimed_on={e.claim.delivery_id: e.claim.channel for e in finished},
                )
            # Last in the transaction, so the counts' row locks are held the shortest time.
            self._counter.add(connection, tally, now=utcnow())
            # Receipts the provider sent before these references were recorded land now.
            landed = early_receipts.land(connection, [m["p_provider_ref"] for m in moves])
        early_receipts.suppress(self.engine, landed)
        return moved

    def _tally(
        self,
        connection: Connection,
        attempts: Sequence[dict[str, Any]],
        moves: Sequence[dict[str, Any]],
        *,
        all_moved: bool = True,
        channel: str | None = None,
        claimed_on: Mapping[str, str | None] | None = None,
    ) -> Tally:
        """What a batch adds to the counts: every attempt recorded, and every delivery this
        batch moved into a final status (one another worker took over is its to count).
        ``channel``: that of the one delivery in ``moves``, known already; ``claimed_on``:
        each delivery's channel as claimed, which still holds when every move was made
        (the leases were held, so nobody else moved them meanwhile)."""
        tally = Tally()
        for attempt in attempts:
            tally.attempt(attempt["p_outcome"], attempt["p_duration_ms"])
        final = [m for m in moves if m["p_status"] in FINAL_STATUSES]
        if not final:
            return tally
        if channel is not None and len(final) == 1:
            tally.ended(channel, final[0]["p_status"])
            return tally
        if all_moved and claimed_on is not None:
            known = [(claimed_on.get(m["p_id"]), m["p_status"]) for m in final]
            if all(claimed for claimed, _ in known):
                # No query: every delivery's channel came with its claim.
                for claimed, status in known:
                    tally.ended(cast(str, claimed), status)
                return tally
        rows = {
            row.id: row
            for row in connection.execute(self._ended, {"p_ids": [m["p_id"] for m in final]})
        }
        for move in final:
            row = rows.get(move["p_id"])
            if row is None:
                continue
            # Only this batch's write leaves the delivery in this status at this attempt
            # number: a worker that took it over has counted one more attempt.
            if all_moved or (
                row.status == move["p_status"] and row.attempt_count == move["p_number"]
            ):
                tally.ended(row.channel, move["p_status"])
        return tally


def storable(text: str | None, limit: int | None = None) -> str | None:
    """``text`` as the log can store it. What a provider answers (an error, a reference)
    is not ours to refuse, and a NUL or lone surrogate in it would make the database
    refuse the whole attempt (PostgreSQL text holds no NUL): they are replaced instead."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:limit] if limit is not None else text


def storable_json(value: Any) -> Any:
    """A provider's JSON as the log can store it: strings as ``storable``, NaN and
    Infinity (which PostgreSQL's JSON refuses) as null."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
