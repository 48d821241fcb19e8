"""Broker transports hardened for at-least-once delivery (kombu subclasses)."""

# The transport is named by path in the Celery config (``delivery.transport.redis:Transport``)
# and loaded by kombu only on workers that use Redis; nothing is re-exported here.
__all__: list[str] = []
