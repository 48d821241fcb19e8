"""Group commit: a thread's ended attempts are recorded before it sends much more, in one
transaction with whatever other threads finished meanwhile.

A batch that recorded its attempts only at its end re-sent all of them after a crash; one
transaction per attempt costs a commit per delivery, and on SQLite the threads of a process
queue for its one writer. Here a thread hands its ended attempts over and waits until they
are committed; the first waiting thread writes everything handed over so far in one
transaction, while the others wait for it. So a crash re-sends only the few a thread had
not handed over yet (``delivery.engine.service.RECORD_EVERY``), and under load a commit
records many attempts.
"""

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Ticket(Generic[T, R]):
    __slots__ = ("error", "item", "result", "written")

    def __init__(self, item: T) -> None:
        self.item = item
        self.written = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Calls ``write`` with every item handed over since its last call, one caller at a
    time; each caller gets its own item's result (or the write's exception)."""

    def __init__(self, write: Callable[[Sequence[T]], list[R]]) -> None:
        self._write = write
        self._condition = threading.Condition()
        self._pending: list[_Ticket[T, R]] = []
        self._writing = False

    def __call__(self, item: T) -> R:
        return self.many([item])[0]

    def many(self, items: Sequence[T]) -> list[R]:
        """Each item's result, all written in one call of ``write`` (with others').

        Raises:
            BaseException: what that call raised.
        """
        tickets: list[_Ticket[T, R]] = [_Ticket(item) for item in items]
        if not tickets:
            return []
        last = tickets[-1]  # a group takes everything pending: all of these, or none
        with self._condition:
            self._pending.extend(tickets)
            while not last.written:
                if self._writing:
                    self._condition.wait()
                    continue
                self._writing = True
                group, self._pending = self._pending, []
                self._condition.release()
                try:
                    self._write_group(group)
                finally:
                    self._condition.acquire()
                    self._writing = False
                    self._condition.notify_all()
        if last.error is not None:
            raise last.error
        return [ticket.result for ticket in tickets]  # type: ignore[misc]

    def _write_group(self, group: list[_Ticket[T, R]]) -> None:
        try:
            results = self._write([t.item for t in group])
        except BaseException as exc:  # noqa: BLE001 - each waiter of the group raises it
            for ticket in group:
                ticket.error, ticket.written = exc, True
            return
        for ticket, result in zip(group, results, strict=True):
            ticket.result, ticket.written = result, True
