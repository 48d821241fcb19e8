"""Leases that a live worker keeps renewing, so that a dead one is replaced in seconds.

A claimed delivery is held for ``DELIVERY_LEASE_SECONDS``; after that another worker may
take it over. A short lease would cut a slow provider's send (or a long batch) short, and a
long one leaves a dead worker's deliveries waiting. So the lease is short, and one thread
per worker process renews every lease this process still holds, every third of the lease,
in one UPDATE: however long a send takes, a live worker never loses its lease, and a dead
one stops renewing and is taken over within one lease.
"""

import logging
import threading
from collections import Counter
from collections.abc import Iterable

from sqlalchemy.exc import SQLAlchemyError

from delivery.log import Claim
from delivery.log.store import DeliveryStore

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """The deliveries this process is sending, and the thread that renews their leases."""

    def __init__(self, store: DeliveryStore, *, lease: float) -> None:
        self.store = store
        self.lease = lease
        self.interval = lease / 3
        #: (delivery id, attempt) -> how many holders (a copy may hold the same claim).
        self._held: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def hold(self, claims: Iterable[Claim]) -> None:
        """Keep these claims' leases alive until ``let_go``."""
        with self._lock:
            for claim in claims:
                self._held[(claim.delivery_id, claim.attempt)] += 1
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="delivery-leases", daemon=True
                )
                self._thread.start()

    def let_go(self, claims: Iterable[Claim]) -> None:
        """Stop renewing these claims (their attempt is recorded, or they were released)."""
        with self._lock:
            for claim in claims:
                key = (claim.delivery_id, claim.attempt)
                self._held[key] -= 1
                if self._held[key] <= 0:
                    del self._held[key]

    def held(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._held)

    def renew(self) -> int:
        """Renew every lease held now; how many were still ours."""
        held = self.held()
        if not held:
            return 0
        return self.store.renew(held, lease=self.lease)

    def _run(self) -> None:
        while not self._wake.wait(self.interval):
            try:
                self.renew()
            except SQLAlchemyError as exc:
                # The log is away: the leases run out unless it is back in time, and the
                # deliveries are then taken over (at least once, as after a crash).
                logger.warning("could not renew leases (%s)", type(exc).__name__)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None:
            thread.join(timeout=5)
