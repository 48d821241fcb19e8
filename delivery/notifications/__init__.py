"""Notifications: events fanned out to subscriptions, rendered from sandboxed templates.

``sandbox`` (Jinja2 on a budget), ``templates``, ``subscriptions``, ``events`` (what the
workers received and made) and ``fanout`` (the worker's side of ``delivery.notify()``).
The producer's side is ``delivery.producer.events``; it needs none of this.

Not named ``delivery.notify``: importing a subpackage of that name would replace the
public function ``delivery.notify`` with the module.
"""

from delivery.errors import RenderError, TemplateRefused
from delivery.notifications.events import EventDelivery, EventRecord, EventStore
from delivery.notifications.fanout import FanOut, Notifier, fanout_delivery_id
from delivery.notifications.subscriptions import Subscription, SubscriptionStore
from delivery.notifications.templates import Template, TemplateStore

__all__ = [
    "EventDelivery",
    "EventRecord",
    "EventStore",
    "FanOut",
    "Notifier",
    "RenderError",
    "Subscription",
    "SubscriptionStore",
    "Template",
    "TemplateRefused",
    "TemplateStore",
    "fanout_delivery_id",
]
