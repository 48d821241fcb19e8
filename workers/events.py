"""The fan-out task: a thin adapter from ``delivery.fanout`` messages to the notifier."""

import logging
import threading
from typing import Any

from celery import Task
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from delivery.engine.retry import backoff
from delivery.errors import PublishError
from delivery.notifications import Notifier
from delivery.producer.celery_config import FANOUT_TASK
from delivery.producer.publisher import get_publisher
from schemas.events import Event
from schemas.validation import explain
from workers.app import app
from workers.tasks import get_assembly

logger = logging.getLogger(__name__)

_notifier: tuple[object, Notifier] | None = None
_lock = threading.Lock()


def get_notifier() -> Notifier:
    """The notifier on this process's engine (made again if the engine was)."""
    global _notifier
    assembly = get_assembly()
    with _lock:
        if _notifier is None or _notifier[0] is not assembly:
            _notifier = (assembly, Notifier(assembly.log))
        return _notifier[1]


@app.task(name=FANOUT_TASK, bind=True, acks_late=True, max_retries=None, ignore_result=True)
def fanout(self: Task, event: Any = None, *extra: Any, **unexpected: Any) -> str:
    """Fan one event out. A malformed message is logged and dropped: it names no
    delivery to record it against, and retrying cannot mend it."""
    if extra or unexpected:
        logger.error("rejected fan-out task message: unexpected arguments")
        return "rejected"
    try:
        request = Event.model_validate(event)
    except ValidationError as exc:
        logger.error("rejected fan-out task message: %s", "; ".join(explain(exc, limit=5)))
        return "rejected"
    try:
        return get_notifier().fan_out(request, get_publisher()).describe()
    except (SQLAlchemyError, PublishError) as exc:
        # Nothing was sent twice by trying again: every delivery id is derived.
        countdown = backoff(self.request.retries, base=1.0, cap=30.0)
        logger.warning(
            "could not fan out event %s (%s); again in %.1fs",
            request.id,
            type(exc).__name__,
            countdown,
        )
        raise self.retry(countdown=countdown, max_retries=None) from None
