"""The dispatcher kit and the built-in dispatchers.

A dispatcher delivers payloads over one kind of transport (the seeds' Bitcaster shape):
subclass ``Dispatcher``, give it a ``DispatcherConfig``, implement ``_send`` and register it
in the entry-point group ``delivery.dispatchers``. Here: the base class (``base``), what a
payload may carry (``protocol``), the entry-point ``registry``, the HTTP seam that turns
responses and transport failures into delivery errors (``http``), the SSRF guard
(``netguard``), then one module per built-in dispatcher.
"""

from delivery.dispatchers.base import (
    MASK,
    Dispatcher,
    DispatcherConfig,
    DispatcherEnvironment,
    EmptyConfig,
    SendContext,
    SendResult,
)
from delivery.dispatchers.protocol import AddressType, Protocol
from delivery.dispatchers.receipts import ProviderReceipt
from delivery.dispatchers.registry import GROUP, DispatcherRegistry

__all__ = [
    "GROUP",
    "MASK",
    "AddressType",
    "Dispatcher",
    "DispatcherConfig",
    "DispatcherEnvironment",
    "DispatcherRegistry",
    "EmptyConfig",
    "Protocol",
    "ProviderReceipt",
    "SendContext",
    "SendResult",
]
