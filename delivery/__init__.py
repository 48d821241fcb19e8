"""Distributed delivery workers: queued, retried and logged notifications.

The producer API lives here and stays light: ``import delivery`` loads neither SQLAlchemy
nor any provider SDK.
"""

import delivery._layout  # noqa: F401 - first: a clear error if `schemas` is not ours
from delivery.errors import DeliveryError, PermanentError, PublishError, RetryableError
from delivery.producer.events import notify
from delivery.producer.publisher import send, send_many
from schemas import Message, Payload, Receipt

__all__ = [
    "DeliveryError",
    "Message",
    "Payload",
    "PermanentError",
    "PublishError",
    "Receipt",
    "RetryableError",
    "notify",
    "send",
    "send_many",
]
