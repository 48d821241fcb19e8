"""Twilio's message statuses in the log's words, for its status callbacks and for the
message resource the SMS dispatcher looks up when no callback came."""

from collections.abc import Mapping

from delivery.dispatchers.receipts import BOUNCED, CONFIRMED, PENDING, ProviderReceipt

#: Twilio's final MessageStatus values and what they mean here; the rest are on the way.
TWILIO_STATUSES = {
    "delivered": CONFIRMED,
    "read": CONFIRMED,
    "undelivered": BOUNCED,
    "failed": BOUNCED,
}
#: Twilio error codes that say the number will never take messages from this sender:
#: 21610 the recipient replied STOP (unsubscribed), 21211 / 21614 not a valid (mobile)
#: number, 30005 unknown destination handset (the number does not exist or is no longer
#: in service), 30006 a landline or a carrier that cannot take SMS. 30003 (unreachable
#: handset: switched off, out of coverage) and 30008 (unknown error) are temporary and
#: do not suppress.
PERMANENT_BOUNCE_CODES = frozenset({"21211", "21610", "21614", "30005", "30006"})


def twilio_receipt_of(
    sid: str,
    provider_status: str,
    error_code: str | None,
    *,
    to: str | None,
    detail: Mapping[str, str],
) -> ProviderReceipt:
    """The receipt a Twilio message status amounts to (a callback's or the resource's)."""
    provider_status = provider_status.lower()
    status = TWILIO_STATUSES.get(provider_status, PENDING)
    return ProviderReceipt(
        provider_ref=sid[:255],
        provider_status=provider_status[:32],
        status=status,
        error_code=error_code[:32] if error_code else None,
        address=to,
        permanent=status == BOUNCED and error_code in PERMANENT_BOUNCE_CODES,
        detail=dict(detail),
    )
