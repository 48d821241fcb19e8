"""Task events for Flower, published in batches rather than after every task.

Celery buffers a worker's task events (received, started, succeeded, …) and publishes what
it holds as one ``task.multi`` message, but it asks for that flush on the event loop's next
turn after *every* event: at a few hundred tasks a second that is nearly one publish, with
its encoding and its broker round trip on the consumer's thread, per event. Measured on the
one-task-per-delivery path (bench section 1), that was a fifth of the worker's CPU time.

Here the flush runs at most every ``FLUSH_INTERVAL`` seconds, so Flower sees a task's
events up to that much later, and this step flushes what is left when the consumer stops.

Every flush runs on the event loop's thread. Celery would also flush from whichever thread
sent the event that filled its buffer (24 events), and worker threads send events; on
RabbitMQ, with publisher confirms, a worker thread waiting for its confirm on the events'
connection hung for good now and then (seen under py-spy: every thread waiting for the
dispatcher's lock, the one holding it waiting for a confirm that never came), and the
worker stopped taking messages.
"""

import logging
from typing import Any

from celery import bootsteps

logger = logging.getLogger(__name__)

#: Longest an event waits before it is published. Flower's view lags by this at most; the
#: deliveries themselves are not delayed at all.
FLUSH_INTERVAL = 0.05
#: Celery's buffer limit, raised so that only the timed flush publishes (a few hundred
#: events a second make some dozens per interval).
NO_FLUSH_ON_SEND = 1_000_000


class BatchedTaskEvents(bootsteps.StartStopStep):  # type: ignore[misc]
    """Replace Celery's flush-on-the-next-turn with one timed flush per interval."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._armed = False
        self._dispatcher: Any = None

    def start(self, c: Any) -> None:
        # Runs again after every reconnection, when Celery has built a new dispatcher.
        dispatcher, hub = c.event_dispatcher, c.hub
        if dispatcher is None or hub is None:
            return
        self._dispatcher = dispatcher
        self._armed = False
        dispatcher.buffer_limit = NO_FLUSH_ON_SEND

        def flush() -> None:
            # Disarm before flushing: an event buffered during the flush arms the next one.
            self._armed = False
            dispatcher.flush()

        def arm() -> None:  # on the event loop's thread: its timer is not thread-safe
            hub.call_later(FLUSH_INTERVAL, flush)

        def on_buffered() -> None:  # on any thread that sent an event
            if not self._armed:
                self._armed = True
                hub.call_soon(arm)

        dispatcher.on_send_buffered = on_buffered

    def stop(self, c: Any) -> None:
        self._flush_now()

    def shutdown(self, c: Any) -> None:
        self._flush_now()

    def _flush_now(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is None:
            return
        try:
            dispatcher.flush()
        except Exception as exc:  # noqa: BLE001 - stopping must go on; events are best effort
            logger.warning("could not publish the last task events (%s)", type(exc).__name__)
