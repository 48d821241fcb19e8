"""Erase one address and what was sent to it from the log (``delivery erase``,
``POST /v1/erasures``): GDPR's right to erasure, at once.

Per table, what goes:

* ``deliveries``: the row stays (its id stays known, counts stay right) with the address
  replaced by ``[erased]`` and the payload, idempotency key and last error emptied; one not
  yet sent ends ``erased``, a final status that no worker claims, so it is never sent.
* ``attempts``, ``receipts``: the rows stay (outcome, timing, status code; a receipt's
  status), without the error text and provider details that could quote the message.
* ``inbound_messages`` from the address (and what handled them), its ``subscriptions`` (and
  their digests' waiting items), its ``recipient_preferences``, its ``recipient_sends``
  (the throttle's counts, by hash), its early receipts: deleted.
* ``event_deliveries``: the address is replaced by ``[erased]``; an event already fanned out
  whose context mentions the address loses its context.
* ``suppressions``: an entry for the address becomes ``erased:`` and its keyed hash, so the
  address stays suppressed (``delivery.recipients.address_hash``).
* ``erasures``: the keyed hash, when, and what went.

All of it in one transaction: an erasure that fails leaves nothing half done, and a re-run
finds whatever came in meanwhile. On SQLite the connections overwrite what is deleted
(``secure_delete``), and the write-ahead log is checkpointed and emptied afterwards, so the
erased text is not left readable in either file.
"""

import importlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, select, update

from delivery.clock import utcnow
from delivery.erasure.forms import AddressForms
from delivery.errors import SecretKeyMissing
from delivery.log.base import LogBase
from delivery.log.counts import count_ended
from delivery.log.database import write_lock
from delivery.log.inbound import InboundMessageRow, ReceiptRow, SuppressionRow
from delivery.log.tables import (
    FINAL_STATUSES,
    AttemptRow,
    Base,
    DeliveryRow,
    ErasureRow,
    RecipientSendRow,
    Status,
)
from delivery.notifications.tables import (
    DigestItemRow,
    EventDeliveryRow,
    EventRow,
    SubscriptionRow,
)
from delivery.recipients.address_hash import MARKER, keyed_hash
from delivery.recipients.tables import RecipientPreferencesRow
from delivery.redaction import ERASED_ADDRESS, mask_address

logger = logging.getLogger(__name__)

#: Ids per ``IN (…)``: well under SQLite's 32,766 bound parameters and PostgreSQL's 65,535.
CHUNK = 500
#: Tries at emptying SQLite's write-ahead log after an erasure (a reader may hold it).
CHECKPOINT_TRIES = 20


@dataclass(slots=True)
class Erasure:
    """How many rows of each kind an erasure changed or removed."""

    #: Deliveries to the address, kept with their address and content emptied.
    deliveries: int = 0
    #: Of those, the ones not yet sent: now ``erased``, never to be sent.
    unsent: int = 0
    attempts: int = 0
    receipts: int = 0
    #: Inbound messages from the address.
    inbox: int = 0
    subscriptions: int = 0
    #: What events did for the address (the outcome kept, the address gone).
    event_deliveries: int = 0
    #: Events already fanned out whose context mentioned the address (context emptied).
    events: int = 0
    #: Events waiting in the digests of its subscriptions, or for its deliveries.
    digest_items: int = 0
    preferences: int = 0
    #: The per-recipient throttle's counts for the address.
    throttle: int = 0
    #: Suppression-list entries, now kept by keyed hash (still suppressed).
    suppressions: int = 0
    #: Receipts that came before their delivery's reference, waiting to be matched.
    early_receipts: int = 0

    def to_json(self) -> dict[str, int]:
        return {name: int(value) for name, value in asdict(self).items()}

    @property
    def total(self) -> int:
        return sum(self.to_json().values()) - self.unsent  # unsent are among the deliveries


