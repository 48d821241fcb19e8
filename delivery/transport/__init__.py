"""Broker transports hardened for at-least-once delivery (kombu subclasses)."""
