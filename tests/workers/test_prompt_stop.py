"""A signal wakes the worker's event loop, which then reads Celery's shutdown flag."""

import os
import select
import signal
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from kombu.asynchronous import Hub

from workers.prompt_stop import WakeOnSignal


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.fixture
def hub() -> Iterator[Hub]:
    hub = Hub()
    yield hub
    hub.close()


@pytest.fixture
def started(hub: Hub) -> Iterator[WakeOnSignal]:
    consumer = SimpleNamespace(hub=hub)
    step = WakeOnSignal(consumer)
    step.start(consumer)
    assert step._pipe is not None
    yield step
    step.shutdown(consumer)


def test_a_signal_turns_the_event_loop_and_is_drained(hub: Hub, started: WakeOnSignal) -> None:
    assert started._pipe is not None
    read_end = started._pipe[0]
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        # The loop's only other business is an hour away: without the pipe, one turn of
        # it would block for that long.
        hub.call_later(3600, lambda: None)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert readable(read_end)
        next(hub.create_loop())
        assert not readable(read_end)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    started.shutdown(SimpleNamespace(hub=hub))
    assert started._pipe is None
    assert signal.set_wakeup_fd(-1) == -1  # given back


def test_started_again_after_a_reconnection_it_watches_the_new_loop(
    hub: Hub, started: WakeOnSignal
) -> None:
    pipe = started._pipe
    assert pipe is not None
    hub.reset()  # what Celery does to the loop when the connection is lost
    started.start(SimpleNamespace(hub=hub))
    assert started._pipe == pipe
    assert pipe[0] in hub.readers


def test_without_an_event_loop_or_off_the_main_thread_it_stands_aside(hub: Hub) -> None:
    import threading

    without_loop = SimpleNamespace(hub=None)
    step = WakeOnSignal(without_loop)
    step.start(without_loop)
    assert step._pipe is None

    consumer = SimpleNamespace(hub=hub)
    off_main = WakeOnSignal(consumer)
    thread = threading.Thread(target=off_main.start, args=(consumer,))
    thread.start()
    thread.join()
    assert off_main._pipe is None
    assert not hub.readers


def test_a_forked_child_writes_its_signals_nowhere(started: WakeOnSignal) -> None:
    assert started._pipe is not None
    read_end = started._pipe[0]
    child = os.fork()
    if child == 0:  # a prefork pool's process: its signals must not reach the pipe
        os._exit(0 if signal.set_wakeup_fd(-1) == -1 and started._pipe is None else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not readable(read_end)
