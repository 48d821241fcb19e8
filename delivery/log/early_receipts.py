"""Receipts that always land: applying a receipt to its delivery, keeping one that came
before the delivery's provider reference was recorded, and matching it once it is.

Twilio calls the status callback as soon as it has queued the message, and may do so
before the worker has Twilio's answer (the message SID) recorded. Such a receipt is kept
in ``early_receipts``; the worker matches it in the transaction that records the SID
(``DeliveryStore.finish_many`` calls ``land``), and the periodic clean-up (``tidy``)
matches any that a race let through and drops those that never matched after
``EARLY_RECEIPT_LIFETIME``.

A matched receipt is applied exactly as a timely one: recorded against the delivery, the
delivery moved on from ``delivered``, and a permanent bounce suppressed.

Functions here take the caller's connection, so they run inside its transaction; only
``suppress`` (after the commit) writes on its own.
"""

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Connection, Engine, Table, and_, bindparam, delete, select, update

from delivery.dispatchers.receipts import BOUNCED, CONFIRMED, ProviderReceipt
from delivery.log.counts import count_ended
from delivery.log.database import upsert_insert
from delivery.log.inbound import ReceiptRow
from delivery.log.receipt_tables import EarlyReceiptRow
from delivery.log.tables import DeliveryRow, Status

logger = logging.getLogger(__name__)

#: How long a receipt naming no recorded reference is kept. The worker records the
#: reference within seconds of the provider's answer; a day and a half covers a log that
#: was away for a long night. What is still unmatched by then never will be (the send was
#: interrupted and made again with a new reference, or the receipt is about a message
#: this log never sent), and is dropped.
EARLY_RECEIPT_LIFETIME = timedelta(hours=36)
#: Early receipts matched or dropped per statement by the clean-up.
TIDY_BATCH = 500

_RECEIPTS = cast(Table, ReceiptRow.__table__)
_EARLY = cast(Table, EarlyReceiptRow.__table__)
_DELIVERIES = cast(Table, DeliveryRow.__table__)


@dataclass(frozen=True, slots=True)
class Applied:
    """A receipt recorded against its delivery."""

    channel: str
    delivery_id: str
    receipt: ProviderReceipt
    #: The delivery's new status, when the receipt moved it.
    moved_to: str | None
    #: Recorded before (a provider's retry): nothing new was written.
    duplicate: bool
    #: Where a permanent bounce is suppressed: the provider's name for the recipient, else
    #: the delivery's address.
    address: str | None


def apply_receipt(
    connection: Connection,
    *,
    channel: str,
    delivery_id: str,
    address: str | None,
    receipt: ProviderReceipt,
    received_at: datetime,
) -> Applied:
    """Record ``receipt`` against its delivery and move the delivery on, in ``connection``'s
    transaction."""
    inserted = connection.execute(
        upsert_insert(connection.dialect.name)(_RECEIPTS)
        .values(
            channel=channel,
            delivery_id=delivery_id,
            provider_ref=receipt.provider_ref,
            status=receipt.status,
            provider_status=receipt.provider_status,
            error_code=receipt.error_code,
            received_at=received_at,
            detail=receipt.detail,
        )
        .on_conflict_do_nothing()
        # What was inserted is what comes back: psycopg's rowcount here is -1.
        .returning(_RECEIPTS.c.id)
    ).first()
    moved_to = None
    if receipt.status in (CONFIRMED, BOUNCED):
        # Only an accepted delivery moves on; callbacks may arrive out of order.
        moved = connection.execute(
            update(_DELIVERIES)
            .where(_DELIVERIES.c.id == delivery_id, _DELIVERIES.c.status == Status.DELIVERED)
            .values(status=receipt.status, updated_at=received_at)
        ).rowcount
        moved_to = receipt.status if moved else None
        if moved_to is not None:
            # Counted as it ended delivered, and again as a receipt moved it on.
            count_ended(connection, [(channel, moved_to)], now=received_at)
    return Applied(
        channel, delivery_id, receipt, moved_to, inserted is None, receipt.address or address
    )


def keep(connection: Connection, channel: str, receipt: ProviderReceipt, now: datetime) -> bool:
    """Keep a receipt whose reference no delivery has yet; False if it was kept before."""
    kept = connection.execute(
        upsert_insert(connection.dialect.name)(_EARLY)
        .values(
            channel=channel,
            provider_ref=receipt.provider_ref,
            status=receipt.status,
            provider_status=receipt.provider_status,
            error_code=receipt.error_code,
            address=receipt.address,
            permanent=receipt.permanent,
            detail=receipt.detail,
            received_at=now,
        )
        .on_conflict_do_nothing()
        .returning(_EARLY.c.id)
    ).first()
    return kept is not None


