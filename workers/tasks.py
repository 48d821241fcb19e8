"""Thin task adapters: validate the message, call ``delivery``, map the outcome to Celery."""

import logging
import threading
from typing import Any, NoReturn

from celery import Task
from celery.signals import worker_shutdown
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from delivery.clock import utcnow
from delivery.engine.assembly import Assembly, assemble
from delivery.engine.retry import backoff
from delivery.engine.service import Decision, DeliveryService
from delivery.errors import PublishError
from delivery.producer.celery_config import DELIVER_BATCH_TASK, DELIVER_TASK, SWEEP_TASK
from delivery.producer.publisher import get_publisher
from schemas import Envelope, get_settings
from schemas.validation import explain
from workers.app import app

logger = logging.getLogger(__name__)

_assembly: Assembly | None = None
_assembly_lock = threading.Lock()


def get_assembly() -> Assembly:
    """This process's engine, assembled on first use."""
    global _assembly
    with _assembly_lock:
        if _assembly is None:
            _assembly = assemble(get_settings())
        return _assembly


def get_service() -> DeliveryService:
    return get_assembly().service


@worker_shutdown.connect
def close_service(**_: Any) -> None:
    """Close the dispatchers' clients and forget the engine (at shutdown, and in tests)."""
    global _assembly
    with _assembly_lock:
        if _assembly is not None:
            _assembly.close()
            _assembly = None


@app.task(name=DELIVER_TASK, bind=True, acks_late=True, max_retries=None, ignore_result=True)
def deliver(self: Task, envelope: Any = None, *extra: Any, **unexpected: Any) -> str:
    """Deliver one envelope. Malformed messages are recorded as failed and never retried."""
    if extra or unexpected:
        _reject(envelope, "task called with unexpected arguments")
        return "rejected"
    request = _validated(envelope)
    if request is None:
        return "rejected"
    try:
        decision = get_service().deliver(request)
    except SQLAlchemyError as exc:
        _retry_later(self, exc, request.id)
    if decision.action == "requeue":
        raise self.retry(countdown=decision.countdown, max_retries=None)
    return decision.outcome.value if decision.outcome else "skipped"


@app.task(name=DELIVER_BATCH_TASK, bind=True, acks_late=True, max_retries=None, ignore_result=True)
def deliver_batch(self: Task, envelopes: Any = None, *extra: Any, **unexpected: Any) -> str:
    """Deliver a batch of envelopes (what ``send_many`` publishes). A malformed one is
    recorded as failed on its own; the rest go ahead."""
    if extra or unexpected or not isinstance(envelopes, list):
        _reject(None, "batch task called with unexpected arguments")
        return "rejected"
    requests = [r for r in map(_validated, envelopes) if r is not None]
    if not requests:
        return "rejected"
    try:
        decisions = get_service().deliver_many(requests)
    except SQLAlchemyError as exc:
        _retry_later(self, exc, requests[0].id)
    later = [
        (r, d.countdown or None)
        for r, d in zip(requests, decisions, strict=True)
        if d.action == "requeue"
    ]
    if later:
        # Each one that must wait goes on as a task of its own, the way a single send does.
        try:
            get_publisher().publish_envelopes(later)
        except PublishError:
            # Their claims were handed back: the sweep re-enqueues them from the log.
            logger.warning("could not requeue %d deliveries; the sweep will", len(later))
    return _tally(decisions)


def _validated(raw: Any) -> Envelope | None:
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        _reject(raw, f"malformed task message: {'; '.join(explain(exc, limit=5))}")
        return None


def _retry_later(task: Task, exc: SQLAlchemyError, delivery_id: str) -> NoReturn:
    """The log is unreachable: the attempt is not recorded, so the message is not done.
    Publish it again for later rather than acknowledging it as handled."""
    countdown = backoff(task.request.retries, base=1.0, cap=30.0)
    logger.warning(
        "delivery log unavailable (%s); %s again in %.1fs",
        type(exc).__name__,
        delivery_id,
        countdown,
    )
    raise task.retry(countdown=countdown, max_retries=None) from None


def _tally(decisions: list[Decision]) -> str:
    counts: dict[str, int] = {}
    for decision in decisions:
        key = decision.outcome.value if decision.outcome else decision.action
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {key}" for key, n in sorted(counts.items()))


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> int:
    """Re-enqueue what the log says is due and the broker does not hold (Celery beat)."""
    settings = get_settings()
    log = get_service().log
    interval = settings.sweep_interval
    grace = max(2 * interval, 10.0)
    found = log.sweep(
        now=utcnow(), horizon=interval, grace=grace, resweep=settings.delay_limit + 2 * grace
    )
    if found:
        # Those due now travel in batches, like send_many's: after an outage there are many.
        get_publisher(settings).publish_envelopes(found, batch=True)
        logger.info("sweep re-enqueued %d deliveries", len(found))
    return len(found)


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
