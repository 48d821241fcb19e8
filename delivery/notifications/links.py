"""What templates get besides the event's context: ``{{ unsubscribe_url }}``."""

from delivery.recipients.unsubscribe import unsubscribe_url
from schemas import Settings


def unsubscribe_link(
    settings: Settings, *, address: str, channel: str, category: str | None
) -> str:
    """The one-click unsubscribe link for this address, channel and category, or an empty
    string where there is none: critical categories (``DELIVERY_CRITICAL_CATEGORIES``)
    cannot be turned off, and without ``DELIVERY_PUBLIC_URL`` or a secret key there is
    nothing to link to or sign with. A template shows an empty string, not ``None``."""
    if category is not None and category in settings.critical_categories:
        return ""
    url = unsubscribe_url(settings, address=address, channel=channel, category=category)
    return url or ""
