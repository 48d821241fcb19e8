"""What the notifications tests share: an engine with a console channel, its notifier, and
the envelopes the in-memory broker holds."""

from typing import Any

import pytest

from delivery.engine.assembly import Assembly, assemble
from delivery.notifications import Notifier
from schemas import Settings
from tests.support.memory_broker import take_waiting


def drain_envelopes() -> list[dict[str, Any]]:
    """Every envelope waiting in the in-memory broker, single or batched."""
    return [
        envelope
        for message in take_waiting()
        if message.task in ("delivery.deliver", "delivery.deliver_batch")
        for envelope in message.envelopes
    ]


@pytest.fixture
def engine(settings: Settings) -> Assembly:
    drain_envelopes()
    assembly = assemble(settings)
    assembly.channels.add("dev", "console", {})
    return assembly


@pytest.fixture
def notifier(engine: Assembly) -> Notifier:
    return Notifier(engine.log)
