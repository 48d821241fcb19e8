"""Handlers the router tests register through the registry's constructor."""

from typing import ClassVar

from delivery.errors import PermanentError
from delivery.inbound import Handler, HandlerContext, ReceivedMessage


class FlakyHandler(Handler):
    """Raises the first time it sees a message, then handles it."""

    slug = "flaky"
    keywords: ClassVar[frozenset[str]] = frozenset({"FLAKY", "PING"})
    seen: ClassVar[dict[str, int]] = {}

    def handle(self, message: ReceivedMessage, context: HandlerContext) -> str | None:
        self.seen[message.id] = self.seen.get(message.id, 0) + 1
        if self.seen[message.id] == 1:
            raise ConnectionError("the CRM is down")
        return f"stored {message.text!r}"


class RefusingHandler(Handler):
    slug = "refusing"
    backends: ClassVar[frozenset[str]] = frozenset({"gw"})
    keywords: ClassVar[frozenset[str]] = frozenset({"REFUSE"})

    def handle(self, message: ReceivedMessage, context: HandlerContext) -> str | None:
        raise PermanentError("refused, and always will be")


class AlwaysBroken(Handler):
    slug = "always-broken"
    keywords: ClassVar[frozenset[str]] = frozenset({"BROKEN"})

    def handle(self, message: ReceivedMessage, context: HandlerContext) -> str | None:
        raise RuntimeError("bug")
