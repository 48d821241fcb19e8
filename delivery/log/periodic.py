"""Site-wide periodic jobs without beat: the workers take turns, through the log.

Every worker asks now and then whether a job is due (``take_turn``); the one whose UPDATE
moves the job's ``next_run_at`` on runs it, and the others see it moved and wait. So the
job runs about once per interval across the whole site, with one worker or fifty, and a
worker that dies holds nothing (the next one due simply takes the next turn). The log is
shared by every worker on every machine, whatever the broker, which is why the turn lives
here rather than in Redis.
"""

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from delivery.log.base import LogBase
from delivery.log.tables import PeriodicJobRow


class PeriodicJobs(LogBase):
    def take_turn(self, job: str, *, now: datetime, every: float, worker: str) -> bool:
        """Whether ``worker`` runs ``job`` now: True for exactly one caller per ``every``
        seconds across all processes sharing the log."""
        following = now + timedelta(seconds=every)
        with self._sessions.begin() as session:
            moved = session.execute(
                update(PeriodicJobRow)
                .where(PeriodicJobRow.name == job, PeriodicJobRow.next_run_at <= now)
                .values(next_run_at=following, last_run_by=worker[:255], last_run_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if moved:
                return True
            if session.scalar(select(PeriodicJobRow.name).where(PeriodicJobRow.name == job)):
                return False
        # The job's first turn ever: whoever inserts its row takes it.
        try:
            with self._sessions.begin() as session:
                session.add(
                    PeriodicJobRow(
                        name=job, next_run_at=following, last_run_by=worker[:255], last_run_at=now
                    )
                )
        except IntegrityError:
            return False
        return True

    def next_run(self, job: str) -> datetime | None:
        """When ``job`` is next due (None: it has never run)."""
        with self._sessions() as session:
            return session.scalar(
                select(PeriodicJobRow.next_run_at).where(PeriodicJobRow.name == job)
            )
