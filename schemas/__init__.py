"""Pydantic models that cross a boundary: producer payloads, task messages and settings.

Shared by the producer (any Python service) and the workers, and exported as JSON Schema
for producers written in other languages (`delivery schemas`).
"""

from schemas.messages import (
    CATEGORY_PATTERN,
    CHANNEL_NAME_PATTERN,
    MAX_PAYLOAD_BYTES,
    Category,
    Envelope,
    Message,
    Model,
    Payload,
    Receipt,
)
from schemas.settings import Settings, get_settings

#: This is delivery's own package, not another of the same name (delivery/_layout.py).
__delivery_layout__ = True

__all__ = [
    "CATEGORY_PATTERN",
    "CHANNEL_NAME_PATTERN",
    "MAX_PAYLOAD_BYTES",
    "Category",
    "Envelope",
    "Message",
    "Model",
    "Payload",
    "Receipt",
    "Settings",
    "get_settings",
]
