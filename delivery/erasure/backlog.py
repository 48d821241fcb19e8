"""Deliveries published before their address was erased, that the erasure could not find.

An erasure ends ``erased`` the deliveries to the address the log holds. One still waiting
in the broker (a backlog, a countdown kept as an ETA) has no row yet, so the worker that
takes it checks as it claims it: each task message carries its publish time (a header,
``PUBLISHED_AT_HEADER``), and the erasures recorded since then are one indexed query on
``erasures.erased_at`` in the claim's transaction (a ``Screen``), which finds nothing
almost always. When it finds some, each delivery's address is hashed as the eraser hashed
it (``AddressForms.of(address).key``, under every key of a rotation); one that matches is
recorded ``erased``, never claimed and never sent.
"""

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, select

from delivery.clock import utcnow
from delivery.erasure.forms import AddressForms
from delivery.log.counts import Tally
from delivery.log.database import upsert_insert
from delivery.log.store import Screen
from delivery.log.tables import DeliveryRow, ErasureRow, Status
from delivery.recipients.address_hash import keyed_hash
from delivery.redaction import ERASED_ADDRESS
from schemas import Envelope

logger = logging.getLogger(__name__)


class ErasedBacklog:
    """Screens the deliveries of task messages published before an erasure of their
    address out of their claim; ``keys``: ``address_hash.erasure_keys`` (none: no erasure
    is recorded, so none is found)."""

    def __init__(self, *, keys: tuple[bytes, ...]) -> None:
        self._keys = keys

    def screen(
        self, envelopes: Sequence[Envelope], published_at: Sequence[float | None]
    ) -> Screen | None:
        """The screen for the claim of ``envelopes`` (``published_at``: when their messages
        were published, one each, epoch seconds; None: from an older producer, not
        checked). It runs in the claim's transaction, so checking costs one indexed query
        there and no transaction of its own. None: nothing to check."""
        times = [t for t in published_at if t is not None]
        if not self._keys or not times:
            return None
        since = datetime.fromtimestamp(min(times), UTC)

        def erased(connection: Connection, tally: Tally) -> Mapping[int, str]:
            e = ErasureRow
            rows = connection.execute(
                select(e.address_hash, e.erased_at).where(e.erased_at >= since)
            ).all()
            if not rows:
                return {}
            found = {row.address_hash: row.erased_at for row in rows}
            places = [
                place
                for place, (envelope, published) in enumerate(
                    zip(envelopes, published_at, strict=True)
                )
                if published is not None and self._erased_since(envelope, published, found)
            ]
            if places:
                _record_erased(connection, [envelopes[place] for place in places], tally)
                logger.info(
                    "%d deliveries to an address erased since they were published: erased, unsent",
                    len(places),
                )
            return dict.fromkeys(places, Status.ERASED)

        return erased

    def _erased_since(
        self, envelope: Envelope, published: float, found: dict[str, datetime]
    ) -> bool:
        try:
            key = AddressForms.of(envelope.address).key
        except ValueError:
            return False  # not an address an erasure accepts: none was erased
        when = datetime.fromtimestamp(published, UTC)
        for hash_key in self._keys:
            erased_at = found.get(keyed_hash(hash_key, key))
            if erased_at is not None and _aware(erased_at) >= when:
                return True
        return False


def _record_erased(connection: Connection, envelopes: Sequence[Envelope], tally: Tally) -> None:
    """Record ``envelopes`` as ``erased`` deliveries, never sent: the address ``[erased]``,
    no payload; each added to ``tally``. One the log holds already is left as it is (the
    erasure found it, or a worker had it first)."""
    now = utcnow()
    insert = upsert_insert(connection.dialect.name)
    for envelope in envelopes:
        inserted = connection.execute(
            insert(DeliveryRow)
            .values(
                id=envelope.id,
                channel=envelope.channel[:64],
                address=ERASED_ADDRESS,
                payload=None,
                owner=envelope.owner,
                test=envelope.test,
                category=envelope.category,
                status=Status.ERASED,
                attempt_count=0,
                attempt_base=0,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        if inserted.rowcount:
            tally.ended(envelope.channel, Status.ERASED)


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
