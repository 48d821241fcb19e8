"""Operational events: the site announcing its own trouble through the subscriptions.

* ``delivery.failed``: a delivery gave up (its final failure).
* ``channel.paused``: a channel's circuit breaker opened, or a person paused it.
* ``channel.resumed``: the breaker closed again, or a person resumed the channel.
* ``channel.failing_over``: the breaker opened on a channel with a fallback: its
  deliveries move there until it closes.

They are fanned out like any event (``delivery subscriptions add delivery.failed ops-slack
'#oncall'``), and follow four rules:

* **Once per occurrence, site-wide.** Each is emitted by the one worker whose transaction
  made it (the breaker's writes are conditional: ``Breaker.bookkeeping``), and its id is
  derived from what it is about (the delivery's id; the channel and the breaker's time), so
  a replay fans out nothing twice, as ``notify``'s ids do.
* **After the commit, off the delivery path.** Nothing is emitted from inside a recording
  transaction. Whether anyone subscribes is read once per ``RECHECK_SECONDS`` (one query,
  then a dictionary look-up): with no subscription, emitting costs nothing more. Events are
  published by a background thread from a bounded queue, so a slow or unreachable broker
  never holds up a delivery; an error is logged, never raised. The price: an event still
  queued when the process dies is lost (the log keeps the facts; ``delivery log`` shows
  them).
* **No loops.** A delivery made by an operational event that fails is not announced with
  another ``delivery.failed`` (it would fail the same way on the same channel, forever),
  and a ``channel.paused`` or ``channel.failing_over`` about a channel is not sent through
  that channel unless it has a fallback (it would wait behind the very breaker it reports,
  and its own failures would feed that breaker).
* **No secrets.** Addresses are masked (``delivery.redaction.mask_address``), in the error
  too, and known channel secrets are redacted: ``delivery status ID`` shows the rest to
  whoever may see it.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from delivery.clock import utcnow
from delivery.engine.breaker import BreakerChange
from delivery.engine.channels import Channel
from delivery.log.database import read_only
from delivery.notifications.tables import SubscriptionRow
from delivery.producer.events import build_event
from delivery.producer.publisher import get_publisher
from delivery.redaction import mask_address, redactor
from schemas import Envelope
from schemas.events import Event

if TYPE_CHECKING:  # the engine's assembly imports far more than the workers need here
    from delivery.engine.assembly import Assembly

logger = logging.getLogger(__name__)

DELIVERY_FAILED = "delivery.failed"
CHANNEL_PAUSED = "channel.paused"
CHANNEL_RESUMED = "channel.resumed"
CHANNEL_FAILING_OVER = "channel.failing_over"
#: Every operational event, in the order the docs list them.
OPERATIONAL_EVENTS = (DELIVERY_FAILED, CHANNEL_PAUSED, CHANNEL_RESUMED, CHANNEL_FAILING_OVER)
#: Events about a channel that are not sent through that channel (see the module's rules).
_HELD_BY_THEMSELVES = frozenset({CHANNEL_PAUSED, CHANNEL_FAILING_OVER})
#: How long the list of operational subscriptions is trusted: a new subscription starts
#: receiving within this many seconds.
RECHECK_SECONDS = 10.0
#: Events waiting to be published; beyond this they are dropped (and logged), so that a
#: broker outage during a mass failure cannot grow a worker's memory without bound.
QUEUE_SIZE = 10_000
#: Longest an error text carried in an event.
MAX_ERROR = 1000


class Subscribers:
    """Which subscriptions listen to operational events, read at most once per
    ``recheck`` seconds (the preferences' empty-table cache, for the same reason: the
    answer is almost always "nobody", and asking costs a query)."""

    def __init__(self, engine: Engine, *, recheck: float = RECHECK_SECONDS) -> None:
        self._engine = read_only(engine)
        self._recheck = recheck
        self._lock = threading.Lock()
        self._until = 0.0
        self._by_event: dict[str, frozenset[str]] = {}
        self._ids: frozenset[str] = frozenset()

    def wanted(self, event: str) -> bool:
        """Whether any active subscription listens to ``event``."""
        self._refresh()
        return bool(self._by_event.get(event))

    def operational(self, subscription_id: str | None) -> bool:
        """Whether a delivery of this subscription was made by an operational event."""
        if subscription_id is None:
            return False
        self._refresh()
        return subscription_id in self._ids

    def _refresh(self) -> None:
        now = time.monotonic()
        if now < self._until:
            return
        with self._lock:
            if now < self._until:
                return  # another thread read it meanwhile
            table = SubscriptionRow
            try:
                with self._engine.connect() as connection:
                    rows = connection.execute(
                        select(table.event, table.id).where(
                            table.event.in_(OPERATIONAL_EVENTS), table.paused.is_(False)
                        )
                    ).all()
            except Exception:  # whatever the database raised: emit nothing
                logger.warning("could not read the operational subscriptions", exc_info=True)
                rows = []
            by_event: dict[str, set[str]] = {}
            for event, subscription_id in rows:
                by_event.setdefault(event, set()).add(subscription_id)
            self._by_event = {event: frozenset(ids) for event, ids in by_event.items()}
            self._ids = frozenset(i for ids in by_event.values() for i in ids)
            self._until = now + self._recheck


class Emitter:
    """Publishes events from a background thread, so that the delivery path only puts
    them in a queue. ``publish`` is ``Publisher.publish_event``."""

    def __init__(self, publish: Callable[[Event], None], *, size: int = QUEUE_SIZE) -> None:
        self._publish = publish
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        """Queue ``event`` for publishing; never blocks, never raises."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            logger.warning("operational event %s (%s) dropped: queue full", event.name, event.id)
            return
        self._start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued is published (or failed); False on a timeout."""
        done = self._queue.all_tasks_done
        with done:
            return done.wait_for(lambda: self._queue.unfinished_tasks == 0, timeout=timeout)

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # A daemon: a process that exits is not held up by the broker.
                self._thread = threading.Thread(
                    target=self._run, name="operational-events", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                self._publish(event)
                logger.info("operational event %s published (%s)", event.name, event.id)
            except Exception:  # publishing must never stop the thread
                logger.warning(
                    "could not publish operational event %s (%s)",
                    event.name,
                    event.id,
                    exc_info=True,
                )
            finally:
                self._queue.task_done()


class OperationalEvents:
    """What the worker calls after recording: decides whether an event is due, builds it,
    and hands it to the emitter. Every method is safe to call on the delivery path: it
    never raises, and without a subscription it costs a cached look-up."""

    def __init__(self, subscribers: Subscribers, emitter: Emitter) -> None:
        self.subscribers = subscribers
        self.emitter = emitter

    def delivery_failed(self, envelope: Envelope, *, error: str | None, attempts: int) -> None:
        """A delivery gave up: announce it once (its id names the event)."""
        try:
            if envelope.test or not self.subscribers.wanted(DELIVERY_FAILED):
                return
            if self.subscribers.operational(envelope.subscription):
                # Made by an operational event: announcing its failure would make another
                # delivery on the same (failing) channel, and so on for ever.
                logger.info("delivery %s of an operational event failed", envelope.id)
                return
            self._emit(
                DELIVERY_FAILED,
                failure_context(envelope, error=error, attempts=attempts),
                key=envelope.id,
            )
        except Exception:  # never let announcing fail the delivery
            logger.exception("could not announce the failure of delivery %s", envelope.id)

    def breakers_changed(
        self, changes: Sequence[BreakerChange], channels: dict[str, Channel]
    ) -> None:
        """Breakers a committed transaction opened or closed (``DeliveryService``)."""
        for change in changes:
            try:
                self._breaker_changed(change, channels.get(change.channel))
            except Exception:  # never let announcing fail the delivery
                logger.exception("could not announce the breaker of %s", change.channel)

    def channel_paused_by_hand(self, channel: str, fallback: str | None, *, paused: bool) -> None:
        """A person paused or resumed ``channel`` (``delivery channels pause/resume``)."""
        name = CHANNEL_PAUSED if paused else CHANNEL_RESUMED
        try:
            if not self.subscribers.wanted(name):
                return
            now = utcnow()
            reason = "paused by a person" if paused else "resumed by a person"
            context = channel_context(channel, reason, fallback, now)
            self._emit(name, context, key=f"{channel}|by-hand|{now.isoformat()}")
        except Exception:  # the command has done its work already
            logger.exception("could not announce that %s was paused or resumed", channel)

    def _breaker_changed(self, change: BreakerChange, channel: Channel | None) -> None:
        fallback = channel.fallback if channel is not None else None
        if not change.opened:
            if self.subscribers.wanted(CHANNEL_RESUMED):
                reason = "the circuit breaker closed: a delivery succeeded"
                context = channel_context(change.channel, reason, fallback, change.at)
                self._emit(CHANNEL_RESUMED, context, key=_breaker_key(change))
            return
        until = change.until.isoformat() if change.until else None
        if self.subscribers.wanted(CHANNEL_PAUSED):
            reason = "the circuit breaker opened: the provider failed repeatedly"
            context = {**channel_context(change.channel, reason, fallback, change.at)}
            context["probe_at"] = until
            self._emit(CHANNEL_PAUSED, context, key=_breaker_key(change))
        usable = fallback is not None and channel is not None and not channel.paused
        if usable and self.subscribers.wanted(CHANNEL_FAILING_OVER):
            reason = f"the circuit breaker opened: its deliveries move to {fallback}"
            context = {**channel_context(change.channel, reason, fallback, change.at)}
            context["probe_at"] = until
            self._emit(CHANNEL_FAILING_OVER, context, key=_breaker_key(change))

    def _emit(self, name: str, context: dict[str, Any], *, key: str) -> None:
        # The id is uuid5(name, key), as notify's with an idempotency key: the same
        # occurrence announced twice (a replay, a lost lease) fans out once.
        self.emitter.emit(build_event(name, context, idempotency_key=key))


def failure_context(envelope: Envelope, *, error: str | None, attempts: int) -> dict[str, Any]:
    """What templates of ``delivery.failed`` see. The address is masked: the operator
    learns which delivery (``delivery status ID`` shows the rest to those who may see
    it); a Slack channel is no place for recipients' addresses."""
    masked = mask_address(envelope.address)
    text = error or "failed"
    if envelope.address:
        text = text.replace(envelope.address, masked)
    return {
        "delivery_id": envelope.id,
        "channel": envelope.channel,
        "address": masked,
        "error": redactor.redact(text)[:MAX_ERROR],
        "attempts": attempts,
        "category": envelope.category,
        "failed_at": utcnow().isoformat(),
    }


