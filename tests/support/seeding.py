"""Filling a log fast, through the store (not the broker): what the retention tests and a
bench of a log that runs for years start from."""

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from delivery.clock import utcnow
from delivery.log import AttemptResult, DeliveryLog, Finished
from delivery.log.tables import Outcome
from schemas import Envelope, Payload

#: Deliveries per transaction, as the workers' batches.
CHUNK = 500


def seed(
    log: DeliveryLog,
    count: int,
    *,
    at: datetime | None = None,
    channel: str = "hooks",
    outcomes: Sequence[Outcome | None] = (Outcome.DELIVERED,),
    prefix: str | None = None,
    duration_ms: float = 20.0,
) -> list[str]:
    """Record ``count`` deliveries made at ``at`` (default now) and a millisecond apart per
    transaction, each claimed and, in turn through ``outcomes``, finished with that outcome
    (None: left ``sending``). Ids are random UUIDs, as the producer's look, or
    ``PREFIX-n`` when a prefix is given. Returns the ids."""
    first = at or utcnow()
    ids: list[str] = []
    for start in range(0, count, CHUNK):
        at = first + timedelta(milliseconds=start)
        envelopes = [
            Envelope(
                id=f"{prefix}-{n:09d}" if prefix else str(uuid.uuid4()),
                channel=channel,
                address=f"https://example.com/{n}",
                payload=Payload(message=f"message {n}"),
            )
            for n in range(start, min(count, start + CHUNK))
        ]
        claims = log.claim_many(envelopes, lease=3600, now=at)
        ended = []
        for n, claim in enumerate(claims, start):
            outcome = outcomes[n % len(outcomes)]
            if outcome is None:
                continue
            retry = at + timedelta(hours=1) if outcome is Outcome.RETRY else None
            result = AttemptResult(outcome, at, duration_ms, next_attempt_at=retry)
            ended.append(Finished(claim, result, dispatcher="webhook"))
        log.finish_many(ended, worker="seed")
        ids += [e.id for e in envelopes]
    return ids
