"""The transactional outbox's relay, run by the workers themselves.

With ``DELIVERY_OUTBOX_URLS`` listing application databases, every worker starts one relay
thread per database when it is ready and stops them when it shuts down. Several workers
relaying one database is safe: each takes its rows with ``SKIP LOCKED`` (PostgreSQL), and
a row published twice is one delivery (``delivery.outbox.relay``).
"""

import logging
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

from celery.signals import worker_ready, worker_shutdown
from sqlalchemy import create_engine

from delivery.outbox import Relay
from delivery.producer.publisher import get_publisher
from delivery.redaction import redactor
from schemas import Settings, get_settings

logger = logging.getLogger(__name__)


class OutboxRelays:
    """One relay thread per application database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._relays: list[Relay] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        publisher = get_publisher(self.settings)
        for number, url in enumerate(self.settings.outbox_urls):
            # Out of every log line, whatever library writes it.
            redactor.register(_passwords(url))
            try:
                # pool_pre_ping: an application database restarted under a relay is found
                # again at the next batch, not after a failed one.
                engine = create_engine(url, pool_pre_ping=True)
            except Exception as exc:  # noqa: BLE001 - an unreadable URL or a missing driver
                # The URL is not repeated: it may hold a password.
                logger.error(
                    "DELIVERY_OUTBOX_URLS entry %d cannot be used (%s); not relayed",
                    number + 1,
                    type(exc).__name__,
                )
                continue
            relay = Relay(engine, publisher)
            thread = threading.Thread(
                target=relay.run,
                args=(self._stop,),
                name=f"delivery-outbox-{number + 1}",
                daemon=True,
            )
            self._relays.append(relay)
            self._threads.append(thread)
            thread.start()
            logger.info("relaying the outbox of %s", relay.where)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        for relay in self._relays:
            relay.engine.dispose()


def _passwords(url: str) -> list[str]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


_relays: OutboxRelays | None = None


@worker_ready.connect
def _start_relays(**_: Any) -> None:
    """Relay every listed application database's outbox, in the worker's main process."""
    global _relays
    settings = get_settings()
    if settings.outbox_urls:
        _relays = OutboxRelays(settings)
        _relays.start()


@worker_shutdown.connect
def _stop_relays(**_: Any) -> None:
    global _relays
    if _relays is not None:
        _relays.stop()
        _relays = None
