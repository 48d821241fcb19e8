import threading
import time
from collections.abc import Sequence

import pytest

from delivery.engine.recorder import GroupCommit


def test_each_caller_gets_its_own_result_and_waits_for_its_write() -> None:
    groups: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int]:
        time.sleep(0.02)  # a commit takes a while: others hand theirs over meanwhile
        groups.append(list(items))
        return [i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit(write)
    results: dict[int, int] = {}

    start = threading.Barrier(16)

    def worker(i: int) -> None:
        start.wait()  # all at once, however slowly the threads were started
        results[i] = commit(i)
        # when commit returns, the item has been written
        assert any(i in group for group in groups)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: i * 10 for i in range(16)}
    assert sorted(i for group in groups for i in group) == list(range(16))
    assert len(groups) < 16  # items written together


def test_a_failed_write_fails_every_caller_of_its_group() -> None:
    def write(items: Sequence[int]) -> list[int]:
        raise RuntimeError("log away")

    commit: GroupCommit[int, int] = GroupCommit(write)
    with pytest.raises(RuntimeError, match="log away"):
        commit(1)
    # and the next caller writes again
    with pytest.raises(RuntimeError):
        commit(2)


def test_items_handed_over_together_are_written_in_one_group_in_order() -> None:
    groups: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int]:
        groups.append(list(items))
        return [i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit(write)
    assert commit.many([3, 1, 2]) == [30, 10, 20]
    assert commit.many([]) == []
    assert commit(4) == 40
    assert groups == [[3, 1, 2], [4]]


def test_a_failed_write_fails_all_the_items_handed_over_together() -> None:
    def write(items: Sequence[int]) -> list[int]:
        raise RuntimeError("log away")

    commit: GroupCommit[int, int] = GroupCommit(write)
    with pytest.raises(RuntimeError, match="log away"):
        commit.many([1, 2])