class Eraser(LogBase):
    """Erases addresses from the log ``engine``; ``keys``: ``address_hash.erasure_keys``."""

    def __init__(self, engine: Engine, *, keys: tuple[bytes, ...]) -> None:
        super().__init__(engine)
        self._keys = keys

    def erase(self, forms: AddressForms) -> Erasure:
        """Erase the address ``forms`` spell, everywhere, in one transaction.

        Raises:
            SecretKeyMissing: the address is on a suppression list and no secret key is
                set to keep it there by hash (nothing is erased).
        """
        counts = Erasure()
        with self._write() as tx:
            ids = self._deliveries(tx, forms, counts)
            self._content(tx, ids, forms, counts)
            self._recipient(tx, forms, counts)
            self._suppressions(tx, forms, counts)
            self._record(tx, forms, counts)
        # Never the address in clear: the log may go anywhere.
        logger.info(
            "erased %s: %d rows (%s)",
            mask_address(forms.key),
            counts.total,
            ", ".join(f"{k} {v}" for k, v in counts.to_json().items() if v),
        )
        if self._sqlite:
            self._empty_wal()
        return counts

    def _deliveries(self, tx: Connection, forms: AddressForms, counts: Erasure) -> list[str]:
        d = DeliveryRow
        rows = tx.execute(select(d.id, d.status, d.channel).where(forms.matches(d.address))).all()
        ids = [row.id for row in rows]
        unsent = [row.id for row in rows if row.status not in FINAL_STATUSES]
        now = utcnow()
        count_ended(
            tx,
            [(row.channel, Status.ERASED) for row in rows if row.status not in FINAL_STATUSES],
            now=now,
        )
        for chunk in _chunks(unsent):
            # Final, so a worker that still has the message (in the broker, or sending it
            # now) claims nothing and records nothing: its ``held`` check needs ``sending``.
            tx.execute(
                update(d)
                .where(d.id.in_(chunk), d.status.not_in(FINAL_STATUSES))
                .values(
                    status=Status.ERASED,
                    lease_until=None,
                    next_attempt_at=None,
                    last_error=None,
                    updated_at=now,
                )
            )
        for chunk in _chunks(ids):
            tx.execute(
                update(d)
                .where(d.id.in_(chunk))
                .values(address=ERASED_ADDRESS, payload=None, idempotency_key=None, last_error=None)
            )
        counts.deliveries, counts.unsent = len(ids), len(unsent)
        return ids

    def _content(
        self, tx: Connection, ids: list[str], forms: AddressForms, counts: Erasure
    ) -> None:
        """What the deliveries' attempts, receipts, events and digests say of them."""
        a, r = AttemptRow, ReceiptRow
        for chunk in _chunks(ids):
            emptied = update(a).where(a.delivery_id.in_(chunk)).values(error=None, detail=None)
            counts.attempts += _rowcount(tx.execute(emptied))
            counts.receipts += _rowcount(
                tx.execute(update(r).where(r.delivery_id.in_(chunk)).values(detail=None))
            )
            counts.digest_items += _rowcount(
                tx.execute(delete(DigestItemRow).where(DigestItemRow.delivery_id.in_(chunk)))
            )
            # The throttle hashes the address as the dispatcher wrote it, whose case (an
            # email's local part) an erasure cannot know: its rows go by delivery as well.
            t = RecipientSendRow
            counts.throttle += _rowcount(tx.execute(delete(t).where(t.delivery_id.in_(chunk))))
        # A receipt no delivery claimed may still name the address in what the provider sent.
        counts.receipts += _rowcount(
            tx.execute(
                update(r)
                .where(r.delivery_id.is_(None), r.detail.is_not(None), forms.within(r.detail))
                .values(detail=None)
            )
        )
        e = EventDeliveryRow
        counts.event_deliveries = _rowcount(
            tx.execute(update(e).where(forms.matches(e.address)).values(address=ERASED_ADDRESS))
        )
        # Only events fanned out: one still to fan out needs its context to do so.
        counts.events = _rowcount(
            tx.execute(
                update(EventRow)
                .where(EventRow.fanned_out_at.is_not(None), forms.within(EventRow.context))
                .values(context={})
            )
        )

    def _recipient(self, tx: Connection, forms: AddressForms, counts: Erasure) -> None:
        """What is kept about the recipient: inbox, subscriptions, preferences, throttle."""
        counts.inbox = _rowcount(
            tx.execute(delete(InboundMessageRow).where(forms.matches(InboundMessageRow.identity)))
        )
        s = SubscriptionRow
        subscriptions = list(tx.execute(select(s.id).where(forms.matches(s.address))).scalars())
        for chunk in _chunks(subscriptions):
            counts.digest_items += _rowcount(
                tx.execute(delete(DigestItemRow).where(DigestItemRow.subscription_id.in_(chunk)))
            )
            counts.subscriptions += _rowcount(tx.execute(delete(s).where(s.id.in_(chunk))))
        p = RecipientPreferencesRow
        counts.preferences = _rowcount(tx.execute(delete(p).where(p.key.in_(sorted(forms.exact)))))
        # Imported here: the throttle is the engine's, which stands on more than this needs.
        from delivery.engine.throttle import address_hash

        hashes = sorted({address_hash(form) for form in forms.exact})
        t = RecipientSendRow
        counts.throttle += _rowcount(tx.execute(delete(t).where(t.address.in_(hashes))))
        early = _early_receipts()
        if early is not None:
            counts.early_receipts = _rowcount(
                tx.execute(delete(early).where(forms.matches(early.c.address)))
            )

    def _suppressions(self, tx: Connection, forms: AddressForms, counts: Erasure) -> None:
        """Each suppression of the address, kept by keyed hash instead."""
        s = SuppressionRow
        rows = tx.execute(
            select(s.channel, s.address, s.reason, s.created_at).where(
                forms.matches(s.address), s.address.not_like(f"{MARKER}%")
            )
        ).all()
        if not rows:
            return
        if not self._keys:
            raise SecretKeyMissing(
                "this address is on a suppression list, and without DELIVERY_SECRET_KEY it "
                "cannot stay suppressed once erased: set DELIVERY_SECRET_KEY (generate one "
                "with `delivery keygen`), then erase it again; nothing was erased"
            )
        for row in rows:
            tx.execute(delete(s).where(s.channel == row.channel, s.address == row.address))
            tx.execute(
                self._insert(s)
                .values(
                    channel=row.channel,
                    # The form the check before each send hashes: the dispatcher's.
                    address=MARKER + keyed_hash(self._keys[0], row.address),
                    reason=row.reason,
                    detail=None,  # a provider reference or inbound id: leads back to it
                    created_at=row.created_at,
                )
                .on_conflict_do_nothing()
            )
        counts.suppressions = len(rows)

    def _record(self, tx: Connection, forms: AddressForms, counts: Erasure) -> None:
        """The erasure itself, by keyed hash (without a key, nothing that could be
        reversed is kept: no record)."""
        if not self._keys:
            return
        digest = keyed_hash(self._keys[0], forms.key)
        e = ErasureRow
        before = tx.execute(select(e.counts).where(e.address_hash == digest)).scalar()
        total = counts.to_json()
        if isinstance(before, dict):
            total = {k: v + int(before.get(k) or 0) for k, v in total.items()}
        statement = self._insert(e).values(address_hash=digest, erased_at=utcnow(), counts=total)
        tx.execute(
            statement.on_conflict_do_update(
                index_elements=["address_hash"],
                set_={"erased_at": statement.excluded.erased_at, "counts": total},
            )
        )

    def _empty_wal(self) -> None:
        """Copy the write-ahead log into the database and cut it to nothing: until then
        it holds pages written before the erasure, the erased text among them."""
        for _ in range(CHECKPOINT_TRIES):
            raw = self.engine.raw_connection()
            try:
                # This process's writers wait; others' are held off by SQLite itself.
                with write_lock(self.engine):
                    cursor = raw.cursor()
                    busy, _, _ = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                    cursor.close()
            finally:
                raw.close()
            if not busy:
                return
        logger.warning(
            "the write-ahead log could not be emptied after an erasure (a reader held it); "
            "the next checkpoint overwrites it"
        )


def _early_receipts() -> Table | None:
    """The receipts kept before their delivery's reference is known (migration 0016),
    where this version has them."""
    try:
        importlib.import_module("delivery.log.receipt_tables")
    except ModuleNotFoundError:
        return None
    table = Base.metadata.tables.get("early_receipts")
    return table if table is not None and "address" in table.c else None


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i : i + CHUNK] for i in range(0, len(values), CHUNK)]


def _rowcount(result: Any) -> int:
    return int(result.rowcount or 0)
