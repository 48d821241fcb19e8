"""The sweep, run by the workers themselves: no beat to deploy, once per interval per site.

What the log says is due and the broker does not hold — retries scheduled from the log,
deliveries whose worker died mid-send (their lease ran out), deliveries reopened while the
broker was away — is published again by the sweep. It used to be a Celery task sent by
beat every few seconds: a process more to deploy (most Celery users run workers only, and
without it a dead worker's deliveries waited for the broker's visibility timeout), and
17,000 tasks a day in Flower and the worker's log. Now a thread in every worker asks the
log whose turn it is (``PeriodicJobs.take_turn``); one worker on the site sweeps per
interval, and nothing shows unless the sweep finds something.

The same thread takes turns at closing digest windows (``DIGEST_JOB``, every
``DELIVERY_DIGEST_INTERVAL`` seconds): one indexed query when no window is waiting; and
once a day at the purge (``delivery.retention``), which runs in a thread of its own; and
at the receipts job (``delivery.engine.receipt_lookups``: early receipts matched or
dropped, deliveries whose receipt is overdue looked up at the provider, bounded per turn).
"""

import logging
import os
import random
import socket
import threading
import time
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from sqlalchemy.exc import SQLAlchemyError

from delivery.clock import utcnow
from delivery.engine.receipt_lookups import RECEIPTS_JOB, ReceiptLookups, Turn
from delivery.errors import PublishError
from delivery.log import DeliveryLog
from delivery.notifications.closing import close_digests
from delivery.notifications.fanout import Notifier
from delivery.producer.publisher import get_publisher
from delivery.retention import DailyPurge
from schemas import Settings, get_settings

logger = logging.getLogger(__name__)

#: The periodic jobs' names in the log.
SWEEP_JOB = "sweep"
DIGEST_JOB = "digests"
#: Seconds past its end before the sweep takes a lease over (clock skew between hosts).
LEASE_SLACK = 1.0
#: How often, per interval, each worker asks whether it is its turn: the sweep then runs
#: every interval to one and a half intervals, however many workers there are.
LOOKS_PER_INTERVAL = 2
#: The receipts job (``delivery.engine.receipt_lookups``) runs every this many sweep
#: intervals: 30 s by default, so an early receipt a race left unmatched waits no longer.
RECEIPT_TURN_EVERY = 6
#: Seconds between two warnings that the log or the broker is away.
QUIET_FOR = 60.0


def sweep_once(log: DeliveryLog, settings: Settings) -> int:
    """Publish what the log says is due and the broker does not hold; how many."""
    interval = settings.sweep_interval
    grace = max(2 * interval, 10.0)
    found = log.sweep(
        now=utcnow(),
        horizon=interval,
        grace=grace,
        resweep=settings.delay_limit + 2 * grace,
        # Live workers renew their leases: one that ran out belongs to a worker that died,
        # and its deliveries are taken over now (a second's slack for clocks that differ).
        lease_grace=LEASE_SLACK,
    )
    if found:
        # Those due now travel in batches, like send_many's: after an outage there are many.
        get_publisher(settings).publish_envelopes(found, batch=True)
        logger.info("sweep re-enqueued %d deliveries", len(found))
    return len(found)


def sweep_if_due(log: DeliveryLog, settings: Settings, *, worker: str) -> int | None:
    """Sweep if it is this worker's turn on the site; how many it found (None: not its
    turn)."""
    if not log.take_turn(SWEEP_JOB, now=utcnow(), every=settings.sweep_interval, worker=worker):
        return None
    return sweep_once(log, settings)


def close_digests_if_due(notifier: Notifier, settings: Settings, *, worker: str) -> int | None:
    """Close the digest windows that have ended, if it is this worker's turn; how many
    deliveries that made (None: not its turn)."""
    now = utcnow()
    if not notifier.log.take_turn(
        DIGEST_JOB, now=now, every=settings.digest_interval, worker=worker
    ):
        return None
    return close_digests(notifier, get_publisher(settings), now=now)


