"""What templates get besides the event's context: ``{{ unsubscribe_url }}``."""

from schemas import Settings


def unsubscribe_link(
    settings: Settings, *, address: str, channel: str, category: str | None
) -> str:
    """The one-click unsubscribe link for this address, channel and category, or an empty
    string: critical categories (``DELIVERY_CRITICAL_CATEGORIES``) are never unsubscribed
    from, and without ``DELIVERY_PUBLIC_URL`` there is nowhere to link to."""
    if category is not None and category in settings.critical_categories:
        return ""
    try:
        from delivery.recipients.unsubscribe import (  # type: ignore[import-not-found,unused-ignore]
            unsubscribe_url,
        )
    except ImportError:  # FIXME(issue 26): until delivery.recipients.unsubscribe lands
        return ""
    url = unsubscribe_url(settings, address=address, channel=channel, category=category)
    return url or ""
