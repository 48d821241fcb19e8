"""A worker told to stop (SIGTERM, SIGINT, SIGQUIT) starts stopping at once.

Celery's signal handlers only set a flag, which the consumer's loop reads between turns.
The event loop (Redis, RabbitMQ) sleeps until a socket or its timer wakes it, and an idle
RabbitMQ worker's timer wakes it every two seconds or so: a SIGTERM took that long to be
noticed, which a deploy or a replacement of a stuck worker waited for. Here a signal
writes to a pipe the event loop watches (``signal.set_wakeup_fd``), so the loop turns
and reads the flag at once.

The embedded broker's worker has no event loop; its transport looks whether the worker is
stopping every quarter of a second of a wait instead
(``delivery.transport.embedded.LONGEST_WAIT``).
"""

import logging
import os
import signal
from typing import Any

from celery import bootsteps

logger = logging.getLogger(__name__)


class WakeOnSignal(bootsteps.StartStopStep):  # type: ignore[misc]
    """Wake the consumer's event loop whenever the process receives a signal."""

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._pipe: tuple[int, int] | None = None
        self._previous_wakeup_fd = -1

    def start(self, c: Any) -> None:
        # Runs again after every reconnection, when Celery has reset the event loop (and
        # with it the readers it watched).
        hub = getattr(c, "hub", None)
        if hub is None:
            return
        if self._pipe is None:
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                # Only the main thread may set it: a worker run in a thread (tests) goes
                # without, and stops as Celery alone would.
                self._previous_wakeup_fd = signal.set_wakeup_fd(
                    write_end, warn_on_full_buffer=False
                )
            except ValueError:
                os.close(read_end)
                os.close(write_end)
                logger.debug("not in the main thread: signals will not wake the event loop")
                return
            self._pipe = (read_end, write_end)
            os.register_at_fork(after_in_child=self._forget)
        read_end = self._pipe[0]
        hub.add_reader(read_end, _drain, read_end)

    def _forget(self) -> None:
        """In a forked child (a prefork pool's process): the pipe is the parent's, and a
        child that closed the descriptor would have its signals written into whatever file
        took its number next."""
        self._close(wakeup_fd=-1)

    def shutdown(self, c: Any) -> None:
        hub = getattr(c, "hub", None)
        if hub is not None and self._pipe is not None:
            hub.remove_reader(self._pipe[0])
        self._close(wakeup_fd=self._previous_wakeup_fd)

    def _close(self, *, wakeup_fd: int) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        signal.set_wakeup_fd(wakeup_fd)
        for end in pipe:
            os.close(end)


def _drain(read_end: int) -> None:
    """Empty the pipe: its bytes (the signals' numbers) have done their work by waking
    the loop, which now reads Celery's flag."""
    try:
        while os.read(read_end, 512):
            pass
    except BlockingIOError:
        pass
