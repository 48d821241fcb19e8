"""Thin task adapters: validate the message, call ``delivery``, map the outcome to Celery."""

import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeGuard

from celery import Task
from celery.exceptions import Retry
from celery.signals import celeryd_after_setup, task_rejected, task_unknown, worker_shutdown
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from delivery.engine.assembly import Assembly, assemble
from delivery.engine.retry import outage_backoff
from delivery.engine.service import Decision, DeliveryService
from delivery.errors import DeliveryFailed, PublishError, RetryableError
from delivery.log.tables import Outcome
from delivery.notifications.operational import OperationalEvents, operational_events
from delivery.producer.celery_config import (
    DELIVER_BATCH_TASK,
    DELIVER_TASK,
    PUBLISHED_AT_HEADER,
    SWEEP_TASK,
)
from delivery.producer.publisher import get_publisher
from delivery.redaction import mask_address
from schemas import Envelope, get_settings
from schemas.messages import storable_problem
from schemas.validation import explain
from workers.app import app
from workers.sweeper import sweep_if_due

logger = logging.getLogger(__name__)

_assembly: Assembly | None = None
_assembly_lock = threading.Lock()
#: Announces this process's operational events (delivery.failed, channel.*).
_operational: OperationalEvents | None = None


#: This worker's Celery node name (``-n``; ``celery@<hostname>`` by default), once known.
_node_name: str | None = None


@celeryd_after_setup.connect
def _remember_node_name(sender: Any = None, **_: Any) -> None:
    global _node_name
    _node_name = str(sender) if sender else None


def get_assembly() -> Assembly:
    """This process's engine, assembled on first use."""
    global _assembly, _operational
    with _assembly_lock:
        if _assembly is None:
            _assembly = assemble(get_settings())
            if _node_name is not None:
                # Attempts name the worker as Flower and `celery inspect` do, with the pid.
                _assembly.service.worker_name = f"{_node_name}:{os.getpid()}"
            _operational = operational_events(
                _assembly.log.engine, lambda event: get_publisher().publish_event(event)
            )
            _assembly.service.breaker_watcher = _operational
        return _assembly


def get_service() -> DeliveryService:
    return get_assembly().service


@worker_shutdown.connect
def close_service(**_: Any) -> None:
    """Close the dispatchers' clients and forget the engine (at shutdown, and in tests)."""
    global _assembly, _operational
    with _assembly_lock:
        if _operational is not None:
            # What is queued goes out before the worker does, if the broker lets it soon.
            _operational.emitter.flush(timeout=5.0)
            _operational = None
        if _assembly is not None:
            _assembly.close()
            _assembly = None


#: Options shared by the delivery tasks. A delivery recorded as failed raises
#: DeliveryFailed after recording (the message is still acknowledged: Celery's
#: task_acks_on_failure_or_timeout), so Flower shows a FAILURE with the reason; ``throws``
#: makes it an expected error, logged in one line without a traceback.
_DELIVERY_TASK = {
    "bind": True,
    "acks_late": True,
    "max_retries": None,
    "ignore_result": True,
    "throws": (DeliveryFailed,),
}


