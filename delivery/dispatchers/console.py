"""Print the message: for the demo and for development."""

import sys
import threading
from typing import ClassVar

from delivery.dispatchers.base import Dispatcher, SendContext, SendResult
from delivery.dispatchers.protocol import CONSOLE, AddressType
from schemas import Payload

_print_lock = threading.Lock()


class ConsoleDispatcher(Dispatcher):
    slug = "console"
    verbose_name = "Console (prints to the worker's standard output)"
    protocol = CONSOLE
    address_types: ClassVar[frozenset[AddressType]] = frozenset({AddressType.ANY})

    def _send(self, address: str, payload: Payload, *, context: SendContext) -> SendResult:
        subject = f"{payload.subject}: " if payload.subject else ""
        # One lock so lines from many worker threads do not interleave.
        with _print_lock:
            print(
                f"[{context.delivery_id}] to {address}: {subject}{payload.message}",
                file=sys.stdout,
                flush=True,
            )
        return SendResult()
