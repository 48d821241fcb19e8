"""Group commit: each thread's attempt is recorded before it sends again, in one
transaction with whatever other threads finished meanwhile.

A batch that recorded its attempts only at its end re-sent all of them after a crash; one
transaction per attempt costs a commit per delivery, and on SQLite the threads of a process
queue for its one writer. Here a thread hands its ended attempt over and waits until it is
committed; the first waiting thread writes everything handed over so far in one
transaction, while the others wait for it. So a crash re-sends at most one delivery per
thread (the one it was sending), and under load a commit records many attempts.
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
        ticket: _Ticket[T, R] = _Ticket(item)
        with self._condition:
            self._pending.append(ticket)
            while not ticket.written:
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
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _write_group(self, group: list[_Ticket[T, R]]) -> None:
        try:
            results = self._write([t.item for t in group])
        except BaseException as exc:  # noqa: BLE001 - each waiter of the group raises it
            for ticket in group:
                ticket.error, ticket.written = exc, True
            return
        for ticket, result in zip(group, results, strict=True):
            ticket.result, ticket.written = result, True
