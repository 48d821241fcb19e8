"""The handler kit: what the router hands each inbound message to.

A handler subclasses ``Handler``, declares what it takes (backend names, backend kinds,
keywords: each empty set means "any"), implements ``handle`` and registers in the
entry-point group ``delivery.handlers``. ``handle`` returns a short summary of what came
of it (recorded, shown by ``delivery inbox``). Raising ``PermanentError`` records the
handler as failed for this message; any other exception is retried with the retry
policy. A handler may reply through any channel with ``delivery.send``: give the reply an
idempotency key derived from the message id (``message.key(self.slug)``), so a retried
message is never answered twice.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from delivery.engine.suppression import SuppressionList


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """An inbound message as handlers see it."""

    id: str
    backend: str
    kind: str
    identity: str
    text: str
    extra: dict[str, Any] = field(default_factory=dict)
    provider_id: str | None = None
    received_at: datetime | None = None
    #: The backend's reply channel (``--set channel=NAME``), if it has one.
    channel: str | None = None

    @property
    def keyword(self) -> str:
        """The first word, upper-cased (RapidSMS's keyword apps match on it)."""
        words = self.text.split(maxsplit=1)
        return words[0].upper() if words else ""

    def key(self, handler: str) -> str:
        """An idempotency key for what ``handler`` sends about this message."""
        return f"inbound:{self.id}:{handler}"


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What the router lends handlers besides ``delivery.send``."""

    suppressions: SuppressionList


class Handler(ABC):
    slug: ClassVar[str]
    #: Backend names this handler takes; empty: every backend.
    backends: ClassVar[frozenset[str]] = frozenset()
    #: Backend kinds this handler takes; empty: every kind.
    kinds: ClassVar[frozenset[str]] = frozenset()
    #: Keywords (upper case) this handler takes; empty: any text.
    keywords: ClassVar[frozenset[str]] = frozenset()

    def accepts(self, message: ReceivedMessage) -> bool:
        """Whether this handler takes ``message``; by default from the declarations."""
        return (
            (not self.backends or message.backend in self.backends)
            and (not self.kinds or message.kind in self.kinds)
            and (not self.keywords or message.keyword in self.keywords)
        )

    @abstractmethod
    def handle(self, message: ReceivedMessage, context: HandlerContext) -> str | None:
        """Act on the message; return what came of it.

        Raises:
            PermanentError: this handler cannot handle it, and never will.
            Exception: anything else is retried with the retry policy.
        """
