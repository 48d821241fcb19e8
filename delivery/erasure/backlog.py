"""Deliveries published before their address was erased, that the erasure could not find.

An erasure ends ``erased`` the deliveries to the address the log holds. One still waiting
in the broker (a backlog, a countdown kept as an ETA) has no row yet, so the worker that
takes it checks first: each task message carries its publish time (a header,
``PUBLISHED_AT_HEADER``), and the erasures recorded since then are one indexed query on
``erasures.erased_at``, which finds nothing almost always. When it finds some, each
delivery's address is hashed as the eraser hashed it (``AddressForms.of(address).key``,
under every key of a rotation); one that matches is recorded ``erased``, never claimed and
never sent.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine, select

from delivery.clock import utcnow
from delivery.erasure.forms import AddressForms
from delivery.log.base import LogBase
from delivery.log.counts import count_ended
from delivery.log.tables import DeliveryRow, ErasureRow, Status
from delivery.recipients.address_hash import keyed_hash
from delivery.redaction import ERASED_ADDRESS
from schemas import Envelope


class ErasedBacklog(LogBase):
    """Finds and records the deliveries of task messages published before an erasure of
    their address; ``keys``: ``address_hash.erasure_keys`` (none: no erasure is recorded,
    so none is found)."""

    def __init__(self, engine: Engine, *, keys: tuple[bytes, ...]) -> None:
        super().__init__(engine)
        self._keys = keys

    def erased(
        self, envelopes: Sequence[Envelope], published_at: Sequence[float | None]
    ) -> list[int]:
        """The places in ``envelopes`` of those whose address was erased at or after the
        time their message was published (``published_at``, one each, epoch seconds;
        None: a message from an older producer, not checked)."""
        times = [t for t in published_at if t is not None]
        if not self._keys or not times:
            return []
        since = datetime.fromtimestamp(min(times), UTC)
        e = ErasureRow
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(e.address_hash, e.erased_at).where(e.erased_at >= since)
            ).all()
        found = {row.address_hash: row.erased_at for row in rows}
        if not found:
            return []
        return [
            place
            for place, (envelope, published) in enumerate(zip(envelopes, published_at, strict=True))
            if published is not None and self._erased_since(envelope, published, found)
        ]

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

    def record_erased(self, envelopes: Sequence[Envelope]) -> int:
        """Record ``envelopes`` as ``erased`` deliveries, never sent: the address
        ``[erased]``, no payload. One the log holds already is left as it is (the erasure
        found it, or a worker had it first). Returns how many were recorded."""
        now = utcnow()
        recorded: list[tuple[str, str]] = []
        with self._write() as tx:
            for envelope in envelopes:
                inserted = tx.execute(
                    self._insert(DeliveryRow)
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
                    recorded.append((envelope.channel, Status.ERASED))
            count_ended(tx, recorded, now=now)
        return len(recorded)


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