#: Prebuilt: it runs in every recording transaction that records a provider reference.
_WAITING = (
    select(_EARLY.c.id).where(_EARLY.c.provider_ref.in_(bindparam("refs", expanding=True))).limit(1)
)
_MATCHES = (
    select(
        _EARLY,
        _DELIVERIES.c.id.label("delivery_id"),
        _DELIVERIES.c.address.label("delivery_address"),
    )
    .join(
        _DELIVERIES,
        and_(
            _DELIVERIES.c.provider_ref == _EARLY.c.provider_ref,
            _DELIVERIES.c.channel == _EARLY.c.channel,
        ),
    )
    .order_by(_EARLY.c.received_at, _EARLY.c.id)
)


def land(connection: Connection, references: Iterable[str | None]) -> list[Applied]:
    """Apply the early receipts naming any of ``references``, which the worker records in
    ``connection``'s transaction. One indexed read when none waits (the usual case): some
    50 µs for one reference on SQLite, inside the transaction, against some 1.3 ms for a
    read of its own after the commit.

    A receipt kept while this transaction runs may not be seen here (PostgreSQL's read
    committed); its own second look after its commit (``match_kept``) or, failing that,
    the periodic clean-up (``tidy``) matches it.
    """
    wanted = sorted({ref for ref in references if ref})
    if not wanted or connection.execute(_WAITING, {"refs": wanted}).first() is None:
        return []
    return _apply_matches(connection, _MATCHES.where(_EARLY.c.provider_ref.in_(wanted)))


def _apply_matches(connection: Connection, query: Any) -> list[Applied]:
    applied = []
    for row in connection.execute(query).all():
        # Whoever deletes the row applies it: the worker's transaction and the receipt's
        # second look may both find it, and only one must record it.
        taken = connection.execute(delete(_EARLY).where(_EARLY.c.id == row.id)).rowcount
        if not taken:
            continue
        receipt = ProviderReceipt(
            provider_ref=row.provider_ref,
            provider_status=row.provider_status,
            status=row.status,
            error_code=row.error_code,
            address=row.address,
            permanent=row.permanent,
            detail=row.detail or {},
        )
        applied.append(
            apply_receipt(
                connection,
                channel=row.channel,
                delivery_id=row.delivery_id,
                address=row.delivery_address,
                receipt=receipt,
                received_at=row.received_at,
            )
        )
    return applied


def match_kept(connection: Connection, channel: str, reference: str) -> list[Applied]:
    """Apply the early receipts for ``reference`` if its delivery is known now."""
    return _apply_matches(
        connection,
        _MATCHES.where(_EARLY.c.provider_ref == reference, _EARLY.c.channel == channel),
    )


def tidy(connection: Connection, now: datetime) -> tuple[list[Applied], int]:
    """The periodic clean-up: match early receipts whose reference has been recorded since
    (a receipt and its worker's transaction that crossed each other), then drop those older
    than ``EARLY_RECEIPT_LIFETIME``. What was matched, and how many were dropped."""
    matched = _apply_matches(connection, _MATCHES.limit(TIDY_BATCH))
    stale = (
        select(_EARLY.c.id)
        .where(_EARLY.c.received_at < now - EARLY_RECEIPT_LIFETIME)
        .order_by(_EARLY.c.received_at)
        .limit(TIDY_BATCH)
    )
    dropped = connection.execute(delete(_EARLY).where(_EARLY.c.id.in_(stale))).rowcount
    if dropped:
        logger.info("dropped %d receipts that never matched a delivery", dropped)
    return matched, dropped


class Suppressor(Protocol):
    """What ``suppress`` needs of a suppression list (``delivery.engine.suppression``)."""

    def add(self, channel: str, address: str, reason: str, detail: str | None = None) -> bool: ...


def suppress(
    engine: Engine, applied: Sequence[Applied], *, suppressions: Suppressor | None = None
) -> int:
    """Put the addresses of permanent bounces on their channels' suppression lists, after
    the receipts' transaction; how many were added."""
    bounces = [a for a in applied if a.receipt.permanent and a.address]
    if not bounces:
        return 0
    if suppressions is None:
        # Imported here: the suppression list belongs to the engine, which stands on the log.
        from delivery.engine.suppression import SuppressionList

        suppressions = SuppressionList(engine)
    added = 0
    for bounce in bounces:
        added += suppressions.add(
            bounce.channel,
            bounce.address or "",
            f"bounce {bounce.receipt.error_code}",
            detail=f"receipt for {bounce.receipt.provider_ref}",
        )
    return added