def channel_context(
    channel: str, reason: str, fallback: str | None, since: datetime
) -> dict[str, Any]:
    """What templates of the ``channel.*`` events see (no config: it holds the secrets)."""
    return {
        "channel": channel,
        "reason": reason,
        "fallback": fallback,
        "since": since.isoformat(),
    }


def held_by_itself(event: str, context: Mapping[str, Any], channel: str) -> str | None:
    """Why an operational event is not sent to a subscription on ``channel`` (None: it
    is): a pause announced through the paused channel would wait behind its own breaker,
    and fail into it. With a fallback it goes there, so it is sent."""
    if event not in _HELD_BY_THEMSELVES or context.get("channel") != channel:
        return None
    if context.get("fallback"):
        return None
    return f"{event} about {channel} is not sent through {channel} itself"


def _breaker_key(change: BreakerChange) -> str:
    # The time the one transaction that made the change wrote: unique to this change.
    when = change.until if change.opened and change.until else change.at
    return f"{change.channel}|{'open' if change.opened else 'closed'}|{when.isoformat()}"


def operational_events(
    engine: Engine, publish: Callable[[Event], None], *, recheck: float = RECHECK_SECONDS
) -> OperationalEvents:
    """The operational events of a process whose log is on ``engine``, published with
    ``publish`` (``Publisher.publish_event``)."""
    return OperationalEvents(Subscribers(engine, recheck=recheck), Emitter(publish))


def pause_by_hand(assembly: "Assembly", name: str, *, paused: bool) -> bool:
    """Pause or resume a channel for a person (``delivery channels pause/resume``), and
    announce it if that changed anything: resuming a channel that was not held, or pausing
    one already paused, says nothing. False if there is no such channel.

    The announcement waits for the broker at most ``DELIVERY_PUBLISH_TIMEOUT``: the
    command's own work is done by then, whatever the broker says."""
    store = assembly.channels
    before = next((c for c in store.summaries() if c["name"] == name), None)
    if not store.set_paused(name, paused):
        return False
    if before is None:
        return True
    if paused:
        changed = not before["paused"]
    else:  # resuming also closes the breaker: held either way
        changed = bool(before["paused"]) or before["breaker_open_until"] is not None
    if not changed:
        return True
    events = operational_events(assembly.log.engine, get_publisher().publish_event)
    events.channel_paused_by_hand(name, before["fallback"], paused=paused)
    events.emitter.flush(timeout=assembly.settings.publish_timeout + 1)
    return True
