"""The fan-out task: a thin adapter from ``delivery.fanout`` messages to the notifier."""

import logging
import threading
from typing import Any

from celery import Task
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from delivery.engine.retry import outage_backoff
from delivery.errors import DeliveryFailed, PublishError
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


# Like the delivery tasks: a failure is recorded first, then raised as DeliveryFailed so
# Flower shows a FAILURE with the reason; ``throws`` logs it in one line.
@app.task(
    name=FANOUT_TASK,
    bind=True,
    acks_late=True,
    max_retries=None,
    ignore_result=True,
    throws=(DeliveryFailed,),
)
def fanout(self: Task, *args: Any, **kwargs: Any) -> str:
    """Fan one event out. A malformed message names no delivery to record it against and
    cannot be mended by retrying: it is logged and fails. Deliveries that could not be
    rendered are recorded as failed, and the task fails listing them."""
    # Any arguments are accepted and judged here, so a strange message fails with a reason
    # instead of a TypeError from Python's own argument check.
    if len(args) + len(kwargs) != 1 or (kwargs and "event" not in kwargs):
        reason = "fan-out task called with unexpected arguments"
        logger.error("rejected fan-out task message: %s", reason)
        raise DeliveryFailed(reason)
    try:
        request = Event.model_validate(args[0] if args else kwargs["event"])
    except ValidationError as exc:
        reason = f"malformed fan-out task message: {'; '.join(explain(exc, limit=5))}"
        logger.error("rejected fan-out task message: %s", reason)
        raise DeliveryFailed(reason) from None
    try:
        done = get_notifier().fan_out(request, get_publisher())
    except (SQLAlchemyError, PublishError) as exc:
        # Nothing is sent twice by trying again: every delivery id is derived.
        countdown = outage_backoff(self.request.retries)
        logger.warning(
            "could not fan out event %s (%s); again in %.1fs",
            request.id,
            type(exc).__name__,
            countdown,
        )
        raise self.retry(countdown=countdown, max_retries=None) from None
    if done.failed:
        raise DeliveryFailed(f"event {request.id}: {done.describe()}; see `delivery status`")
    return done.describe()
