"""The dispatcher cache: one instance per channel, rebuilt once when the channel changes,
and an instance replaced while a thread may still be sending with it closed only later."""

import threading
import time
from importlib.metadata import EntryPoint
from typing import Any, ClassVar

import pytest

from delivery.dispatchers.console import ConsoleDispatcher
from delivery.dispatchers.registry import GROUP, DispatcherRegistry
from delivery.engine.channels import ChannelStore
from delivery.engine.crypto import SecretBox
from delivery.engine.instances import DispatcherCache
from delivery.log import DeliveryLog
from schemas import Settings


class Counted(ConsoleDispatcher):
    """The console dispatcher, counting how often it is built and closed, and slow to build
    (an SDK client's set-up), which is when threads meet."""

    built: ClassVar[list["Counted"]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.05)
        super().__init__(*args, **kwargs)
        self.closes = 0
        Counted.built.append(self)

    def close(self) -> None:
        self.closes += 1
        super().close()


REGISTRY = DispatcherRegistry([EntryPoint("console", f"{__name__}:Counted", GROUP)])


@pytest.fixture
def store(settings: Settings) -> ChannelStore:
    Counted.built = []
    engine = DeliveryLog.from_settings(settings).engine
    store = ChannelStore(engine, REGISTRY, lambda: SecretBox.from_settings(settings))
    store.add("shout", "console", {})
    return store


def _all_at_once(cache: DispatcherCache, threads: int = 8) -> list[Any]:
    start = threading.Barrier(threads)
    got: list[Any] = []

    def get() -> None:
        start.wait()
        got.append(cache.get("shout")[1])

    workers = [threading.Thread(target=get) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return got


def test_threads_that_find_the_channel_changed_build_one_new_instance(store: ChannelStore) -> None:
    cache = DispatcherCache(store, REGISTRY, ttl=0)
    cache.get("shout")
    [old] = Counted.built
    # When the channel changes and eight threads look at once
    time.sleep(0.01)
    store.add("shout", "console", {}, replace=True)
    got = _all_at_once(cache)
    # Then one new instance is built, and every thread gets it
    assert len(Counted.built) == 2, Counted.built
    new = Counted.built[1]
    assert got == [new] * 8
    # And the old one is not closed under a thread that may still be sending with it
    assert old.closes == 0
    # Until the cache closes: each instance exactly once
    cache.close()
    assert [d.closes for d in Counted.built] == [1, 1]


def test_a_replaced_instance_is_closed_once_no_send_can_still_use_it(
    store: ChannelStore,
) -> None:
    cache = DispatcherCache(store, REGISTRY, ttl=0, retire_after=0.2)
    cache.get("shout")
    [old] = Counted.built
    time.sleep(0.01)
    store.add("shout", "console", {}, replace=True)
    cache.get("shout")
    assert old.closes == 0
    time.sleep(0.3)
    cache.get("shout")
    assert old.closes == 1
    cache.close()
    assert [d.closes for d in Counted.built] == [1, 1]


def test_an_unchanged_channel_keeps_its_instance(store: ChannelStore) -> None:
    cache = DispatcherCache(store, REGISTRY, ttl=0)
    assert len({id(d) for d in _all_at_once(cache)}) == 1
    assert len(Counted.built) == 1
