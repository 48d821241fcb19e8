"""Site-wide periodic jobs without beat: the workers take turns, through the log.

Every worker asks now and then whether a job is due (``take_turn``); the one whose UPDATE
moves the job's ``next_run_at`` on runs it, and the others see it moved and wait. So the
job runs about once per interval across the whole site, with one worker or fifty, and a
worker that dies holds nothing (the next one due simply takes the next turn). The log is
shared by every worker on every machine, whatever the broker, which is why the turn lives
here rather than in Redis.
"""

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from delivery.log.base import LogBase
from delivery.log.database import read_only
from delivery.log.tables import PeriodicJobRow


class PeriodicJobs(LogBase):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._turn_reader = sessionmaker(read_only(engine))

    def take_turn(self, job: str, *, now: datetime, every: float, worker: str) -> bool:
        """Whether ``worker`` runs ``job`` now: True for exactly one caller per ``every``
        seconds across all processes sharing the log."""
        following = now + timedelta(seconds=every)
        # Most looks find the job not due: a read that never queues behind the writers
        # (on SQLite, no write lock) says so, and only a due job is written.
        with self._turn_reader() as session:
            due_at = session.scalar(
                select(PeriodicJobRow.next_run_at).where(PeriodicJobRow.name == job)
            )
        if due_at is not None and _aware(due_at) > _aware(now):
            return False
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


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
