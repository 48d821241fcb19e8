"""Single deliveries coalesced worker-side: ``delivery.send``'s one-task-per-delivery
messages, sent by the worker threads a few at a time instead of one Celery task each.

Celery's own work per task (a request object, a pool job, the tracer) was an eighth of the
worker's CPU on the one-task path (bench section 1, DELIVERY_COALESCE off and on). This
strategy takes over the ``delivery.deliver`` messages that need nothing Celery-specific
(no ETA, no expiry, no callbacks, not revoked, a well-formed envelope): they wait in a
buffer, and each worker thread that is free takes its share of it and delivers them with
``deliver_many``. Under light load a message is taken at once, alone: no added latency.
Under load the buffer fills while the threads are busy, so batches form by themselves.

Every per-delivery guarantee stays: each message is acknowledged only after its attempt
is recorded (``acks_late``), a retry goes back to the broker as the same task with its
retry count, and Flower sees each task received, started and ended as before. Anything
else falls back to Celery's own handling (``celery.worker.strategy.default``).
"""

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.concurrency.thread import TaskPool
from celery.signals import task_postrun, task_prerun
from celery.utils.saferepr import saferepr
from celery.worker import state as worker_state
from celery.worker.strategy import default as default_strategy
from kombu.message import Message
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from delivery.engine.retry import outage_backoff
from delivery.engine.service import Decision
from delivery.errors import DeliveryFailed, RetryableError
from delivery.producer.celery_config import PUBLISHED_AT_HEADER
from schemas import Envelope, get_settings
from workers.tasks import get_service, one_argument, published_time, task_outcome

logger = logging.getLogger(__name__)

#: A header that sends a message down Celery's own path (set on what a coalesced batch
#: could not handle, so that the second try goes alone).
ALONE_HEADER = "delivery_alone"
#: Messages reserved beyond Celery's prefetch, per worker thread, so that batches can form
#: while every thread is busy. Small: reserved messages wait, and other workers cannot
#: take them. Twice as many while the process is CPU-bound (``BUSY_CPU``), when the buffer
#: drains fast and each read from the broker then brings more (bench section 1, one task
#: per delivery, A/B: 1.05x against 4; 16 no faster than 8).
CREDIT_PER_THREAD = 4
BUSY_CREDIT_PER_THREAD = 8
#: While the process keeps this much of a CPU busy (its threads contend for one GIL), a
#: thread takes at least ``BUSY_SHARE`` from the buffer, and at most ``BUSY_DRAINERS``
#: threads drain it: more threads cannot send faster then, each small batch costs its own
#: claim, look-up and commit, and every thread woken takes the GIL from the consumer's
#: (bench section 1, one task per delivery, 16 threads: 3 drainers ~10 % faster than 8,
#: and no slower than 2 or 4). Otherwise the buffer is split evenly among all threads, so
#: that slow providers keep every thread waiting on its own.
BUSY_CPU = 0.8
BUSY_SHARE = 8
BUSY_DRAINERS = 3
#: How often the process's CPU use is read.
CPU_SAMPLE_SECONDS = 0.5
#: Embedded options a coalesced task cannot honour.
_WORKFLOW = ("callbacks", "errbacks", "chain", "chord")


@dataclass(slots=True)
class Pending:
    """A task message taken over, waiting for a worker thread."""

    message: Message
    #: Celery's ack promise, called with a logger and the connection errors.
    ack: Callable[..., Any]
    envelope: Envelope
    raw: dict[str, Any]
    headers: dict[str, Any]
    retries: int
    #: The consumer's prefetch limit was raised by one for this message, and is lowered
    #: again when it is acknowledged (on the QoS object of its own connection).
    credit: Any = None
    acknowledged: bool = False
    #: While a thread sends it: what Celery's worker state (``inspect active``) holds.
    running: "CoalescedRequest | None" = None

    @property
    def task_id(self) -> str:
        return str(self.headers["id"])

    @property
    def published_at(self) -> float | None:
        """When the producer published it; None from a producer too old to say."""
        return published_time(self.headers.get(PUBLISHED_AT_HEADER))


