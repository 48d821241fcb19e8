"""The warm-up: what a fresh worker would otherwise do on its first deliveries, done before
it takes its first message.

A worker that has just started paid, on its first delivery, for compiling the log's SQL
statements (SQLAlchemy compiles each statement shape once per engine and caches it: about
half of a 100 ms first delivery), for building the channel's dispatcher instance (reading
and decrypting the channel, importing the dispatcher's module and its client library) and
for opening the log's first connections; the issue measured a p99 of 122 ms over a fresh
worker's first 2 s against 6 ms for a bare Celery worker (bench section 10).

So before the consumer starts, the worker

* imports what the first delivery would import lazily;
* builds the dispatcher instance of each channel in the log (the cache the deliveries use);
* asks the gates about a made-up recipient on each of those channels, as a dry run (which
  reserves nothing: no rate-limit slot, no breaker probe), so their first look-ups
  (suppression, preferences) are compiled and their caches filled;
* rehearses a delivery through the log: claims, records and moves on a made-up delivery
  (one alone and a batch of two, the shapes the tasks use) in one transaction that is
  rolled back, so the statements are compiled into the engine's cache and the pool holds
  an open connection, and nothing is left in the log. The made-up delivery is a test one
  (no provider is ever called) to a channel nobody has, resolved by a stand-in that knows
  no channel: it touches no real channel, rate limit or breaker;
* takes the sweeper's first turns (in the worker's main process): the sweep, digests,
  receipts and the daily purge each compile their statements on their first turn, some
  130 ms in all, which a fresh worker's first deliveries otherwise waited out about 2 s
  after it was ready.

It is bounded in time (``BUDGET``) and never fails the worker's start: a log that is not
there yet, or any other error, is logged at INFO and the worker starts anyway, to warm up
on its first deliveries as before.
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, cast

from celery import bootsteps

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import Connection, Engine

    from delivery.engine.assembly import Assembly
    from delivery.engine.instances import DispatcherCache

logger = logging.getLogger(__name__)

#: Longest the worker's start waits for the warm-up; past it the worker takes messages and
#: the warm-up finishes (or gives up) in the background.
BUDGET = 3.0
#: Channels whose dispatcher instances are built ahead; a site with more warms the rest on
#: their first deliveries.
MAX_CHANNELS = 100
#: Modules the first delivery imports lazily: costs paid before the first message instead.
LAZY_IMPORTS = (
    "delivery.dispatchers.webhook",
    "delivery.tracing",
    "urllib3",
    "requests",
)

Step = Callable[["Assembly"], None]


class WarmUp(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: the warm-up before the consumer takes its first message.

    Celery starts the consumer's steps in order and the event loop last; the loop starts
    consuming and then reports the worker ready (``worker_ready``, where start-up objects
    are frozen out of the collector's sight, and the first ping reply). So a warm-up here
    is done before the first message is taken, and is frozen with the rest.
    """

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._done = False

    def start(self, c: Any) -> None:
        # Runs again after every reconnection to the broker: once is enough.
        if self._done:
            return
        self._done = True
        if _forks_children(c):
            return  # each child warms up itself (worker_process_init)
        from workers.tasks import get_assembly

        try:
            assembly = get_assembly()
        except Exception as exc:  # noqa: BLE001  # a warm-up must never stop the worker
            logger.info("warm-up skipped: the engine could not be assembled (%s)", exc)
            return
        # The sweeper runs in this process (never in a prefork child): its first look too.
        warm_up(assembly, steps=(*STEPS, first_turns(getattr(c, "hostname", None))))


def _forks_children(c: Any) -> bool:
    from celery.concurrency.prefork import TaskPool

    return isinstance(getattr(c, "pool", None), TaskPool)


def warm_up(
    assembly: "Assembly", *, budget: float = BUDGET, steps: "Sequence[Step] | None" = None
) -> bool:
    """Run the warm-up's ``steps`` (``STEPS``), waiting at most ``budget`` seconds for them.

    Returns whether it finished in time. Never raises: the worker starts anyway.
    """
    started = time.monotonic()
    thread = threading.Thread(
        target=_run_steps,
        args=(assembly, started + budget, STEPS if steps is None else steps),
        name="delivery-warm-up",
        daemon=True,
    )
    thread.start()
    thread.join(budget)
    if thread.is_alive():
        logger.info("warm-up unfinished after %.1f s; taking messages anyway", budget)
        return False
    logger.debug("warm-up done in %.0f ms", (time.monotonic() - started) * 1000)
    return True


def _run_steps(assembly: "Assembly", deadline: float, steps: "Sequence[Step]") -> None:
    # The rehearsal's made-up deliveries would be logged as failed: not worth a line.
    quiet = _ThisThreadOnly(logging.WARNING)
    service_logger = logging.getLogger("delivery.engine.service")
    service_logger.addFilter(quiet)
    try:
        _run(assembly, deadline, steps)
    finally:
        service_logger.removeFilter(quiet)


