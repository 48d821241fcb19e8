"""Keeping secrets and message text out of logs, task events and Flower.

Two tools, light enough for the producer to import:

* ``mask_address``: an address as shown where anyone who can open Flower may look.
* ``Redactor``: replaces every secret value it has been told about (the dispatcher cache
  registers each channel's decrypted secrets when it builds the channel) in every log
  record, whichever logger wrote it: the provider SDKs and urllib3 log request URLs and
  bodies at DEBUG, and a Slack webhook URL or an Apprise URL *is* the secret. Every
  process that decrypts a channel (worker, CLI, API) builds it through the cache, which
  installs the redactor at the log record factory on first use.
"""

import logging
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

#: What a secret becomes in a log line.
REDACTED = "[redacted]"
#: Secrets shorter than this are not redacted: replacing "1" everywhere would garble logs,
#: and a value that short protects nothing.
MIN_SECRET_LENGTH = 6


#: What the log keeps in place of an erased address (``delivery erase``): shown as it is.
ERASED_ADDRESS = "[erased]"


def mask_address(address: str) -> str:
    """Enough of an address to tell deliveries apart, too little to reach anyone."""
    if address == ERASED_ADDRESS:
        return address
    if "://" in address:
        # Webhook paths often carry a token (Slack's do): show scheme and host only.
        parts = urlsplit(address)
        return f"{parts.scheme}://{parts.hostname or '?'}/***"
    name, at, domain = address.partition("@")
    if at:
        return f"{name[:1]}***@{domain}"
    if len(address) > 6:
        return f"{address[:3]}***{address[-2:]}"
    return "***"


class Redactor(logging.Filter):
    """Replaces known secret values in log records (message, arguments and traceback)."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def register(self, values: Iterable[str]) -> None:
        """Redact these values from now on (each secret of a channel, and its parts)."""
        fresh = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH}
        if fresh - self._secrets:
            with self._lock:
                self._secrets = self._secrets | fresh
            install()

    def redact(self, text: str) -> str:
        # Longest first, so a secret that contains another is replaced whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a record whose arguments do not fit its format
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


#: The one redactor of this process.
redactor = Redactor()


def secret_parts(value: Any) -> list[str]:
    """A secret and the pieces of it that libraries log on their own: a URL's path, query
    and password are logged apart from its host by urllib3 (``"POST /services/T/B/x"``)."""
    if not isinstance(value, str):
        return []
    parts = [value]
    if "://" in value:
        split = urlsplit(value)
        parts += [split.path, split.query, split.password or "", split.username or ""]
        if split.path and split.query:
            parts.append(f"{split.path}?{split.query}")
        parts += [p for p in split.path.split("/") if p]
        if split.scheme not in ("http", "https"):
            # Apprise URLs put tokens where a host would be (slack://TokenA/TokenB/TokenC).
            parts.append(split.netloc)
    return [p for p in parts if len(p) >= MIN_SECRET_LENGTH]


_factory_lock = threading.Lock()
_installed = False


def install() -> None:
    """Pass every log record this process makes through the redactor, as it is made.

    At the record factory rather than on handlers: Celery, uvicorn and the CLI each set
    up their own handlers, at their own time, and a filter on a logger does not see what
    its children propagate. Idempotent; ``Redactor.register`` calls it.
    """
    global _installed
    with _factory_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            redactor.filter(record)
            return record

        logging.setLogRecordFactory(make_record)
        _installed = True