@app.task(name=DELIVER_TASK, Strategy="workers.coalesce:coalescing_strategy", **_DELIVERY_TASK)
def deliver(self: Task, *args: Any, **kwargs: Any) -> str:
    """Deliver one envelope. Malformed messages are recorded as failed and never retried."""
    # Any arguments at all are accepted here and judged below: a signature Python enforces
    # would fail a message that names ``self`` before it could be recorded.
    given, envelope = one_argument(args, kwargs, "envelope")
    if not given:
        reason = "task called with unexpected arguments"
        _reject(self, args[0] if args else None, reason)
        raise DeliveryFailed(reason)
    request, reason = _validated(self, envelope)
    if request is None:
        raise DeliveryFailed(reason)
    try:
        decision = get_service().deliver(request, published_at=published_at(self.request))
    except SQLAlchemyError as exc:
        _retry_later(self, exc, request.id)
    outcome = task_outcome(request, decision)
    if outcome.state == "REQUEUE":
        raise _again(self, decision.countdown)
    if outcome.state == "FAILURE":
        raise DeliveryFailed(outcome.detail)
    if outcome.state == "RETRY":
        raise Retry(outcome.detail, exc=RetryableError(outcome.detail), when=decision.countdown)
    return outcome.detail


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How one delivery's decision shows in Celery (and so in Flower): the one mapping,
    for the single task and the coalescer alike."""

    #: REQUEUE: published again, not yet attempted (or waiting its turn); RETRY: an
    #: attempt failed and the next is scheduled; FAILURE: failed for good; SUCCESS: done.
    state: Literal["SUCCESS", "FAILURE", "RETRY", "REQUEUE"]
    #: The result (SUCCESS) or the reason shown.
    detail: str


def task_outcome(envelope: Envelope, decision: Decision) -> TaskOutcome:
    """The Celery outcome of ``decision``; a failure for good is reported here, once."""
    if decision.action == "requeue":
        return TaskOutcome("REQUEUE", decision.error or "waiting")
    if decision.outcome is Outcome.FAILED:
        report_failure(envelope, decision)
        return TaskOutcome("FAILURE", decision.error or "failed")
    if decision.outcome is Outcome.RETRY:
        # Scheduled from the log (too far ahead for the broker): a retry all the same.
        return TaskOutcome("RETRY", retry_from_the_log(decision))
    return TaskOutcome("SUCCESS", task_result(decision))


@app.task(name=DELIVER_BATCH_TASK, **_DELIVERY_TASK)
def deliver_batch(self: Task, *args: Any, **kwargs: Any) -> str:
    """Deliver a batch of envelopes (what ``send_many`` publishes). A malformed one is
    recorded as failed on its own; the rest go ahead. Failures make the task a FAILURE
    that lists them, once the rest are done."""
    given, envelopes = one_argument(args, kwargs, "envelopes")
    if not given or not isinstance(envelopes, list):
        reason = "batch task called with unexpected arguments"
        _reject(self, None, reason)
        raise DeliveryFailed(reason)
    requests: list[Envelope] = []
    failed: list[tuple[Any, str]] = []
    for raw in envelopes:
        request, reason = _validated(self, raw)
        if request is None:
            failed.append((raw.get("id") if isinstance(raw, dict) else None, reason))
        else:
            requests.append(request)
    decisions: list[Decision] = []
    if requests:
        try:
            decisions = get_service().deliver_many(
                requests, published_at=published_at(self.request)
            )
        except SQLAlchemyError as exc:
            _retry_later(self, exc, requests[0].id)
        _requeue(requests, decisions)
    for r, d in zip(requests, decisions, strict=True):
        if d.outcome is Outcome.FAILED:
            report_failure(r, d)
            failed.append((r.id, d.error or "failed"))
    tally = _tally(decisions, rejected=len(envelopes) - len(requests))
    if failed:
        shown = "; ".join(f"{i}: {reason}" for i, reason in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise DeliveryFailed(f"{tally}. Failed: {shown}{more}")
    return tally


def published_at(request: Any) -> float | None:
    """When the task message was published (``PUBLISHED_AT_HEADER``), from the request
    Celery made of it; None from a producer too old to say (or a value that is no time)."""
    value = getattr(request, PUBLISHED_AT_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(PUBLISHED_AT_HEADER)
    return published_time(value)


#: The latest publish time taken as one (the year 3000): beyond it, or before 1970, a
#: header's number is no time (``datetime.fromtimestamp`` would raise on 1e300).
LATEST_PUBLISH_TIME = 32_503_680_000.0


def published_time(value: Any) -> float | None:
    """``value`` as a publish time, epoch seconds; None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or not 0 <= value <= LATEST_PUBLISH_TIME:
        return None
    return float(value)


def report_failure(envelope: Envelope, decision: Decision) -> None:
    """One WARNING line for a delivery recorded as failed for good, from whichever path
    delivered it (one task, a batch task, the coalescer). Celery logs ``DeliveryFailed`` at
    INFO only, so without this a worker at WARNING says nothing of it. The address is
    masked, in the error too (an invalid address is quoted there); the payload never shows."""
    masked = mask_address(envelope.address)
    error = decision.error or "failed"
    if envelope.address:
        error = error.replace(envelope.address, masked)
    logger.warning(
        "delivery %s failed for good (channel %s, address %s): %s",
        envelope.id,
        envelope.channel,
        masked,
        error,
    )
    # After the commit (decisions come from recorded attempts), and never raising.
    if _operational is not None:
        _operational.delivery_failed(envelope, error=decision.error, attempts=decision.attempts)


def retry_from_the_log(decision: Decision) -> str:
    """What Flower shows for a retry scheduled in the log (too far ahead for the broker)."""
    return f"{decision.error}; next attempt in {decision.countdown:.0f}s, from the log"


def task_result(decision: Decision) -> str:
    """A delivery task's result, as Flower shows it: the outcome, or why nothing was sent."""
    return decision.outcome.value if decision.outcome else "skipped"


def _requeue(requests: list[Envelope], decisions: list[Decision]) -> None:
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


def _again(task: Task, countdown: float) -> Retry:
    """Publish the message again after ``countdown``, showing the same masked arguments
    in Flower as the first time (Celery would otherwise show them in full)."""
    request = task.request
    return task.retry(
        countdown=countdown,
        max_retries=None,
        argsrepr=request.argsrepr,
        kwargsrepr=request.kwargsrepr,
    )