class CoalescedRequest:
    """A coalesced task as Celery's worker state sees it while it runs: ``celery inspect
    active`` and Flower's worker page list it as they list a task Celery runs itself."""

    __slots__ = ("__weakref__", "_pending", "id", "name", "time_start")

    def __init__(self, name: str, pending: Pending) -> None:
        self.id = pending.task_id
        self.name = name
        self.time_start = time.time()
        self._pending = pending

    def info(self, safe: bool = False) -> dict[str, Any]:
        """As ``celery.worker.request.Request.info``: masked arguments, as Flower shows."""
        headers, message = self._pending.headers, self._pending.message
        return {
            "id": self.id,
            "name": self.name,
            "args": headers.get("argsrepr") or "(…)",
            "kwargs": headers.get("kwargsrepr") or "{}",
            "type": self.name,
            "hostname": headers.get("hostname"),
            "time_start": self.time_start,
            "acknowledged": self._pending.acknowledged,
            "delivery_info": {
                key: (message.delivery_info or {}).get(key)
                for key in ("exchange", "routing_key", "priority", "redelivered")
            },
            "worker_pid": os.getpid(),
        }


def coalescing_strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """The ``Strategy`` of ``delivery.deliver``: coalesce what can be, on a threads pool."""
    fallback = default_strategy(task, app, consumer, **kwargs)
    if not get_settings().coalesce or not isinstance(consumer.pool, TaskPool):
        return fallback  # prefork children cannot share this process's buffer
    coalescer = Coalescer(task, consumer, limit=get_settings().batch_size)

    def task_message_handler(
        message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any
    ) -> Any:
        pending = coalescer.take_over(message, ack)
        if pending is None:
            return fallback(message, body, ack, reject, callbacks, **kw)
        coalescer.add(pending)
        return None

    return task_message_handler


