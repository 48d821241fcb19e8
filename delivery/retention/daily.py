"""The daily purge, run by the workers themselves: no beat, once a day per site.

The sweeper thread asks the log whose turn it is (``PeriodicJobs.take_turn``), as it does
for the sweep; the worker that takes the turn purges in a thread of its own, so that a long
purge (the first one on a large log) never delays the sweep that takes over dead workers'
deliveries. A purge that fails is logged and tried again at the next turn: the batches
already committed stay done.
"""

import logging
import threading
from datetime import datetime

from delivery.clock import utcnow
from delivery.log.periodic import PeriodicJobs
from delivery.retention.purge import Retention
from schemas import Settings

logger = logging.getLogger(__name__)

#: The job's name in the log's periodic jobs.
PURGE_JOB = "purge"
#: Seconds between purges on the site.
EVERY = 24 * 3600.0


class DailyPurge:
    """Takes this worker's turns at the daily purge and runs each in the background."""

    def __init__(self, jobs: PeriodicJobs, settings: Settings, *, worker: str) -> None:
        self.jobs = jobs
        self.settings = settings
        self.worker = worker
        self._thread: threading.Thread | None = None
        #: When the job is next due, as the log said last time: until then this worker does
        #: not ask (the sweeper looks every few seconds; the purge is due once a day).
        self._due: datetime | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def look(self) -> bool:
        """Start the purge if it is this worker's turn; whether it started. Raises what
        asking the log raises (the caller logs it, as for the sweep)."""
        now = utcnow()
        if self.running or (self._due is not None and now < self._due):
            return False
        taken = self.jobs.take_turn(PURGE_JOB, now=now, every=EVERY, worker=self.worker)
        self._due = self.jobs.next_run(PURGE_JOB)
        if not taken:
            return False
        self._thread = threading.Thread(target=self.run, name="delivery-purge", daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """One purge (0 days' retention: keep everything, only compact the counts). Never
        raises: the thread it runs in has nobody to tell but the log."""
        days = self.settings.retention_days
        retention = Retention(self.jobs.engine)
        try:
            if not days:
                retention.compact_counts()
                return
            report = retention.purge(older_than=days)
        except Exception:  # a purge that fails must not take anything else down
            logger.exception("the daily purge failed; the next turn tries again")
            return
        if report.deliveries:
            logger.info(
                "purged %d deliveries older than %g days in %d batches",
                report.deliveries,
                days,
                report.batches,
            )
