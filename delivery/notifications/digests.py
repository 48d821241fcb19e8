"""Digests: the events of a window, collected per subscription, sent as one delivery.

A digest subscription (``--digest 1h``) gets no delivery per event. The fan-out puts each
event in the subscription's current window (``collect``); once the window has closed, the
workers' digest job (``delivery.notifications.closing``) claims its items for one
delivery, publishes it and marks them published.

Why it is sent once, with several workers and crashes:

* an item's key is ``(subscription, event)``: a replayed event adds nothing;
* claiming is one UPDATE of the window's unclaimed items: of two workers closing the same
  window, the second finds nothing left to claim (PostgreSQL re-checks the condition
  after waiting for the first's row locks);
* the delivery id is derived from the subscription and the window's start, so a worker
  that died after claiming is followed by one that publishes the same id again, and the
  log sends it once. An event that came in too late for its window's first delivery (its
  fan-out committed after the claim) makes a second delivery for that window, whose id is
  derived from the window and that event, rather than being lost.

Who owns a digest: each item keeps the API key that published its event. A window's
delivery is that key's only when every event in it came from the same key; a window that
mixes keys (or Python's events with a key's) belongs to none, so only an admin key reads
it. A test key's event is never collected (``delivery.notifications.fanout``).
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, func, select, update

from delivery.log.base import LogBase
from delivery.notifications.periods import window_start
from delivery.notifications.tables import DigestItemRow
from schemas.events import Event

#: Namespace for digest delivery ids, derived from ``(subscription id, window start)``.
DIGEST_NAMESPACE = uuid.UUID("9e3d7a51-4c2b-5f86-b1e0-6a8c2d4f7e93")
#: Items published this long ago are forgotten: replays come within minutes, not weeks.
KEEP_PUBLISHED = timedelta(days=7)


def digest_delivery_id(subscription_id: str, start: int, first_event: str | None = None) -> str:
    """The delivery a window makes: the same for every worker and every retry. A second
    delivery for the same window (late events) is named by its first event as well."""
    name = f"{subscription_id}\x00{start}"
    if first_event is not None:
        name += f"\x00{first_event}"
    return str(uuid.uuid5(DIGEST_NAMESPACE, name))


@dataclass(frozen=True, slots=True)
class Window:
    """A digest subscription's window that has items waiting."""

    subscription_id: str
    start: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """A window's items claimed for one delivery, not yet known to be published."""

    delivery_id: str
    subscription_id: str
    start: int


@dataclass(frozen=True, slots=True)
class Item:
    event_id: str
    context: dict[str, Any]
    category: str | None
    #: The API key that published the event (None: Python or the command line).
    owner: str | None = None


class DigestStore(LogBase):
    """The ``digest_items`` table: collecting, claiming and publishing windows."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)

    def collect(self, subscription_id: str, event: Event, *, period: int, now: datetime) -> int:
        """Put ``event`` in the subscription's window for ``now``; the window's start. A
        replay keeps the window the event was first put in."""
        start = window_start(now, period)
        with self._sessions.begin() as session:
            session.execute(
                self._insert(DigestItemRow)
                .values(
                    subscription_id=subscription_id,
                    event_id=event.id,
                    window_start=start,
                    context=event.context,
                    category=event.category,
                    owner=event.owner,
                    # Ordered by when the producer published them: the worker threads
                    # that collect one window's events may take them in any order.
                    received_at=event.occurred_at or now,
                )
                .on_conflict_do_nothing(index_elements=["subscription_id", "event_id"])
            )
            first = session.scalar(
                select(DigestItemRow.window_start).where(
                    DigestItemRow.subscription_id == subscription_id,
                    DigestItemRow.event_id == event.id,
                )
            )
        return int(first) if first is not None else start

    def waiting(self) -> list[Window]:
        """Windows with unclaimed items, oldest first: one indexed query, empty when there
        is nothing to do."""
        query = (
            select(DigestItemRow.subscription_id, DigestItemRow.window_start)
            .where(DigestItemRow.delivery_id.is_(None))
            .group_by(DigestItemRow.subscription_id, DigestItemRow.window_start)
            .order_by(DigestItemRow.window_start)
        )
        with self._sessions() as session:
            return [Window(s, int(w)) for s, w in session.execute(query).all()]

    def claim(self, window: Window, *, now: datetime) -> Claimed | None:
        """Claim the window's unclaimed items for one delivery; None if another worker
        claimed them first."""
        open_items = and_(
            DigestItemRow.subscription_id == window.subscription_id,
            DigestItemRow.window_start == window.start,
            DigestItemRow.delivery_id.is_(None),
        )
        with self._sessions.begin() as session:
            earlier = session.scalar(
                select(func.count())
                .select_from(DigestItemRow)
                .where(
                    DigestItemRow.subscription_id == window.subscription_id,
                    DigestItemRow.window_start == window.start,
                    DigestItemRow.delivery_id.is_not(None),
                )
            )
            first: str | None = None
            if earlier:
                first = session.scalar(select(func.min(DigestItemRow.event_id)).where(open_items))
                if first is None:
                    return None
            delivery_id = digest_delivery_id(window.subscription_id, window.start, first)
            claimed = session.execute(
                update(DigestItemRow)
                .where(open_items)
                .values(delivery_id=delivery_id, claimed_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        if not claimed:
            return None
        return Claimed(delivery_id, window.subscription_id, window.start)

    def unpublished(self, *, claimed_before: datetime) -> list[Claimed]:
        """Deliveries claimed before then and never marked published: their worker died
        between the two, and they are published again (with the same id)."""
        query = (
            select(
                DigestItemRow.delivery_id,
                DigestItemRow.subscription_id,
                DigestItemRow.window_start,
            )
            .where(
                DigestItemRow.published_at.is_(None),
                DigestItemRow.delivery_id.is_not(None),
                DigestItemRow.claimed_at <= claimed_before,
            )
            .group_by(
                DigestItemRow.delivery_id,
                DigestItemRow.subscription_id,
                DigestItemRow.window_start,
            )
        )
        with self._sessions() as session:
            return [Claimed(d, s, int(w)) for d, s, w in session.execute(query).all() if d]

    def items(self, delivery_id: str) -> list[Item]:
        """A delivery's events, in the order they came."""
        query = (
            select(
                DigestItemRow.event_id,
                DigestItemRow.context,
                DigestItemRow.category,
                DigestItemRow.owner,
            )
            .where(DigestItemRow.delivery_id == delivery_id)
            .order_by(DigestItemRow.received_at, DigestItemRow.event_id)
        )
        with self._sessions() as session:
            return [Item(e, c, k, o) for e, c, k, o in session.execute(query).all()]

    def mark_published(self, delivery_ids: Sequence[str], *, now: datetime) -> None:
        if not delivery_ids:
            return
        with self._sessions.begin() as session:
            session.execute(
                update(DigestItemRow)
                .where(
                    DigestItemRow.delivery_id.in_(list(delivery_ids)),
                    DigestItemRow.published_at.is_(None),
                )
                .values(published_at=now)
                .execution_options(synchronize_session=False)
            )

    def forget(self, *, now: datetime) -> int:
        """Remove items published more than ``KEEP_PUBLISHED`` ago; how many."""
        with self._sessions.begin() as session:
            return int(
                session.execute(
                    delete(DigestItemRow).where(DigestItemRow.published_at < now - KEEP_PUBLISHED)
                ).rowcount  # type: ignore[attr-defined]
            )
