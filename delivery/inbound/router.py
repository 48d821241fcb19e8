"""The router: hands each inbound message to every handler that takes it.

What each handler made of the message is recorded as it ends, so when one raises and the
message is tried again, the handlers that succeeded are not run a second time. A handler
that raised is retried with the retry policy (exponential backoff with jitter, capped so
no retry waits in the broker longer than its visibility timeout allows); one that raised
``PermanentError``, or ran out of attempts, is recorded as failed.
"""

import logging
from dataclasses import dataclass
from typing import Literal

from delivery.engine.retry import RetryPolicy
from delivery.engine.service import describe_error
from delivery.errors import ConfigurationError, PermanentError, RegistryError, UnknownBackend
from delivery.inbound.backends import BackendStore
from delivery.inbound.handler import Handler, HandlerContext, ReceivedMessage
from delivery.inbound.inbox import HandlingOutcome, Inbox, InboxEntry, MessageStatus
from delivery.inbound.registry import HandlerRegistry

logger = logging.getLogger(__name__)

#: Longest summary of a handler's result or error kept.
MAX_RESULT = 1000


@dataclass(frozen=True, slots=True)
class Routed:
    """What the task should do with the message now."""

    action: Literal["done", "retry"]
    countdown: float = 0.0
    status: str = ""


class Router:
    def __init__(
        self,
        inbox: Inbox,
        backends: BackendStore,
        handlers: HandlerRegistry,
        context: HandlerContext,
        policy: RetryPolicy,
    ) -> None:
        self.inbox = inbox
        self.backends = backends
        self.handlers = handlers
        self.context = context
        self.policy = policy
        self._instances: dict[str, Handler] = {}

    def route(self, message_id: str) -> Routed:
        """Run every handler that takes the message and has not finished with it."""
        entry = self.inbox.get(message_id)
        if entry is None:
            # The row is written before the task is published; a missing one was removed.
            logger.warning("inbound message %s is not in the log; nothing to route", message_id)
            return Routed("done", status="missing")
        message = entry.received(self._reply_channel(entry))
        # What each handler made of it on earlier runs: those that finished are not rerun.
        before = {h.handler: h.outcome for h in entry.handling}
        took, failed, waits = 0, 0, []
        for name in self.handlers.names():
            handler = self._handler(name)
            if handler is None or not _accepts(handler, message):
                continue
            took += 1
            outcome = before.get(name, HandlingOutcome.RETRY.value)
            if outcome != HandlingOutcome.RETRY.value:
                failed += outcome == HandlingOutcome.FAILED.value
                continue
            wait = self._run(name, handler, message)
            if wait is not None and wait < 0:
                failed += 1
            elif wait is not None:
                waits.append(wait)
        if waits:
            self.inbox.set_status(message_id, MessageStatus.RETRYING)
            return Routed("retry", countdown=min(waits), status=MessageStatus.RETRYING.value)
        status = (
            MessageStatus.UNHANDLED
            if took == 0
            else MessageStatus.FAILED
            if failed
            else MessageStatus.HANDLED
        )
        self.inbox.set_status(message_id, status)
        return Routed("done", status=status.value)

    def _run(self, name: str, handler: Handler, message: ReceivedMessage) -> float | None:
        """Run one handler and record it: None when it succeeded, the seconds to wait
        before it is tried again, or -1 when it failed for good."""
        try:
            result = handler.handle(message, self.context)
        except PermanentError as exc:
            self.inbox.record_handling(
                message.id, name, HandlingOutcome.FAILED, _short(describe_error(exc))
            )
            logger.warning("handler %s failed on %s: %s", name, message.id, exc)
            return -1
        except Exception as exc:  # noqa: BLE001 - a plugin's failure is retried, not fatal
            logger.warning(
                "handler %s raised on %s: %s", name, message.id, describe_error(exc)[:200]
            )
            return self._retry(name, message, exc)
        self.inbox.record_handling(message.id, name, HandlingOutcome.HANDLED, _short(result))
        return None

    def _retry(self, name: str, message: ReceivedMessage, exc: Exception) -> float:
        error = _short(describe_error(exc))
        attempts = self.inbox.record_handling(message.id, name, HandlingOutcome.RETRY, error)
        delay = self.policy.delay_after(attempts, retry_after=getattr(exc, "retry_after", None))
        if delay is None:
            self.inbox.record_handling(
                message.id,
                name,
                HandlingOutcome.FAILED,
                _short(f"gave up: {error}"),
                attempt=False,
            )
            return -1
        return delay

    def _handler(self, name: str) -> Handler | None:
        if name not in self._instances:
            try:
                self._instances[name] = self.handlers.get(name)()
            except RegistryError as exc:
                # One broken plugin must not keep the others from their messages.
                logger.error("handler %s cannot be used: %s", name, exc)
                return None
        return self._instances[name]

    def _reply_channel(self, entry: InboxEntry) -> str | None:
        try:
            return self.backends.get(entry.backend).config.channel
        except (UnknownBackend, ConfigurationError, RegistryError) as exc:
            # The backend was removed or broken since: handlers run, without a channel.
            logger.warning("backend %s of message %s: %s", entry.backend, entry.id, exc)
            return None


def _accepts(handler: Handler, message: ReceivedMessage) -> bool:
    try:
        return handler.accepts(message)
    except Exception:  # a plugin's bug must not stop the other handlers
        logger.exception("handler %s.accepts raised", handler.slug)
        return False


def _short(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_RESULT else text[: MAX_RESULT - 1] + "…"
