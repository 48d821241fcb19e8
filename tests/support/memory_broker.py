"""The task messages waiting on the in-memory broker (``memory://``, the unit tests'
broker): read back, as a worker would take them, and taken off the queue."""

from dataclasses import dataclass
from typing import Any

from kombu.connection import Connection


@dataclass(frozen=True, slots=True)
class Waiting:
    """One task message: its task's name, its arguments and its headers."""

    task: str
    args: list[Any]
    headers: dict[str, Any]

    @property
    def envelopes(self) -> list[Any]:
        """The envelopes it carries: a batch's several, a single delivery's one."""
        return list(self.args[0]) if self.task == "delivery.deliver_batch" else list(self.args)


def take_waiting(queue: str = "delivery", *, timeout: float = 0.2) -> list[Waiting]:
    """Every message waiting on ``queue``, oldest first, acknowledged (the queue is left
    empty); ``timeout``: how long to wait for the next before deciding there is none."""
    found: list[Waiting] = []
    with Connection("memory://") as connection, connection.SimpleQueue(queue) as waiting:
        while True:
            try:
                message = waiting.get(timeout=timeout)
            except waiting.Empty:
                return found
            args, _, _ = message.decode()
            found.append(Waiting(message.headers["task"], list(args), dict(message.headers)))
            message.ack()
