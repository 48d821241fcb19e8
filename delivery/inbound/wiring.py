"""The inbound side built on the engine's ``Assembly`` (never wired by hand): the backend
store, the inbox, receipts, suppression lists and the router."""

import threading
from dataclasses import dataclass

from delivery.engine.assembly import Assembly, assemble
from delivery.engine.crypto import SecretBox
from delivery.engine.retry import RetryPolicy
from delivery.engine.suppression import SuppressionList
from delivery.inbound.backends import BackendStore
from delivery.inbound.handler import HandlerContext
from delivery.inbound.inbox import Inbox
from delivery.inbound.receipt_log import ReceiptBook
from delivery.inbound.registry import BackendRegistry, HandlerRegistry
from delivery.inbound.router import Router
from schemas import Settings, get_settings


@dataclass
class Inbound:
    assembly: Assembly
    backends: BackendStore
    inbox: Inbox
    receipts: ReceiptBook
    suppressions: SuppressionList

    @classmethod
    def from_assembly(
        cls, assembly: Assembly, *, kinds: BackendRegistry | None = None
    ) -> "Inbound":
        settings = assembly.settings
        engine = assembly.log.engine
        # The engine's: it finds erased addresses too (by keyed hash), to take them off.
        suppressions = assembly.service.suppressions
        return cls(
            assembly=assembly,
            backends=BackendStore(
                engine,
                kinds or BackendRegistry.from_installed(),
                lambda: SecretBox.from_settings(settings),
            ),
            inbox=Inbox(engine),
            receipts=ReceiptBook(engine, suppressions),
            suppressions=suppressions,
        )

    def router(self, handlers: HandlerRegistry | None = None) -> Router:
        settings = self.assembly.settings
        return Router(
            self.inbox,
            self.backends,
            handlers or HandlerRegistry.from_installed(),
            HandlerContext(suppressions=self.suppressions),
            handler_policy(settings),
        )


def handler_policy(settings: Settings) -> RetryPolicy:
    """Exponential backoff, capped so a handler's retry never waits in the broker longer
    than its visibility timeout allows (inbound messages have no sweep to fall back on)."""
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        base=settings.backoff_base,
        cap=min(settings.backoff_cap, settings.delay_limit),
    )


_current: tuple[Settings, Inbound] | None = None
_lock = threading.Lock()


def current_inbound() -> Inbound:
    """The process's inbound side for the current settings (made on first use)."""
    global _current
    settings = get_settings()
    with _lock:
        if _current is None or _current[0] is not settings:
            if _current is not None:
                _current[1].assembly.close()
            _current = (settings, Inbound.from_assembly(assemble(settings)))
        return _current[1]
