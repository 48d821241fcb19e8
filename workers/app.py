"""The Celery app: ``celery -A workers.app worker`` and ``celery -A workers.app flower``."""

import gc
import logging
import time
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

from delivery.log.database import dispose_engines
from delivery.producer.celery_config import celery_config
from schemas import get_settings
from workers.event_flush import BatchedTaskEvents

logger = logging.getLogger(__name__)

#: Consumed messages the embedded broker keeps are removed once they are this old.
PROCESSED_MAX_AGE = 300.0

app = Celery("delivery", include=["workers.tasks", "workers.inbound", "workers.events"])
app.conf.update(celery_config(get_settings()))
app.steps["consumer"].add(BatchedTaskEvents)
# Beat keeps its schedule file here, whatever the broker.
get_settings().home.mkdir(parents=True, exist_ok=True)


@worker_init.connect
def _tidy_embedded_broker(**_: Any) -> None:
    settings = get_settings()
    if not settings.is_embedded_broker:
        return
    # The filesystem transport keeps each consumed message as a file; old ones are spent.
    cutoff = time.time() - PROCESSED_MAX_AGE
    for path in (settings.broker_folder / "processed").glob("*.msg"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            continue


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool child must not share its parent's database connections.
    dispose_engines()
    _freeze_startup_objects()


@worker_ready.connect
def _ready(**_: Any) -> None:
    _freeze_startup_objects()


def _freeze_startup_objects() -> None:
    """Move everything alive after start-up out of the garbage collector's sight.

    A full (generation 2) collection walks every tracked object: in a worker that has
    imported Celery, SQLAlchemy, pydantic and the SDKs, that is a stop-the-world pause of
    about 100 ms, which every thread's delivery in flight waits out (measured: it was the
    latency tail at a steady 100 messages/s, bench section 6). Start-up objects live as
    long as the process, so collecting them is wasted work; afterwards a full collection
    walks only what was made since.
    """
    gc.collect()
    gc.freeze()
