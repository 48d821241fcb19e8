"""Recipients: what each address agreed to receive, when, and how to stop it.

``preferences`` (rules by channel and category, a time zone, quiet hours; the batch
look-up the worker makes), ``quiet`` (the quiet-hours window and its time-zone arithmetic),
``unsubscribe`` (RFC 8058 one-click links, signed) and ``tables`` (the row they are kept in).
"""

from delivery.recipients.preferences import (
    MAX_KEY,
    MAX_RULES,
    Preferences,
    RecipientPreferences,
    Rule,
    preference_key,
)
from delivery.recipients.quiet import QuietHours
from delivery.recipients.unsubscribe import UnsubscribeTarget, read_token, unsubscribe_url

__all__ = [
    "MAX_KEY",
    "MAX_RULES",
    "Preferences",
    "QuietHours",
    "RecipientPreferences",
    "Rule",
    "UnsubscribeTarget",
    "preference_key",
    "read_token",
    "unsubscribe_url",
]