class Coalescer:
    """The buffer, and the worker threads' share of it. ``take_over`` and ``add`` run on
    the consumer's thread; ``_drain`` on the pool's."""

    def __init__(self, task: Task, consumer: Any, *, limit: int) -> None:
        self.task = task
        self.consumer = consumer
        self.pool: TaskPool = consumer.pool
        self.threads = max(1, int(self.pool.limit or 1))
        self.limit = max(1, limit)
        self.max_credit = self.threads * CREDIT_PER_THREAD
        self.busy_credit = self.threads * BUSY_CREDIT_PER_THREAD
        self.busy_drainers = min(self.threads, BUSY_DRAINERS)
        self.revoked = consumer.controller.state.revoked
        self._lock = threading.Lock()
        self._buffer: deque[Pending] = deque()
        self._draining = 0
        self._credit = 0
        self._busy = False
        self._sampled_at = time.monotonic()
        self._cpu_at = time.process_time()

    # -- on the consumer's thread -----------------------------------------------------

    def take_over(self, message: Message, ack: Callable[..., Any]) -> Pending | None:
        """The message as a plain delivery, or None where Celery must handle it."""
        headers = message.headers
        if not isinstance(headers, dict) or headers.get("task") != self.task.name:
            return None
        if headers.get("eta") or headers.get("expires") or headers.get(ALONE_HEADER):
            return None
        if headers.get("timelimit") not in (None, [None, None], (None, None)):
            return None
        task_id, retries = headers.get("id"), headers.get("retries", 0)
        if not isinstance(task_id, str) or task_id in self.revoked:
            return None
        if type(retries) is not int or retries < 0:
            return None
        raw = _envelope_argument(message)
        if raw is None:
            return None
        try:
            envelope = Envelope.model_validate(raw)
        except ValidationError:
            return None  # the task records why, on Celery's path
        return Pending(message, ack, envelope, raw, headers, retries)

    def add(self, pending: Pending) -> None:
        self._event(
            "task-received",
            pending,
            name=self.task.name,
            args=pending.headers.get("argsrepr") or saferepr([pending.raw]),
            kwargs=pending.headers.get("kwargsrepr") or "{}",
            root_id=pending.headers.get("root_id"),
            parent_id=pending.headers.get("parent_id"),
            retries=pending.retries,
            eta=None,
            expires=None,
        )
        qos = self.consumer.qos
        with self._lock:
            self._buffer.append(pending)
            if self._credit < (self.busy_credit if self._busy else self.max_credit):
                self._credit += 1
                pending.credit = qos
            # While the process is CPU-bound, more drainers only take the GIL from the
            # consumer's thread, which then feeds the buffer slower (measured: half the
            # batches were of one, the buffer empty, with all 16 threads draining).
            start = self._draining < (self.busy_drainers if self._busy else self.threads)
            if start:
                self._draining += 1
        if pending.credit is not None:
            qos.increment_eventually()
        if start:
            self.pool.apply_async(self._drain, callback=_ignore)

    # -- on a worker thread -----------------------------------------------------------

    def _drain(self) -> None:
        """Deliver from the buffer until it is empty."""
        try:
            while batch := self._share():
                self._deliver_or_hand_back(batch)
        except BaseException:
            # A thread stopped mid-batch (shutdown): another drain must be able to start.
            with self._lock:
                self._draining -= 1
            raise

    def _deliver_or_hand_back(self, batch: list[Pending]) -> None:
        try:
            self._deliver(batch)
        except Exception:
            logger.exception("a coalesced batch of %d failed; each goes alone", len(batch))
            for pending in batch:
                if not pending.acknowledged:
                    self._again(pending, outage_backoff(pending.retries), alone=True)

    def _share(self) -> list[Pending]:
        """This thread's share of the buffer: an even split among the threads, so that no
        thread takes a long batch while another has nothing; at least ``BUSY_SHARE`` while
        the process is CPU-bound, when other threads could only wait for the GIL."""
        with self._lock:
            size = max(1, math.ceil(len(self._buffer) / self.threads))
            if self._cpu_bound():
                size = max(size, BUSY_SHARE)
            size = min(self.limit, size)
            batch = [self._buffer.popleft() for _ in range(min(size, len(self._buffer)))]
            if not batch:
                self._draining -= 1
            return batch

    def _cpu_bound(self) -> bool:
        """Whether the process kept ``BUSY_CPU`` of a CPU busy lately (under the lock)."""
        now = time.monotonic()
        if now - self._sampled_at >= CPU_SAMPLE_SECONDS:
            cpu = time.process_time()
            self._busy = (cpu - self._cpu_at) / (now - self._sampled_at) >= BUSY_CPU
            self._sampled_at, self._cpu_at = now, cpu
        return self._busy

    def _deliver(self, batch: list[Pending]) -> None:
        started = time.monotonic()
        for pending in batch:
            self._started(pending)
        envelopes = [p.envelope for p in batch]
        service = get_service()
        try:
            if len(envelopes) == 1:
                decisions = [service.deliver(envelopes[0], published_at=batch[0].published_at)]
            else:
                published = [p.published_at for p in batch]
                decisions = service.deliver_many(envelopes, published_at=published)
        except SQLAlchemyError as exc:
            # Not recorded, so not done: each goes back to the broker for later.
            logger.warning(
                "delivery log unavailable (%s); %d deliveries again later",
                type(exc).__name__,
                len(batch),
            )
            for pending in batch:
                self._again(pending, outage_backoff(pending.retries))
            return
        runtime = time.monotonic() - started
        for pending, decision in zip(batch, decisions, strict=True):
            self._finish(pending, decision, runtime)

    def _finish(self, pending: Pending, decision: Decision, runtime: float) -> None:
        outcome = task_outcome(pending.envelope, decision)
        if outcome.state == "REQUEUE":
            # Only an attempt counts as a retry: a hand-back or a wait was not one.
            attempted = decision.outcome is not None
            self._again(pending, decision.countdown, reason=decision.error, attempted=attempted)
            return
        if outcome.state == "FAILURE":
            failure = DeliveryFailed(outcome.detail)
            logger.info("Task %s[%s] raised expected: %r", self.task.name, pending.task_id, failure)
            self._event("task-failed", pending, exception=saferepr(failure), traceback="")
        elif outcome.state == "RETRY":
            retry = RetryableError(outcome.detail)
            logger.info("Task %s[%s] retry: %s", self.task.name, pending.task_id, outcome.detail)
            self._event("task-retried", pending, exception=saferepr(retry), traceback="")
        else:
            result = saferepr(outcome.detail)
            self._event("task-succeeded", pending, result=result, runtime=runtime)
        self._ended(pending, outcome.state, outcome.detail)
        self._acknowledge(pending)

    def _again(
        self,
        pending: Pending,
        countdown: float,
        *,
        reason: str | None = None,
        alone: bool = False,
        attempted: bool = True,
    ) -> None:
        """Publish the message again as the same task, one retry on if ``attempted``, and
        acknowledge this one (as Celery's ``task.retry`` does). If the broker refuses, the
        claim the log holds brings the delivery back with the sweep."""
        headers = pending.headers
        info = pending.message.delivery_info or {}
        try:
            self.task.apply_async(
                args=[pending.raw],
                task_id=pending.task_id,
                countdown=countdown or None,
                retries=pending.retries + int(attempted),
                root_id=headers.get("root_id"),
                parent_id=headers.get("parent_id"),
                argsrepr=headers.get("argsrepr"),
                kwargsrepr=headers.get("kwargsrepr"),
                exchange=info.get("exchange"),
                routing_key=info.get("routing_key"),
                headers=self._headers(pending, alone=alone),
            )
        except Exception:  # the broker's own errors: the sweep finds it in the log
            logger.exception("could not publish %s again; the sweep will", pending.task_id)
        shown = RetryableError(f"{reason or 'waiting'}; next attempt in {countdown:.1f}s")
        self._event("task-retried", pending, exception=saferepr(shown), traceback="")
        self._ended(pending, "RETRY", shown)
        self._acknowledge(pending)

    @staticmethod
    def _headers(pending: Pending, *, alone: bool) -> dict[str, Any] | None:
        """The headers a message published again keeps: its first publish time (it may
        not be in the log yet, and an erasure since must still hold), and ``alone``."""
        headers: dict[str, Any] = {ALONE_HEADER: True} if alone else {}
        if pending.published_at is not None:
            headers[PUBLISHED_AT_HEADER] = pending.published_at
        return headers or None

    def _started(self, pending: Pending) -> None:
        """What Celery does as a task starts: the event, the worker state, the signal."""
        self._event("task-started", pending)
        pending.running = CoalescedRequest(self.task.name, pending)
        worker_state.task_accepted(pending.running)
        task_prerun.send(
            sender=self.task, task_id=pending.task_id, task=self.task, args=[pending.raw], kwargs={}
        )

    def _ended(self, pending: Pending, state: str, retval: Any) -> None:
        """What Celery does as a task ends, for one that was started."""
        running, pending.running = pending.running, None
        if running is None:
            return
        task_postrun.send(
            sender=self.task,
            task_id=pending.task_id,
            task=self.task,
            args=[pending.raw],
            kwargs={},
            retval=retval,
            state=state,
        )
        worker_state.task_ready(running, successful=state == "SUCCESS")

    def _acknowledge(self, pending: Pending) -> None:
        pending.acknowledged = True
        # On the consumer's thread, soon: Celery's ack promise, as a task's own ack is.
        pending.ack(logger, self.consumer.connection_errors)
        if pending.credit is not None:
            pending.credit.decrement_eventually()
            with self._lock:
                self._credit -= 1

    def _event(self, kind: str, pending: Pending, **fields: Any) -> None:
        eventer = self.consumer.event_dispatcher
        if eventer is not None and eventer.enabled and self.task.send_events:
            eventer.send(kind, uuid=pending.task_id, **fields)


def _envelope_argument(message: Message) -> dict[str, Any] | None:
    """The message's one envelope argument, or None for anything else."""
    try:
        decoded = message.decode()  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - any decoding error: Celery's path reports it
        return None
    if not isinstance(decoded, list | tuple) or len(decoded) != 3:
        return None
    args, kwargs, embed = decoded
    if not isinstance(embed, dict) or any(embed.get(k) for k in _WORKFLOW):
        return None
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return None
    given, raw = one_argument(args, kwargs, "envelope")
    return raw if given and isinstance(raw, dict) else None


def _ignore(_: Any) -> None:
    """The pool calls back with the job's result; the drain has none."""
