"""The thin producer: validate, derive the delivery id, publish a Celery task by name.

Imports neither SQLAlchemy nor any provider SDK; Celery itself is imported on first use.
``celery_config`` holds the Celery settings producer and workers share, ``publisher`` the
publishing itself.
"""

from delivery.producer.events import event_id, notify
from delivery.producer.publisher import (
    Publisher,
    batches,
    delivery_id,
    get_publisher,
    reset_publisher,
    send,
    send_many,
)

__all__ = [
    "Publisher",
    "batches",
    "delivery_id",
    "event_id",
    "get_publisher",
    "notify",
    "reset_publisher",
    "send",
    "send_many",
]
