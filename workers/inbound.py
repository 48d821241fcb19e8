"""The router's thin task: validate the message, call ``delivery.inbound``, map the outcome
to Celery. The message is in the log before this task is published, and the task is
acknowledged only once the router has recorded what came of it."""

import logging
import threading
from typing import Any

from celery import Task
from celery.signals import worker_shutdown
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from delivery.engine.retry import outage_backoff
from delivery.errors import DeliveryFailed
from delivery.inbound.inbox import MessageStatus
from delivery.inbound.router import Router
from delivery.inbound.wiring import Inbound
from delivery.producer.celery_config import ROUTE_INBOUND_TASK
from schemas.inbound import RouteRequest
from schemas.validation import explain
from workers.app import app
from workers.tasks import get_assembly

logger = logging.getLogger(__name__)

_router: Router | None = None
_router_lock = threading.Lock()


def get_router() -> Router:
    """This process's router, built on the worker's engine on first use."""
    global _router
    with _router_lock:
        if _router is None:
            _router = Inbound.from_assembly(get_assembly()).router()
        return _router


@worker_shutdown.connect
def forget_router(**_: Any) -> None:
    global _router
    with _router_lock:
        _router = None


@app.task(
    name=ROUTE_INBOUND_TASK,
    bind=True,
    acks_late=True,
    max_retries=None,
    ignore_result=True,
    # Expected: logged in one line, and Flower shows a FAILURE with the reason.
    throws=(DeliveryFailed,),
)
def route_inbound(self: Task, *args: Any, **kwargs: Any) -> str:
    """Route one inbound message. A malformed task message is logged and dropped (it names
    no message we could record anything against); a message a handler failed on is a
    FAILURE, as in the log."""
    # Any arguments at all are accepted and judged here, as the delivery tasks do.
    if len(args) + len(kwargs) != 1 or (kwargs and "raw" not in kwargs):
        logger.error("rejected route task: called with unexpected arguments")
        raise DeliveryFailed("route task called with unexpected arguments")
    try:
        request = RouteRequest.model_validate(args[0] if args else kwargs["raw"])
    except ValidationError as exc:
        reason = "; ".join(explain(exc, limit=5))
        logger.error("rejected route task: %s", reason)
        raise DeliveryFailed(f"malformed route task: {reason}") from None
    try:
        routed = get_router().route(request.id)
    except SQLAlchemyError as exc:
        # Nothing was recorded: route it again later rather than acknowledge it.
        countdown = outage_backoff(self.request.retries)
        logger.warning(
            "delivery log unavailable (%s); routing %s again in %.1fs",
            type(exc).__name__,
            request.id,
            countdown,
        )
        raise self.retry(countdown=countdown, max_retries=None) from None
    if routed.action == "retry":
        raise self.retry(countdown=routed.countdown, max_retries=None)
    if routed.status == MessageStatus.FAILED.value:
        raise DeliveryFailed(f"inbound {request.id}: a handler failed; see `delivery inbox`")
    return routed.status