class Sweeper:
    """The thread that takes this worker's turns at the sweep."""

    def __init__(self, log: DeliveryLog, settings: Settings, *, worker: str) -> None:
        self.log = log
        self.settings = settings
        self.worker = worker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = -QUIET_FOR
        self._notifier: Notifier | None = None
        self._receipts: ReceiptLookups | None = None
        self.purge = DailyPurge(log, settings, worker=worker)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="delivery-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _pause(self) -> float:
        # Jittered, so that workers started together do not all ask at the same moment.
        every = min(self.settings.sweep_interval, self.settings.digest_interval)
        return every / LOOKS_PER_INTERVAL * random.uniform(0.75, 1.25)

    def _run(self) -> None:
        while not self._stop.wait(self._pause()):
            self.look_at_all()

    def look_at_all(self) -> None:
        """One look at every job: take the turns that are this worker's. Never raises."""
        self.look()
        self.look_at_digests()
        self.look_at_receipts()
        self.look_at_purge()

    def look_at_digests(self) -> int | None:
        """One look at the digest windows: close those that ended, if it is this worker's
        turn. Never raises, like ``look``."""
        try:
            if self._notifier is None:
                self._notifier = Notifier(self.log)
            return close_digests_if_due(self._notifier, self.settings, worker=self.worker)
        except (SQLAlchemyError, PublishError) as exc:
            self._warn(f"could not close digest windows ({type(exc).__name__}); trying again")
        except Exception:  # a bug must not end the thread the sweep runs in
            logger.exception("closing digest windows failed; trying again")
        return None

    def look_at_purge(self) -> bool:
        """Start the daily purge if it is this worker's turn. Never raises, like ``look``."""
        try:
            return self.purge.look()
        except SQLAlchemyError as exc:
            self._warn(f"could not take a turn at the purge ({type(exc).__name__}); trying again")
        except Exception:  # a bug must not end the thread the sweep runs in
            logger.exception("taking a turn at the purge failed; trying again")
        return False

    def look_at_receipts(self) -> Turn | None:
        """Take a turn at the receipts job, if it is this worker's: match or drop early
        receipts, look up deliveries whose receipt is overdue. Never raises, like ``look``."""
        try:
            every = self.settings.sweep_interval * RECEIPT_TURN_EVERY
            if not self.log.take_turn(RECEIPTS_JOB, now=utcnow(), every=every, worker=self.worker):
                return None
            if self._receipts is None:
                from workers.tasks import get_assembly

                self._receipts = ReceiptLookups(self.log.engine, get_assembly().dispatchers.get)
            return self._receipts.run()
        except SQLAlchemyError as exc:
            self._warn(f"could not look after receipts ({type(exc).__name__}); trying again")
        except Exception:  # a bug must not end the thread the sweep runs in
            logger.exception("looking after receipts failed; trying again")
        return None

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= QUIET_FOR:
            self._warned_at = now
            logger.warning("%s", message)

    def look(self) -> int | None:
        """One look: sweep if it is this worker's turn. Never raises: the log or the broker
        being away is said now and then, and the next look tries again."""
        try:
            return sweep_if_due(self.log, self.settings, worker=self.worker)
        except (SQLAlchemyError, PublishError) as exc:
            now = time.monotonic()
            if now - self._warned_at >= QUIET_FOR:
                self._warned_at = now
                logger.warning("could not sweep the log (%s); trying again", type(exc).__name__)
        except Exception:  # a bug must not end the thread: the sweep is the safety net
            logger.exception("the sweep failed; trying again")
        return None


_sweeper: Sweeper | None = None
_sweeper_lock = threading.Lock()


def _this_workers_sweeper(hostname: str | None) -> Sweeper:
    """This worker process's sweeper, made on first use."""
    global _sweeper
    with _sweeper_lock:
        if _sweeper is None:
            from workers.tasks import get_service

            name = f"{hostname or socket.gethostname()}/{os.getpid()}"
            _sweeper = Sweeper(get_service().log, get_settings(), worker=name)
        return _sweeper


def take_first_turns(hostname: str | None) -> None:
    """The sweeper's first look, taken by the warm-up before the worker takes its first
    message (``workers.warmup``): a worker that replaces a dead one sweeps at once, and the
    first look's one-off costs (its statements compiled, the purge's first turn) are not
    paid while the first deliveries wait for the GIL."""
    _this_workers_sweeper(hostname).look_at_all()


@worker_ready.connect
def _start_sweeping(sender: Any = None, **_: Any) -> None:
    """Every worker takes turns at the sweep, in its main process (whatever the pool)."""
    _this_workers_sweeper(getattr(sender, "hostname", None)).start()


@worker_shutdown.connect
def _stop_sweeping(**_: Any) -> None:
    global _sweeper
    with _sweeper_lock:
        sweeper, _sweeper = _sweeper, None
    if sweeper is not None:
        sweeper.stop()
