"""The Celery app: ``celery -A workers.app worker`` and ``celery -A workers.app flower``."""

import gc
import logging
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

from delivery import collector
from delivery.extras import missing_extra

try:
    from delivery.log.database import dispose_engines
except ModuleNotFoundError as exc:  # `pip install delivery` alone: the producer, no worker
    raise missing_extra(exc, "the Celery app (workers.app)") from exc
from delivery.producer.celery_config import celery_config
from schemas import get_settings
from workers.event_flush import BatchedTaskEvents
from workers.prompt_stop import WakeOnSignal
from workers.warmup import WarmUp, warm_up

logger = logging.getLogger(__name__)

app = Celery(
    "delivery",
    include=[
        "workers.tasks",
        "workers.inbound",
        "workers.events",
        "workers.sweeper",
        "workers.outbox",
    ],
)
app.conf.update(celery_config(get_settings()))
app.steps["consumer"].add(BatchedTaskEvents)
# Before the consumer takes its first message (workers/warmup.py).
app.steps["consumer"].add(WarmUp)
# A signal to stop is read at once, not at the event loop's next turn.
app.steps["consumer"].add(WakeOnSignal)
# Beat keeps its schedule file here, whatever the broker.
get_settings().home.mkdir(parents=True, exist_ok=True)


@worker_init.connect
def _adopt_old_embedded_queue(**_: Any) -> None:
    settings = get_settings()
    if not settings.is_embedded_broker or not (settings.broker_folder / "queue").is_dir():
        return
    # The embedded broker was kombu's filesystem transport, a folder of message files:
    # what waits there moves into the SQLite file, once.
    from delivery.transport.embedded_adopt import adopt_filesystem_queue
    from delivery.transport.embedded_store import QueueFile

    moved = adopt_filesystem_queue(settings.broker_folder, QueueFile.open(settings.broker_file))
    if moved:
        logger.warning(
            "moved %d messages from the old embedded broker's folder %s into %s",
            moved,
            settings.broker_folder / "queue",
            settings.broker_file,
        )


@worker_init.connect
def _imports_done(**_: Any) -> None:
    # `delivery worker` paused the collector for its imports; they are done (the task
    # modules included), so it runs again before the consumer connects and warms up.
    collector.resume()


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool child must not share its parent's database connections.
    dispose_engines()
    # Then its own connections and compiled statements, warmed before they are frozen.
    from workers.tasks import get_assembly

    try:
        # Well inside billiard's 4 s for a child to report that it started.
        warm_up(get_assembly(), budget=2.0)
    except Exception as exc:  # noqa: BLE001  # a warm-up must never stop the worker
        logger.info("warm-up skipped: the engine could not be assembled (%s)", exc)
    collector.resume()


@worker_ready.connect
def _ready(**_: Any) -> None:
    # What the warm-up made lives as long as the process too (delivery/collector.py).
    collector.resume()
    logger.debug(
        "start-up done: %d objects frozen out of the garbage collector's sight; "
        "automatic collection is %s",
        gc.get_freeze_count(),
        "on" if gc.isenabled() else "off",
    )
