"""The collector paused while a process starts, and start-up's objects frozen after."""

import gc
from collections.abc import Iterator

import pytest

from delivery import collector


@pytest.fixture(autouse=True)
def _collector_as_it_was() -> Iterator[None]:
    # What the tests freeze stays frozen: a few containers, alive or not, for good.
    enabled = gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()


def test_paused_then_resumed_with_what_lived_frozen() -> None:
    gc.enable()
    frozen = gc.get_freeze_count()
    collector.pause()
    assert not gc.isenabled()
    made_at_start: list[list[int]] = [[] for _ in range(10)]  # noqa: F841 - tracked containers, alive
    collector.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + 10


def test_a_second_resume_freezes_what_is_new_and_leaves_collection_on() -> None:
    gc.enable()
    collector.pause()
    collector.resume()
    frozen = gc.get_freeze_count()
    made_later: list[list[int]] = [[] for _ in range(100)]  # noqa: F841 - tracked containers
    collector.resume()
    assert gc.isenabled() and gc.get_freeze_count() >= frozen + 100


def test_a_process_that_runs_without_collection_keeps_it_off() -> None:
    gc.disable()
    collector.pause()
    collector.resume()
    assert not gc.isenabled()
