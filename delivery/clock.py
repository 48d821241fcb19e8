"""The one clock: timezone-aware UTC, as the delivery log stores it."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