def one_argument(args: Sequence[Any], kwargs: dict[str, Any], name: str) -> tuple[bool, Any]:
    """The task's one argument, given by position or by ``name``; (False, None) if the
    message holds anything else."""
    if len(args) == 1 and not kwargs:
        return True, args[0]
    if not args and list(kwargs) == [name]:
        return True, kwargs[name]
    return False, None


def _validated(task: Task, raw: Any) -> tuple[Envelope | None, str]:
    """The envelope, or None and why not (recorded as the delivery's failure)."""
    try:
        return Envelope.model_validate(raw), ""
    except ValidationError as exc:
        reason = f"malformed task message: {'; '.join(explain(exc, limit=5))}"
        _reject(task, raw, reason)
        return None, reason


def _retry_later(task: Task, exc: SQLAlchemyError, delivery_id: str) -> NoReturn:
    """The log is unreachable: the attempt is not recorded, so the message is not done.
    Publish it again for later rather than acknowledging it as handled."""
    countdown = outage_backoff(task.request.retries)
    logger.warning(
        "delivery log unavailable (%s); %s again in %.1fs",
        type(exc).__name__,
        delivery_id,
        countdown,
    )
    raise _again(task, countdown) from None


def _tally(decisions: list[Decision], *, rejected: int = 0) -> str:
    counts: dict[str, int] = {"rejected": rejected} if rejected else {}
    for decision in decisions:
        key = decision.outcome.value if decision.outcome else decision.action
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {key}" for key, n in sorted(counts.items()))


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep(*_: Any, **__: Any) -> int:
    """The sweep as a task, for a beat schedule made before the workers swept by themselves:
    it sweeps only if the site's turn is due, so it never doubles the workers' own sweep.
    Takes no arguments, and ignores any a hand-made message gives it."""
    found = sweep_if_due(get_service().log, get_settings(), worker=f"task {sweep.request.id}")
    return found or 0


def _reject(task: Task, raw: Any, reason: str) -> None:
    """Record what can be recorded of a message that can never be sent: as a failed
    delivery if it names one the log can store, else set aside whole for a person."""
    fields = raw if isinstance(raw, dict) else {}
    delivery_id, channel, address = (fields.get(k) for k in ("id", "channel", "address"))
    logger.error("rejected task message (id %r): %s", delivery_id, reason)
    if _recordable(delivery_id):
        try:
            get_service().log.reject(
                delivery_id,
                channel=channel if _recordable(channel) else "?",
                address=address if _recordable(address) else "?",
                reason=reason,
            )
            return
        except SQLAlchemyError:
            logger.exception("could not record rejected delivery %s", delivery_id)
    _set_aside_request(task, reason)


def _recordable(value: Any) -> TypeGuard[str]:
    """A string the log can store as an id, channel or address."""
    return isinstance(value, str) and 0 < len(value) <= 2048 and storable_problem(value) is None


def _set_aside_request(task: Task, reason: str) -> None:
    """Keep a task message that names no delivery on the broker's set-aside list, with the
    reason, as the transport does with what is not a task message at all."""
    request = task.request
    document = {
        "reason": reason,
        "task": task.name,
        "id": request.id,
        "args": request.args,
        "kwargs": request.kwargs,
    }
    item = json.dumps(document, default=repr, ensure_ascii=True)
    try:
        with task.app.producer_or_acquire() as producer:
            _set_aside(producer.channel, item, reason)
    except Exception:  # the broker's own errors; what matters is going on
        logger.exception("could not set the message aside")


def _set_aside(channel: Any, item: str | bytes, reason: str) -> None:
    """Keep ``item`` where the broker's transport keeps what it refuses (each of ours has
    a ``set_aside``); on another transport it is only logged, which has been done."""
    keep = getattr(channel, "set_aside", None)
    if keep is None:
        return
    try:
        keep(item, reason)
    except Exception:  # the broker's own errors; what matters is going on
        logger.exception("could not set the message aside")


@task_unknown.connect
@task_rejected.connect
def _set_aside_refused(message: Any = None, **_: Any) -> None:
    """Celery drops a task message it cannot run (an unknown task name, an ETA it cannot
    read); keep it instead, whole, where the transport keeps what it refuses."""
    raw = getattr(message, "_raw", None)
    if raw is None and message is not None and hasattr(message, "body"):
        # py-amqp keeps no raw form: the message's own parts (its body is UTF-8 JSON, the
        # transport checked it; the properties hold the headers).
        body = message.body
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        raw = {"body": text, "properties": message.properties}
    channel = getattr(message, "channel", None)
    if raw is None or channel is None:
        return
    _set_aside(channel, json.dumps(raw, default=repr), "refused by Celery")
