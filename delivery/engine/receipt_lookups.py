"""Receipts that never came: deliveries looked up at the provider after a timeout.

A delivery the provider accepted is ``delivered`` until a receipt moves it on. When none
has come by its channel's ``--receipt-timeout`` (72 h unless the channel says otherwise),
the delivery is looked up at the provider where its dispatcher can
(``Dispatcher.lookup_receipt``; the SMS dispatcher reads Twilio's message resource), and
what the provider says is recorded as a receipt, exactly as if it had been sent to us.
Where the dispatcher cannot look up, nothing is asked and the delivery is left as it is.

The workers do it themselves, without beat: their sweeper thread takes turns at the
``receipts`` job (``PeriodicJobs.take_turn``) and each turn does a bounded amount of work:
the early receipts' clean-up (``delivery.log.early_receipts.tidy``), then at most
``LOOKUP_BATCH`` deliveries per channel within ``TURN_BUDGET`` seconds. Each channel's
progress is kept in ``receipt_lookups`` (the last delivery looked at), so a delivery is
looked up once, and finding the overdue ones reads the partial index
``ix_deliveries_awaiting_receipt`` from there on, never the rest of history.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, and_, literal_column, or_, select

from delivery.clock import utcnow
from delivery.dispatchers.base import Dispatcher
from delivery.dispatchers.receipts import ProviderReceipt
from delivery.engine.channels import DEFAULT_RECEIPT_TIMEOUT, Channel
from delivery.errors import DeliveryError, RetryableError
from delivery.log import early_receipts
from delivery.log.base import LogBase
from delivery.log.receipt_tables import ReceiptLookupRow
from delivery.log.tables import ChannelRow, DeliveryRow

logger = logging.getLogger(__name__)

#: The periodic job's name in the log.
RECEIPTS_JOB = "receipts"
#: Deliveries looked up per channel per turn: each is a request to the provider.
LOOKUP_BATCH = 25
#: Seconds a turn may spend asking providers: the sweep runs on the same thread.
TURN_BUDGET = 10.0

_DELIVERIES = cast(Table, DeliveryRow.__table__)
_LOOKUPS = cast(Table, ReceiptLookupRow.__table__)
_CHANNELS = cast(Table, ChannelRow.__table__)
#: Written out, not bound: only a literal lets the databases use the partial index.
_DELIVERED = literal_column("deliveries.status") == literal_column("'delivered'")
_BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Turn:
    """What one turn did."""

    #: Early receipts matched, and dropped as too old, by the clean-up.
    matched: int = 0
    dropped: int = 0
    #: Deliveries looked up at their provider, and receipts that recorded.
    looked_up: int = 0
    recorded: int = 0


@dataclass(frozen=True, slots=True)
class _Overdue:
    id: str
    provider_ref: str | None
    address: str
    delivered_at: datetime


class ReceiptLookups(LogBase):
    """The ``receipts`` job: the early receipts' clean-up, then the timeout look-ups."""

    def __init__(
        self,
        engine: Engine,
        dispatcher_of: Callable[[str], tuple[Channel, Dispatcher]],
        *,
        batch: int = LOOKUP_BATCH,
        budget: float = TURN_BUDGET,
    ) -> None:
        super().__init__(engine)
        self._dispatcher_of = dispatcher_of
        self.batch = batch
        self.budget = budget

    def run(self, now: datetime | None = None) -> Turn:
        """One turn. Raises what the log raises; a provider's failure is logged."""
        now = now or utcnow()
        with self._write() as connection:
            matched, dropped = early_receipts.tidy(connection, now)
        early_receipts.suppress(self.engine, matched)
        looked_up = recorded = 0
        deadline = time.monotonic() + self.budget
        with self.engine.connect() as connection:
            channels = connection.execute(
                select(_CHANNELS.c.name, _CHANNELS.c.receipt_timeout).order_by(_CHANNELS.c.name)
            ).all()
        for name, timeout in channels:
            if time.monotonic() >= deadline:
                break
            dispatcher = self._looking_up(name)
            if dispatcher is None:
                continue
            cutoff = now - timedelta(seconds=timeout or DEFAULT_RECEIPT_TIMEOUT)
            looked, kept = self._channel(name, dispatcher, cutoff, now, deadline)
            looked_up, recorded = looked_up + looked, recorded + kept
        if looked_up:
            logger.info("looked up %d deliveries with no receipt; %d recorded", looked_up, recorded)
        return Turn(len(matched), dropped, looked_up, recorded)

    def _looking_up(self, channel: str) -> Dispatcher | None:
        """The channel's dispatcher, if it can look receipts up."""
        try:
            _, dispatcher = self._dispatcher_of(channel)
        except DeliveryError as exc:
            # A channel that cannot be built now cannot send either; its deliveries wait.
            logger.warning("receipt look-ups skip channel %s: %s", channel, exc)
            return None
        return dispatcher if dispatcher.looks_up_receipts() else None

    def overdue(self, channel: str, cutoff: datetime, limit: int) -> list[_Overdue]:
        """The channel's delivered deliveries older than ``cutoff`` not looked at yet, oldest
        first: a range of the partial index, from where the last turn ended."""
        with self.engine.connect() as connection:
            mark = connection.execute(
                select(_LOOKUPS.c.delivered_at, _LOOKUPS.c.delivery_id).where(
                    _LOOKUPS.c.channel == channel
                )
            ).first()
            after, after_id = (mark.delivered_at, mark.delivery_id) if mark else (_BEGINNING, "")
            d = _DELIVERIES.c
            rows = connection.execute(
                select(d.id, d.provider_ref, d.address, d.delivered_at)
                .where(
                    d.channel == channel,
                    _DELIVERED,
                    d.delivered_at >= after,
                    d.delivered_at <= cutoff,
                    or_(d.delivered_at > after, and_(d.delivered_at == after, d.id > after_id)),
                )
                .order_by(d.delivered_at, d.id)
                .limit(limit)
            ).all()
        return [_Overdue(r.id, r.provider_ref, r.address, r.delivered_at) for r in rows]

    def _channel(
        self, channel: str, dispatcher: Dispatcher, cutoff: datetime, now: datetime, deadline: float
    ) -> tuple[int, int]:
        """Look up one channel's overdue deliveries; how many, and how many recorded."""
        found: list[tuple[_Overdue, ProviderReceipt | None]] = []
        for delivery in self.overdue(channel, cutoff, self.batch):
            if time.monotonic() >= deadline:
                break
            try:
                receipt = _ask(dispatcher, delivery)
            except RetryableError as exc:
                # The provider is away: this delivery and those after it wait for a turn.
                logger.warning("receipt look-up on channel %s: %s; later", channel, exc)
                break
            found.append((delivery, receipt))
        if not found:
            return 0, 0
        with self._write() as connection:
            applied = [
                early_receipts.apply_receipt(
                    connection,
                    channel=channel,
                    delivery_id=delivery.id,
                    address=delivery.address,
                    receipt=receipt,
                    received_at=now,
                )
                for delivery, receipt in found
                if receipt is not None
            ]
            last = found[-1][0]
            self._mark(connection, channel, last.delivered_at, last.id, now)
        early_receipts.suppress(self.engine, applied)
        return len(found), len(applied)

    def _mark(
        self, connection: Connection, channel: str, at: datetime, delivery_id: str, now: datetime
    ) -> None:
        insert: Any = self._insert(_LOOKUPS).values(
            channel=channel, delivered_at=at, delivery_id=delivery_id, updated_at=now
        )
        connection.execute(
            insert.on_conflict_do_update(
                index_elements=["channel"],
                set_={"delivered_at": at, "delivery_id": delivery_id, "updated_at": now},
            )
        )


def _ask(dispatcher: Dispatcher, delivery: _Overdue) -> ProviderReceipt | None:
    """What the provider says of the delivery, or None when it says nothing useful.

    Raises:
        RetryableError: ask again later.
    """
    if not delivery.provider_ref:
        return None  # nothing to look it up by
    try:
        receipt = dispatcher.lookup_receipt(delivery.provider_ref)
    except RetryableError:
        raise
    except DeliveryError as exc:
        logger.info("receipt look-up of %s: %s; left as it is", delivery.id, exc)
        return None
    except Exception:  # a plugin's bug must not hold up the other deliveries
        logger.exception("receipt look-up of %s failed; left as it is", delivery.id)
        return None
    # Recorded under the reference the delivery has, whatever spelling the provider used.
    return replace(receipt, provider_ref=delivery.provider_ref) if receipt else None
