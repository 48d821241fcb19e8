"""Distributed delivery workers: queued, retried and logged notifications.

The producer API lives here and stays light: ``import delivery`` loads neither SQLAlchemy
nor any provider SDK.
"""

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
