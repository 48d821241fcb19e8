"""Inbound: the seed's RapidSMS backends, the router and its handlers, provider receipts.

The kit third parties build on is exported here: ``InboundBackend`` (a kind of provider
request, registered in the entry-point group ``delivery.inbound``) and ``Handler`` (what
the router hands messages to, registered in ``delivery.handlers``). Inside: ``base`` and
``handler`` (the kit), ``registry``, one module per built-in kind (``http``, ``twilio``,
``standard_webhooks``), ``keywords`` (the built-in handlers), ``backends`` (configured
backends), ``inbox`` (messages and their handling), ``router``, ``receipts``, ``routes``
(the ``/inbound/NAME`` route) and ``wiring`` (all of it built on the engine's assembly).
"""

from delivery.inbound.base import (
    BackendConfig,
    InboundBackend,
    InboundMessage,
    InboundRequest,
    Reply,
)
from delivery.inbound.handler import Handler, HandlerContext, ReceivedMessage

__all__ = [
    "BackendConfig",
    "Handler",
    "HandlerContext",
    "InboundBackend",
    "InboundMessage",
    "InboundRequest",
    "ReceivedMessage",
    "Reply",
]
