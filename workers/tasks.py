"""Thin task adapters: validate the message, call ``delivery``, map the outcome to Celery."""

import logging
import threading
from typing import Any

from celery import Task
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from delivery.broker import DELIVER_TASK
from delivery.channels import ChannelStore
from delivery.crypto import SecretBox
from delivery.log import DeliveryLog
from delivery.registry import DispatcherRegistry
from delivery.retry import backoff
from delivery.service import DeliveryService, Dispatchers
from schemas import Envelope, get_settings
from workers.app import app

logger = logging.getLogger(__name__)

_service: DeliveryService | None = None
_service_lock = threading.Lock()


def get_service() -> DeliveryService:
    """This process's delivery service, built on first use."""
    global _service
    with _service_lock:
        if _service is None:
            settings = get_settings()
            log = DeliveryLog.from_settings(settings)
            registry = DispatcherRegistry.from_installed()
            channels = ChannelStore(log.engine, registry, lambda: SecretBox.from_settings(settings))
            _service = DeliveryService(settings, log, Dispatchers(channels, registry))
        return _service


def close_service() -> None:
    global _service
    with _service_lock:
        if _service is not None:
            _service.dispatchers.close()
            _service = None


@app.task(name=DELIVER_TASK, bind=True, acks_late=True, max_retries=None, ignore_result=True)
def deliver(self: Task, envelope: Any = None, *extra: Any, **unexpected: Any) -> str:
    """Deliver one envelope. Malformed messages are recorded as failed and never retried."""
    if extra or unexpected:
        _reject(envelope, "task called with unexpected arguments")
        return "rejected"
    try:
        request = Envelope.model_validate(envelope)
    except ValidationError as exc:
        _reject(envelope, f"malformed task message: {_summarise(exc)}")
        return "rejected"
    try:
        decision = get_service().deliver(request)
    except SQLAlchemyError as exc:
        # The log is unreachable: the attempt is not recorded, so the message is not done.
        # Try again later rather than acknowledging it.
        countdown = backoff(self.request.retries, base=1.0, cap=60.0)
        logger.warning(
            "delivery log unavailable (%s); %s again in %.1fs",
            type(exc).__name__,
            request.id,
            countdown,
        )
        raise self.retry(countdown=countdown, max_retries=None) from None
    if decision.action != "done":
        raise self.retry(countdown=decision.countdown, max_retries=None)
    return decision.outcome.value if decision.outcome else "skipped"


def _reject(raw: Any, reason: str) -> None:
    """Record what can be recorded of a message that can never be sent."""
    fields = raw if isinstance(raw, dict) else {}
    delivery_id, channel, address = (fields.get(k) for k in ("id", "channel", "address"))
    if isinstance(delivery_id, str) and 0 < len(delivery_id) <= 64:
        try:
            get_service().log.reject(
                delivery_id,
                channel=channel if isinstance(channel, str) else "?",
                address=address if isinstance(address, str) else "?",
                reason=reason,
            )
        except SQLAlchemyError:
            logger.exception("could not record rejected delivery %s", delivery_id)
    logger.error("rejected task message (id %r): %s", delivery_id, reason)


def _summarise(exc: ValidationError) -> str:
    # Field locations and messages only: the input values may be large or sensitive.
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}"
        for err in exc.errors()[:5]
    )
