"""Failover: a delivery moves to its channel's backup when the provider is down.

A channel may name a ``fallback`` channel (``delivery channels add … --fallback OTHER``).
A delivery moves there when its channel's circuit breaker is open, or when it has used up
its attempts on provider-side errors (retryable ones: timeouts, 5xx, connection refused).
It never moves for a permanent error of its own (a bad address, a refused recipient): a
backup provider would refuse it too.

The move is an attempt like any other, recorded with ``{"failover_to": …, "failover_from":
…}`` in its detail, and in the same transaction the delivery's channel becomes the backup.
The backup starts with a full set of attempts. A delivery never goes back to a channel it
has already left, so two channels that back each other up cannot pass it to and fro.

Task messages published before the move still name the old channel; a worker that takes
one reads the delivery's channel from the log first (only for channels with a fallback).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.orm import sessionmaker

from delivery.clock import utcnow
from delivery.engine.breaker import Bookkeeping
from delivery.engine.channels import Channel
from delivery.log import AttemptResult, Claim, Finished
from delivery.log.database import read_only
from delivery.log.tables import AttemptRow, DeliveryRow, Outcome, Status
from schemas import Envelope

#: Keys of an attempt's detail that record a move.
MOVED_TO, MOVED_FROM = "failover_to", "failover_from"

# Conditional like the write that records the attempt: only a delivery this worker holds.
_MOVE = (
    update(DeliveryRow)
    .where(
        DeliveryRow.id == bindparam("p_id"),
        DeliveryRow.status == Status.SENDING,
        DeliveryRow.attempt_count == bindparam("p_number"),
    )
    .values(channel=bindparam("p_channel"))
)


class Failover:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._reader = sessionmaker(read_only(engine))

    def current(self, envelope: Envelope) -> Envelope:
        """The envelope on the channel the log has for it (a move may have happened since
        the message was published)."""
        with self._reader() as session:
            channel = session.scalar(
                select(DeliveryRow.channel).where(DeliveryRow.id == envelope.id)
            )
        if channel is None or channel == envelope.channel:
            return envelope
        return envelope.model_copy(update={"channel": channel})

    def target(self, delivery_id: str, channel: Channel) -> str | None:
        """Where a delivery on ``channel`` may move, or None (no fallback, paused by a
        person, or the fallback is a channel this delivery has already left)."""
        if channel.fallback is None or channel.paused:
            return None
        if channel.fallback in self._visited(delivery_id) | {channel.name}:
            return None
        return channel.fallback

    def moved(
        self,
        result: AttemptResult,
        claim: Claim,
        *,
        source: str,
        target: str,
        reason: str,
    ) -> tuple[AttemptResult, Claim]:
        """The attempt ``result`` recorded as a move to ``target``, due again at once, and
        the claim with a fresh set of attempts for the backup."""
        detail: dict[str, Any] = {**result.detail, MOVED_TO: target, MOVED_FROM: source}
        detail["failover_reason"] = reason
        return (
            dataclasses.replace(
                result, outcome=Outcome.RETRY, detail=detail, next_attempt_at=utcnow()
            ),
            dataclasses.replace(claim, attempt_base=claim.attempt),
        )

    def after_exhausted(
        self, result: AttemptResult, claim: Claim, channel: Channel
    ) -> tuple[AttemptResult, Claim]:
        """A delivery that used up its attempts on provider-side errors moves to the
        backup, if there is one it may move to; otherwise it stays failed."""
        target = self.target(claim.delivery_id, channel)
        if target is None:
            return result, claim
        return self.moved(
            result,
            claim,
            source=channel.name,
            target=target,
            reason=f"attempts used up on {channel.name}",
        )

    @staticmethod
    def moves(finished: Sequence[Finished]) -> list[Bookkeeping]:
        """The writes that move these deliveries' channels, in id order, for the
        transaction that records their attempts."""
        pending = sorted(
            (f.claim.delivery_id, f.claim.attempt, f.result.detail[MOVED_TO])
            for f in finished
            if f.result.outcome is Outcome.RETRY and MOVED_TO in f.result.detail
        )
        return [_move(*move) for move in pending]

    def _visited(self, delivery_id: str) -> set[str]:
        with self._sessions() as session:
            details = session.scalars(
                select(AttemptRow.detail).where(
                    AttemptRow.delivery_id == delivery_id, AttemptRow.detail.is_not(None)
                )
            ).all()
        return {
            str(d[key])
            for d in details
            if isinstance(d, dict)
            for key in (MOVED_FROM, MOVED_TO)
            if key in d
        }


def _move(delivery_id: str, number: int, channel: str) -> Bookkeeping:
    def apply(connection: Connection) -> None:
        connection.execute(_MOVE, {"p_id": delivery_id, "p_number": number, "p_channel": channel})

    return apply
