"""The baseline: a bare Celery app whose task calls ``requests.post`` for each message.

Run by the bench as::

    celery -A bench.baseline_app worker --pool threads --concurrency 16 \\
        --queues bench-baseline --hostname baseline@bench

It shares the broker (the same redis-server, its own queue), the pool, the concurrency and
the acknowledgement settings of ``delivery worker`` (``delivery.producer.celery_config``), so
the difference measured is what our task does per message: validate, claim in the log,
sign, POST, record. Everything else is Celery's default: kombu's own Redis transport and
no task events (ours turns events on and uses its own transport; the bench prints both
sets of settings side by side, as costs of our choices).
"""

import os
import threading
import time
from typing import Any

import requests
from celery import Celery
from celery.signals import task_postrun
from celery.worker.control import inspect_command

#: Names the bench uses to enqueue (the worker never imports the bench's producer side).
POST_TASK = "bench.baseline.post"
SESSION_TASK = "bench.baseline.post_session"

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_BASELINE_QUEUE", "bench-baseline")
VISIBILITY_TIMEOUT = float(os.environ.get("BENCH_VISIBILITY_TIMEOUT", "3600"))

#: The settings that make the comparison fair: the same as ``delivery.producer.celery_config``.
MATCHED: dict[str, Any] = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "task_ignore_result": True,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "worker_pool": "threads",
    "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
}

app = Celery("bench-baseline", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    MATCHED,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_local = threading.local()


@app.task(name=POST_TASK, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator]
def post(url: str, body: dict[str, Any]) -> int:
    """What a user writes first: one ``requests.post`` (a new connection) per message."""
    response = requests.post(url, json=body, timeout=10)
    response.raise_for_status()
    return response.status_code


@app.task(name=SESSION_TASK, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator]
def post_session(url: str, body: dict[str, Any]) -> int:
    """A stronger baseline: a keep-alive ``requests.Session`` per worker thread, as ours has."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    response = session.post(url, json=body, timeout=10)
    response.raise_for_status()
    return response.status_code


#: Tasks that succeeded and when the last one ended: how the bench times this worker when
#: its requests go to an external sink it cannot count (``--sink``). Two assignments under
#: a lock per task: far below what is measured.
_progress: dict[str, float] = {"count": 0, "last_at": 0.0}
_progress_lock = threading.Lock()


@task_postrun.connect  # type: ignore[untyped-decorator]
def _count_success(state: str | None = None, **_: Any) -> None:
    if state == "SUCCESS":
        with _progress_lock:
            _progress["count"] += 1
            _progress["last_at"] = time.time()


@inspect_command()  # type: ignore[untyped-decorator]
def bench_progress(_state: Any) -> dict[str, float]:
    """``{"count": tasks succeeded, "last_at": epoch seconds of the last}``."""
    with _progress_lock:
        return dict(_progress)
