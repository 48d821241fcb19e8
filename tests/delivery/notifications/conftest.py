"""What the notifications tests share: an engine with a console channel, its notifier, and
the envelopes the in-memory broker holds."""

from typing import Any

import pytest
from kombu.connection import Connection

from delivery.engine.assembly import Assembly, assemble
from delivery.notifications import Notifier
from schemas import Settings


def drain_envelopes() -> list[dict[str, Any]]:
    """Every envelope waiting in the in-memory broker, single or batched."""
    envelopes: list[dict[str, Any]] = []
    with Connection("memory://") as conn, conn.SimpleQueue("delivery") as queue:
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                return envelopes
            args, _, _ = message.decode()
            task = message.headers["task"]
            if task == "delivery.deliver_batch":
                envelopes.extend(args[0])
            elif task == "delivery.deliver":
                envelopes.extend(args)
            message.ack()


@pytest.fixture
def engine(settings: Settings) -> Assembly:
    drain_envelopes()
    assembly = assemble(settings)
    assembly.channels.add("dev", "console", {})
    return assembly


@pytest.fixture
def notifier(engine: Assembly) -> Notifier:
    return Notifier(engine.log)