def _run(assembly: "Assembly", deadline: float, steps: "Sequence[Step]") -> None:
    for step in steps:
        if time.monotonic() > deadline:
            return
        clock = time.perf_counter()
        try:
            step(assembly)
        except Exception as exc:  # a warm-up must never stop the worker
            logger.info("warm-up: %s skipped (%s: %s)", step.__name__, type(exc).__name__, exc)
            logger.debug("warm-up: %s failed", step.__name__, exc_info=True)
        else:
            logger.debug(
                "warm-up: %s in %.1f ms", step.__name__, (time.perf_counter() - clock) * 1000
            )


def import_lazy_modules(_: "Assembly") -> None:
    import importlib

    for name in LAZY_IMPORTS:
        importlib.import_module(name)


def build_dispatchers(assembly: "Assembly") -> None:
    """Each channel's dispatcher instance, as its first delivery would build it."""
    for summary in assembly.channels.summaries()[:MAX_CHANNELS]:
        try:
            assembly.dispatchers.get(str(summary["name"]))
        except Exception as exc:  # noqa: BLE001  # its deliveries will record the reason
            logger.debug("warm-up: channel %s not built: %s", summary["name"], exc)


def ask_gates(assembly: "Assembly") -> None:
    """The gates' dry run (``claim=None``: nothing reserved) for a made-up recipient on
    every channel whose dispatcher is built, in one pass as a batch would ask them."""
    from delivery.clock import utcnow
    from delivery.engine.gates import Pass, Route, first_verdict
    from schemas import Envelope, Payload

    routes = []
    for summary in assembly.channels.summaries()[:MAX_CHANNELS]:
        name = str(summary["name"])
        try:
            channel, dispatcher = assembly.dispatchers.get(name)
        except Exception:  # noqa: BLE001  # not built above either: nothing to ask
            continue
        envelope = Envelope(
            id=f"warm-up-{uuid.uuid4().hex}",
            channel=name,
            address="warm-up",
            payload=Payload(message="warm-up"),
            test=True,
        )
        routes.append(Route(envelope, channel, dispatcher, "warm-up"))
    look = Pass(routes, utcnow())
    for route in routes:
        first_verdict(assembly.service.gates, route, None, look)


def rehearse_delivery(assembly: "Assembly") -> None:
    """A made-up delivery claimed, attempted and recorded in a transaction rolled back."""
    from delivery.engine.service import DeliveryService
    from delivery.log import DeliveryLog
    from schemas import Envelope, Payload

    engine = assembly.log.engine
    with engine.connect() as connection, connection.begin() as outer:
        log = DeliveryLog(cast("Engine", _Rehearsal(engine, connection)))
        service = DeliveryService(assembly.settings, log, cast("DispatcherCache", _NoChannels()))
        try:
            channel = f"warm-up-{uuid.uuid4().hex[:16]}"

            def envelope() -> Envelope:
                return Envelope(
                    id=f"warm-up-{uuid.uuid4().hex}",
                    channel=channel,
                    address="warm-up",
                    payload=Payload(message="warm-up"),
                    test=True,
                )

            # The shapes the tasks execute: a claim alone (delivery.deliver), a batch of
            # one and a batch of several (the coalescer, delivery.deliver_batch); each
            # compiles its own statements (one row, or many), the erasure's screen
            # included (asked for messages with a publish time).
            now = time.time()
            service.deliver(envelope(), published_at=now)
            service.deliver_many([envelope()], published_at=now)
            service.deliver_many([envelope(), envelope()], published_at=[now, now])
        finally:
            service.close()
            outer.rollback()


class _Rehearsal:
    """Stands in for the log's engine: each write transaction the log begins is a savepoint
    inside the rehearsal's one transaction, which is rolled back at the end. Its connection
    is the real engine's, so what the statements compile to lands in the engine's cache."""

    def __init__(self, engine: "Engine", connection: "Connection") -> None:
        self._engine = engine
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @contextmanager
    def begin(self) -> Iterator["Connection"]:
        with self._connection.begin_nested():
            yield self._connection

    def connect(self) -> NoReturn:
        # The log's hot path writes only through begin(); anything else would escape the
        # rolled-back transaction.
        raise RuntimeError("the warm-up's rehearsal only writes through begin()")


class _NoChannels:
    """A dispatcher cache that knows no channel: the rehearsal's delivery fails to route
    without reading a channel, so no real channel is touched."""

    def get(self, name: str) -> NoReturn:
        from delivery.errors import UnknownChannel

        raise UnknownChannel(f"{name!r} (the warm-up's made-up channel)")

    def close(self) -> None:
        pass


class _ThisThreadOnly(logging.Filter):
    """Drops this thread's records below ``level``; other threads' pass untouched."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread or record.levelno >= self.level


def first_turns(hostname: str | None) -> Step:
    """The step that takes the sweeper's first turns (``workers.sweeper.take_first_turns``),
    for the worker's main process."""

    def take_first_turns(_: "Assembly") -> None:
        from workers import sweeper

        sweeper.take_first_turns(hostname)

    return take_first_turns


#: In order: imports first, so the later steps do not pay for them under the budget.
STEPS: tuple[Step, ...] = (import_lazy_modules, build_dispatchers, ask_gates, rehearse_delivery)
